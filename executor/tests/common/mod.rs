//! Shared by the executor's integration tests.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use mirador_cluster_tests::services;

use std::path::PathBuf;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn demo_model() -> PathBuf {
    repo().join("models/propensity-v1.pt")
}

pub fn demo_features() -> PathBuf {
    repo().join("examples/features.csv")
}

pub const DEMO_FEATURES: [&str; 7] = [
    "recency_days",
    "frequency_30d",
    "monetary_90d",
    "engagement_score",
    "email_opt_in",
    "loyalty_tier",
    "churn_risk",
];

pub fn feature_names() -> Vec<String> {
    DEMO_FEATURES.iter().map(|s| s.to_string()).collect()
}

/// A spec over the demo model and features; `source`, `sink` and `dead_letter` are YAML
/// blocks indented by two spaces.
pub fn spec_yaml(
    name: &str,
    source: &str,
    sink: &str,
    dead_letter: &str,
    checkpoints: &std::path::Path,
) -> String {
    format!(
        r#"
name: {name}
source:
{source}
enrichment:
  table:
    path: {features}
  features: [{features_list}]
model:
  name: propensity
  version: "1"
  path: {model}
  max_wait_ms: 2
sink:
{sink}
dead_letter:
{dead_letter}
batching:
  max_records: 64
checkpoint:
  dir: {checkpoints}
  interval_ms: 20
"#,
        features = demo_features().display(),
        features_list = DEMO_FEATURES.join(", "),
        model = demo_model().display(),
        checkpoints = checkpoints.display(),
    )
}

/// A supervisor for a stage tested alone: it reports what happened to its children.
pub struct Parent;

#[derive(Debug)]
pub enum ChildEvent {
    Terminated,
    Failed(String),
}

impl Actor for Parent {
    type Msg = ();
    type State = mpsc::UnboundedSender<ChildEvent>;
    type Arguments = mpsc::UnboundedSender<ChildEvent>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        events: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(events)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        events: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = match event {
            SupervisionEvent::ActorTerminated(..) => events.send(ChildEvent::Terminated),
            SupervisionEvent::ActorFailed(_, error) => {
                events.send(ChildEvent::Failed(error.to_string()))
            }
            _ => Ok(()),
        };
        Ok(())
    }
}

pub async fn parent() -> (ActorRef<()>, mpsc::UnboundedReceiver<ChildEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (actor, _) = Actor::spawn(None, Parent, tx).await.expect("parent starts");
    (actor, rx)
}
