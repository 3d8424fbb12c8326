//! Google Cloud Pub/Sub: a source of N lanes (streaming pulls) per subscription, and a
//! publisher for scored records and dead letters.

mod admin;
mod sink;
mod source;

use google_cloud_auth::credentials::{anonymous, Credentials};

pub use admin::{create_subscription, create_topic, move_subscription, publish, SEEK_REWIND};
// The spec types live in `mirador-spec`, so that specs are checked without any client.
pub use mirador_spec::pubsub::{PubsubSinkSpec, PubsubSourceSpec};
pub use sink::PubsubSink;
pub use source::PubsubSource;

/// Where to connect and with what credentials.
struct Connection {
    endpoint: Option<String>,
    /// `None`: application default credentials.
    credentials: Option<Credentials>,
}

/// The endpoint a spec names, else the emulator of `PUBSUB_EMULATOR_HOST`; `None`: Google
/// Cloud.
fn endpoint(named: Option<&String>) -> Option<String> {
    named.cloned().or_else(emulator_from_env)
}

/// `http://` + `PUBSUB_EMULATOR_HOST` when it is set and not empty: the one place that
/// reads it.
pub fn emulator_from_env() -> Option<String> {
    std::env::var("PUBSUB_EMULATOR_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .map(|host| format!("http://{host}"))
}

/// How to reach the endpoint a spec names (see [`endpoint`]).
fn connection(named: Option<&String>) -> Connection {
    match endpoint(named) {
        // An emulator takes no credentials.
        Some(endpoint) if endpoint.starts_with("http://") => Connection {
            endpoint: Some(endpoint),
            credentials: Some(anonymous::Builder::new().build()),
        },
        endpoint => Connection {
            endpoint,
            credentials: None,
        },
    }
}
