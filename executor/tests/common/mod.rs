//! Shared by the executor's integration tests.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use mirador_cluster_tests::services;
use mirador_cluster_tests::spec::SpecYaml;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc;

#[allow(unused_imports)]
pub use mirador_cluster_tests::spec::{demo_features, demo_model, repo, DEMO_FEATURES};

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
    let rest = format!(
        "batching:\n  max_records: 64\ncheckpoint:\n  dir: {}\n  interval_ms: 20\n",
        checkpoints.display()
    );
    SpecYaml {
        name,
        source,
        model: "  max_wait_ms: 2",
        sink,
        dead_letter,
        rest: &rest,
        ..SpecYaml::default()
    }
    .yaml()
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
