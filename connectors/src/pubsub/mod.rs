//! Google Cloud Pub/Sub: a source of N lanes (streaming pulls) per subscription, and a
//! publisher for scored records and dead letters.

mod admin;
mod sink;
mod source;

use google_cloud_auth::credentials::{anonymous, Credentials};

pub use admin::{create_subscription, create_topic, publish};
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

/// `endpoint` as a spec resolves it ([`PubsubSourceSpec::resolved_endpoint`]).
fn connection(endpoint: Option<String>) -> Connection {
    match endpoint {
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
