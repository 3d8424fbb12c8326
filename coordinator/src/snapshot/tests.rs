//! Snapshots in a local directory: commit, listing, damage of every kind, retention, and
//! two writers racing for one sequence number.

use std::collections::BTreeMap;

use super::format::{self, Invalid};
use super::store::{SnapshotStore, StoreConfig};
use crate::state::ClusterState;

fn open(dir: &std::path::Path, region: &str) -> SnapshotStore {
    SnapshotStore::open(
        &StoreConfig::Url(dir.display().to_string()),
        region,
        "snapshot.store",
    )
    .unwrap()
}

fn state(n: usize) -> ClusterState {
    super::testing::state(n, 1)
}

async fn write(store: &SnapshotStore, sequence: u64, writer: u64, state: &ClusterState) -> bool {
    super::testing::write(store, sequence, writer, state).await
}

fn problems(listed: &[super::Listed]) -> BTreeMap<u64, Option<Invalid>> {
    listed
        .iter()
        .map(|l| (l.sequence, l.problem.clone()))
        .collect()
}

#[tokio::test]
async fn committed_snapshots_list_newest_first_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "a");
    assert_eq!(store.next_sequence().await.unwrap(), 1);
    for sequence in 1..=3 {
        assert!(write(&store, sequence, 1, &state(sequence as usize)).await);
    }
    assert_eq!(store.next_sequence().await.unwrap(), 4);
    let listed = store.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|l| l.sequence).collect::<Vec<_>>(),
        [3, 2, 1]
    );
    assert!(listed.iter().all(|l| l.is_valid()), "{listed:?}");
    let (newest, skipped) = store.newest_valid().await.unwrap();
    let (manifest, restored) = newest.unwrap();
    assert_eq!(manifest.sequence, 3);
    assert_eq!(restored, state(3));
    assert!(skipped.is_empty());

    // Another region's snapshots in the same directory are its own.
    let other = open(dir.path(), "b");
    assert!(other.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_damaged_newest_snapshot_is_reported_and_the_one_before_it_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "a");
    for sequence in 1..=4 {
        assert!(write(&store, sequence, 1, &state(sequence as usize)).await);
    }
    let body = |sequence: u64| format!("{sequence:020}.1.body");
    // 4: a flipped bit. 3: cut short. 2: its manifest lost.
    let mut flipped = store.get_raw(&body(4)).await.unwrap().unwrap().to_vec();
    flipped[3] ^= 0x01;
    store.put_raw(&body(4), flipped).await.unwrap();
    let whole = store.get_raw(&body(3)).await.unwrap().unwrap();
    store
        .put_raw(&body(3), whole[..whole.len() - 2].to_vec())
        .await
        .unwrap();
    store
        .delete_raw(&format!("{:020}.manifest", 2))
        .await
        .unwrap();

    let listed = problems(&store.list().await.unwrap());
    assert!(
        matches!(listed[&4], Some(Invalid::Checksum { .. })),
        "{listed:?}"
    );
    assert!(
        matches!(listed[&3], Some(Invalid::Length { .. })),
        "{listed:?}"
    );
    assert_eq!(listed[&2], Some(Invalid::Uncommitted));
    assert_eq!(listed[&1], None);

    let (newest, skipped) = store.newest_valid().await.unwrap();
    let (manifest, restored) = newest.unwrap();
    assert_eq!(manifest.sequence, 1, "never a silent bad restore");
    assert_eq!(restored, state(1));
    assert_eq!(
        skipped.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [4, 3, 2]
    );

    // A manifest of garbage, and a body missing under a whole manifest.
    store
        .put_raw(&format!("{:020}.manifest", 1), vec![0xff; 9])
        .await
        .unwrap();
    assert!(matches!(
        store.read(1).await.unwrap(),
        Err(Invalid::Manifest(_))
    ));
    assert!(write(&store, 5, 1, &state(5)).await);
    store.delete_raw(&body(5)).await.unwrap();
    assert!(matches!(
        store.read(5).await.unwrap(),
        Err(Invalid::MissingBody(_))
    ));
    let (newest, _) = store.newest_valid().await.unwrap();
    assert!(newest.is_none(), "nothing whole is left");
}

#[tokio::test]
async fn a_crash_between_body_and_manifest_leaves_no_snapshot_and_no_reused_number() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "a");
    assert!(write(&store, 1, 1, &state(1)).await);
    // The writer died after its body: no manifest.
    store
        .put_raw(&format!("{:020}.1.body", 2), format::encode_body(&state(2)))
        .await
        .unwrap();
    let listed = problems(&store.list().await.unwrap());
    assert_eq!(listed[&2], Some(Invalid::Uncommitted));
    assert_eq!(store.newest_valid().await.unwrap().0.unwrap().0.sequence, 1);
    assert_eq!(
        store.next_sequence().await.unwrap(),
        3,
        "the next writer does not reuse the torn number"
    );
}

#[tokio::test]
async fn two_writers_of_one_number_commit_exactly_one_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "a");
    assert!(write(&store, 7, 1, &state(1)).await);
    assert!(
        !write(&store, 7, 2, &state(2)).await,
        "the manifest exists: the second writer loses"
    );
    let (newest, _) = store.newest_valid().await.unwrap();
    let (manifest, restored) = newest.unwrap();
    assert_eq!((manifest.written_by, restored), (1, state(1)));
    assert!(
        store
            .get_raw(&format!("{:020}.2.body", 7))
            .await
            .unwrap()
            .is_none(),
        "the loser's body is removed"
    );
}

#[tokio::test]
async fn retention_keeps_the_newest_and_a_write_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "a");
    for sequence in 1..=5 {
        assert!(write(&store, sequence, 1, &state(1)).await);
    }
    // An old torn body, and one newer than every commit (a write under way).
    store
        .put_raw(&format!("{:020}.9.body", 2), vec![1])
        .await
        .unwrap();
    store
        .put_raw(&format!("{:020}.9.body", 6), vec![1])
        .await
        .unwrap();
    let removed = store.prune(2).await.unwrap();
    assert_eq!(removed, 7, "3 manifests, their 3 bodies and the torn one");
    let listed: Vec<u64> = store
        .list()
        .await
        .unwrap()
        .iter()
        .map(|l| l.sequence)
        .collect();
    assert_eq!(listed, [6, 5, 4]);
}

#[tokio::test]
async fn ownership_records_are_taken_once_per_epoch_and_the_newest_one_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (east, west) = (open(dir.path(), "east"), open(dir.path(), "west"));
    assert!(east.owners().await.unwrap().is_empty());
    assert!(east.claim("p", 1, "east").await.unwrap());
    assert!(
        east.claim("p", 1, "east").await.unwrap(),
        "the same claim again"
    );
    // The regions share the store's records: west loses epoch 1 and takes epoch 2.
    assert!(!west.claim("p", 1, "west").await.unwrap());
    assert!(west.claim("p", 2, "west").await.unwrap());
    assert!(east.claim("q", 7, "east").await.unwrap());
    let owners = east.owners().await.unwrap();
    let owner = |name: &str| {
        let o = &owners[name];
        (o.epoch, o.region.as_str())
    };
    assert_eq!(owner("p"), (2, "west"));
    assert_eq!(owner("q"), (7, "east"));
    // Snapshots and records live side by side: neither lists the other.
    assert!(write(&east, 1, 1, &state(1)).await);
    assert_eq!(east.list().await.unwrap().len(), 1);
    assert_eq!(west.owners().await.unwrap(), owners);
}
