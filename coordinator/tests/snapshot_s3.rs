//! The snapshot store on a real S3-protocol server (moto, started here on loopback, with
//! static credentials): commit by conditional create, damage detected, retention.

use mirador_cluster_tests::services::S3Server;
use mirador_coordinator::snapshot::format::Invalid;
use mirador_coordinator::snapshot::store::StoreWithOptions;
use mirador_coordinator::snapshot::testing::{state, write};
use mirador_coordinator::snapshot::{SnapshotStore, StoreConfig};

#[tokio::test]
async fn snapshots_on_s3_commit_once_report_damage_and_keep_the_newest() {
    let server = S3Server::start();
    server.create_bucket("snapshots");
    let config = StoreConfig::WithOptions(StoreWithOptions {
        url: "s3://snapshots/mirador".into(),
        options: server.options().into_iter().collect(),
    });
    let store = SnapshotStore::open(&config, "a", "snapshot.store").unwrap();
    assert_eq!(store.next_sequence().await.unwrap(), 1);
    for sequence in 1..=4 {
        assert!(write(&store, sequence, 1, &state(sequence as usize, 4)).await);
    }
    // The manifest is created only if absent (If-None-Match on S3): a second writer of
    // number 4 loses, and the committed one is the first's.
    assert!(!write(&store, 4, 2, &state(9, 4)).await);
    let (newest, skipped) = store.newest_valid().await.unwrap();
    let (manifest, restored) = newest.unwrap();
    assert_eq!((manifest.sequence, manifest.written_by), (4, 1));
    assert_eq!(restored, state(4, 4));
    assert!(skipped.is_empty());

    // A flipped bit in the newest body: reported, and the one before it is used.
    let body = format!("{:020}.1.body", 4);
    let mut damaged = store.get_raw(&body).await.unwrap().unwrap().to_vec();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    store.put_raw(&body, damaged).await.unwrap();
    let listed = store.list().await.unwrap();
    assert_eq!(listed[0].sequence, 4);
    assert!(
        matches!(listed[0].problem, Some(Invalid::Checksum { .. })),
        "{listed:?}"
    );
    let (newest, skipped) = store.newest_valid().await.unwrap();
    assert_eq!(newest.unwrap().0.sequence, 3);
    assert_eq!(skipped.len(), 1);

    // Retention keeps the two newest committed.
    store.prune(2).await.unwrap();
    let left: Vec<u64> = store
        .list()
        .await
        .unwrap()
        .iter()
        .map(|l| l.sequence)
        .collect();
    assert_eq!(left, [4, 3]);
}

#[tokio::test]
async fn a_store_whose_server_is_down_is_an_error_naming_it() {
    let server = S3Server::start();
    let config = StoreConfig::WithOptions(StoreWithOptions {
        url: "s3://absent-bucket".into(),
        options: server.options().into_iter().collect(),
    });
    let store = SnapshotStore::open(&config, "a", "snapshot.store").unwrap();
    let error = store.next_sequence().await.unwrap_err().to_string();
    assert!(error.contains("s3://absent-bucket"), "{error}");
}
