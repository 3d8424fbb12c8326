//! openraft's storage conformance suite against our redb store, and the state surviving a
//! restart from disk.

mod common;

use common::register;

use std::collections::BTreeMap;
use std::time::Duration;

use mirador_coordinator::raft::testing::Router;
use mirador_coordinator::raft::{
    open_store, LogStore, RaftConfig, RaftNode, StateMachineStore, TypeConfig,
};
use mirador_coordinator::state::Outcome;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{ServerState, StorageError};
use tempfile::TempDir;

/// Each case of the suite gets a store in a fresh directory, removed when the case ends.
struct TempDirStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempDirStore {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = TempDir::new().expect("temp dir");
        let store = open_store(dir.path()).expect("open store");
        Ok((dir, store.log, store.state_machine))
    }
}

#[test]
fn store_passes_the_openraft_conformance_suite() {
    // The suite runs each case on a runtime of its own: not inside #[tokio::test].
    Suite::test_all(TempDirStore).unwrap();
}

async fn wait_for_leader(node: &RaftNode) {
    node.raft()
        .wait(Some(Duration::from_secs(5)))
        .state(ServerState::Leader, "leader")
        .await
        .expect("a single node elects itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_from_disk() {
    let dir = TempDir::new().unwrap();
    let config = RaftConfig::default();
    let router = Router::new();

    let node = RaftNode::start(1, "n1", dir.path(), &config, router.network(1))
        .await
        .unwrap();
    router.add(1, node.raft().clone());
    node.initialize(BTreeMap::from([(1, "n1".to_string())]))
        .await
        .unwrap();
    wait_for_leader(&node).await;
    assert_eq!(
        node.write(register("e1")).await.unwrap(),
        Outcome::Registered { incarnation: 1 }
    );
    node.write(register("e1")).await.unwrap();
    let before = node.state();
    router.remove(1);
    node.shutdown().await.unwrap();
    drop(node);

    let node = RaftNode::start(1, "n1", dir.path(), &config, router.network(1))
        .await
        .unwrap();
    router.add(1, node.raft().clone());
    // Loaded from disk before any election or replay.
    assert_eq!(node.state(), before);
    assert_eq!(node.state().executors["e1"].incarnation, 2);

    wait_for_leader(&node).await;
    assert_eq!(
        node.write(register("e1")).await.unwrap(),
        Outcome::Registered { incarnation: 3 },
        "the restarted node goes on from its state"
    );
    node.shutdown().await.unwrap();
}

#[test]
fn a_torn_store_is_an_error_naming_the_file_and_a_held_one_names_its_holder() {
    let dir = TempDir::new().unwrap();
    let store = open_store(dir.path()).expect("a new store");
    let error = open_store(dir.path())
        .err()
        .expect("held by the first")
        .to_string();
    assert!(
        error.contains("LOCK is held by process")
            && error.contains(&std::process::id().to_string()),
        "{error}"
    );
    drop(store);

    let file = dir.path().join("raft.redb");
    let length = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(length / 2)
        .unwrap();
    let error = open_store(dir.path())
        .err()
        .expect("a torn file is refused")
        .to_string();
    assert!(error.contains("raft.redb is damaged"), "{error}");
    assert!(error.contains("restore it from a backup"), "{error}");
    assert!(!error.contains('\n'), "one line: {error}");
}
