//! Google Cloud Pub/Sub: a source of N lanes (streaming pulls) per subscription, and a
//! publisher for scored records and dead letters.

mod admin;
mod config;
mod sink;
mod source;

pub use admin::{create_subscription, create_topic, publish};
pub use config::{PubsubSinkSpec, PubsubSourceSpec};
pub use sink::PubsubSink;
pub use source::PubsubSource;
