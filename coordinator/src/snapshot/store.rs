//! Where snapshots are kept: a local directory, S3 or GCS, through `object_store`.
//!
//! A region's snapshots lie in a folder named after it, so that two regions may share a
//! bucket and a region's store may hold the other's copies:
//!
//! ```text
//! <prefix>/<region>/00000000000000000042.3.body      the state, written first
//! <prefix>/<region>/00000000000000000042.manifest    created last, only if absent
//! ```
//!
//! The body's name carries the writer's node id, so that two coordinators that both
//! believe they lead never write one body; only one of them creates the manifest.
//!
//! Beside the regions' folders lie the ownership records of pipelines, one object per
//! change of owning region, created only if absent and never rewritten:
//!
//! ```text
//! <prefix>/_ownership/<pipeline>/00000000000000000003    "west": west owns it from epoch 3
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use mirador_proto::snapshot as pb;
use mirador_spec::FieldError;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutPayload, RetryConfig,
};
use prost::Message;
use serde::Deserialize;

use super::format::{self, Invalid};
use crate::state::ClusterState;

/// A store, as a coordinator's config file names it.
///
/// ```yaml
/// store: /var/lib/mirador/snapshots            # a local directory (or file:///...)
/// store:
///   url: s3://bucket/prefix
///   options: { aws_endpoint: "http://127.0.0.1:9000", aws_access_key_id: ..., aws_secret_access_key: ..., aws_allow_http: "true" }
/// ```
///
/// `options` are `object_store`'s own keys for S3 or GCS; an unknown key is refused.
/// Credentials must be given (static keys or `aws_skip_signature`; a GCS service account
/// key or its path): a store is never left to look for credentials by itself, which would
/// ask a cloud metadata address.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum StoreConfig {
    Url(String),
    WithOptions(StoreWithOptions),
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreWithOptions {
    pub url: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl StoreConfig {
    pub fn url(&self) -> &str {
        match self {
            StoreConfig::Url(url) => url,
            StoreConfig::WithOptions(s) => &s.url,
        }
    }

    fn options(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            StoreConfig::Url(_) => None,
            StoreConfig::WithOptions(s) => Some(&s.options),
        }
    }
}

/// One region's snapshots in one store.
#[derive(Clone)]
pub struct SnapshotStore {
    store: Arc<dyn ObjectStore>,
    folder: Path,
    /// The pipelines' ownership records.
    ownership: Path,
    region: String,
    url: String,
}

/// What a listing found under one sequence number.
#[derive(Clone, Debug)]
pub struct Listed {
    pub sequence: u64,
    /// Absent when it could not be read or decoded (`problem` says why), or was never
    /// created.
    pub manifest: Option<pb::Manifest>,
    /// Why it cannot be restored; `None` for a whole snapshot.
    pub problem: Option<Invalid>,
}

impl Listed {
    pub fn is_valid(&self) -> bool {
        self.problem.is_none()
    }
}

/// Objects found under one sequence number.
#[derive(Default)]
struct Found {
    manifest: Option<Path>,
    bodies: Vec<Path>,
}

/// `"00000000000000000042.manifest"` -> (42, "manifest").
fn parse_name(name: &str) -> Option<(u64, &str)> {
    let (sequence, rest) = name.split_once('.')?;
    if sequence.len() != 20 {
        return None;
    }
    Some((sequence.parse().ok()?, rest))
}

/// The folder of the ownership records, beside the regions' (a region's name has no '_'
/// first).
const OWNERSHIP: &str = "_ownership";

/// The newest ownership record of a pipeline: from `epoch` on, `region` owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub epoch: u64,
    pub region: String,
}

/// A region's name: not empty, no '/', not '_' first (the ownership records' folder).
pub fn check_region(field: &str, region: &str) -> Result<(), FieldError> {
    if region.is_empty() || region.contains('/') || region.starts_with('_') {
        return Err(FieldError::new(
            field,
            format!("{region:?} is not a region name (not empty, no '/', not '_' first)"),
        ));
    }
    Ok(())
}

fn key_name(sequence: u64) -> String {
    format!("{sequence:020}")
}

fn store_error(field: &str, e: impl std::fmt::Display) -> FieldError {
    FieldError::new(field, e.to_string())
}

impl SnapshotStore {
    /// Opens `config` for `region`'s snapshots; `field` names the setting in errors. A
    /// local directory is created.
    pub fn open(config: &StoreConfig, region: &str, field: &str) -> Result<Self, FieldError> {
        let url = config.url();
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(rest) =
            url.strip_prefix("s3://")
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            (
                Arc::new(s3(bucket, config.options(), field)?),
                prefix.to_string(),
            )
        } else if let Some(rest) = url.strip_prefix("gs://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            (
                Arc::new(gcs(bucket, config.options(), field)?),
                prefix.to_string(),
            )
        } else {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            if dir.is_empty() || dir.contains("://") {
                return Err(FieldError::new(
                    field,
                    format!("{url:?} is not a directory, s3://bucket/prefix or gs://bucket/prefix"),
                ));
            }
            if config.options().is_some_and(|o| !o.is_empty()) {
                return Err(FieldError::new(
                    format!("{field}.options"),
                    "a local directory takes no options",
                ));
            }
            std::fs::create_dir_all(dir).map_err(|e| store_error(field, format!("{dir}: {e}")))?;
            let local = LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| store_error(field, format!("{dir}: {e}")))?;
            (Arc::new(local), String::new())
        };
        check_region("region", region)?;
        let prefix = prefix.trim_matches('/');
        let under = |name: &str| {
            if prefix.is_empty() {
                Path::from(name)
            } else {
                Path::from(format!("{prefix}/{name}"))
            }
        };
        Ok(SnapshotStore {
            store,
            folder: under(region),
            ownership: under(OWNERSHIP),
            region: region.to_string(),
            url: url.to_string(),
        })
    }

    /// The store, as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    fn manifest_path(&self, sequence: u64) -> Path {
        self.folder
            .clone()
            .join(format!("{}.manifest", key_name(sequence)).as_str())
    }

    fn body_name(sequence: u64, writer: u64) -> String {
        format!("{}.{writer}.body", key_name(sequence))
    }

    /// What lies in the folder, by sequence number.
    async fn scan(&self) -> anyhow::Result<BTreeMap<u64, Found>> {
        let objects: Vec<_> = self
            .store
            .list(Some(&self.folder))
            .try_collect()
            .await
            .map_err(|e| anyhow::anyhow!("{}: cannot list {}: {e}", self.url, self.folder))?;
        let mut found: BTreeMap<u64, Found> = BTreeMap::new();
        for object in objects {
            let Some(name) = object.location.filename() else {
                continue;
            };
            let Some((sequence, rest)) = parse_name(name) else {
                continue;
            };
            let entry = found.entry(sequence).or_default();
            if rest == "manifest" {
                entry.manifest = Some(object.location.clone());
            } else if rest.ends_with(".body") {
                entry.bodies.push(object.location.clone());
            }
        }
        Ok(found)
    }

    /// The highest committed sequence number, whole or not.
    pub async fn newest_committed(&self) -> anyhow::Result<Option<u64>> {
        Ok(self
            .scan()
            .await?
            .iter()
            .rev()
            .find(|(_, f)| f.manifest.is_some())
            .map(|(s, _)| *s))
    }

    /// The sequence number after every one in the store, committed or not.
    pub async fn next_sequence(&self) -> anyhow::Result<u64> {
        Ok(self
            .scan()
            .await?
            .keys()
            .next_back()
            .map_or(1, |last| last + 1))
    }

    /// Writes a snapshot: its body, then its manifest, created only if no writer created
    /// one for this sequence number. Returns the manifest committed, or `None` when another
    /// writer took the number.
    pub async fn write(
        &self,
        mut manifest: pb::Manifest,
        body: Bytes,
    ) -> anyhow::Result<Option<pb::Manifest>> {
        let body_name = Self::body_name(manifest.sequence, manifest.written_by);
        let body_path = self.folder.clone().join(body_name.as_str());
        manifest.body = body_name;
        self.store
            .put(&body_path, PutPayload::from_bytes(body))
            .await
            .map_err(|e| anyhow::anyhow!("{}: cannot write {body_path}: {e}", self.url))?;
        let manifest_path = self.manifest_path(manifest.sequence);
        let result = self
            .store
            .put_opts(
                &manifest_path,
                PutPayload::from(manifest.encode_to_vec()),
                PutMode::Create.into(),
            )
            .await;
        match result {
            Ok(_) => Ok(Some(manifest)),
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Ours is never committed: take the body away again.
                let _ = self.store.delete(&body_path).await;
                Ok(None)
            }
            Err(e) => Err(anyhow::anyhow!(
                "{}: cannot create {manifest_path}: {e}",
                self.url
            )),
        }
    }

    async fn get(&self, path: &Path) -> Result<Option<Bytes>, anyhow::Error> {
        match self.store.get(path).await {
            Ok(result) => {
                Ok(Some(result.bytes().await.map_err(|e| {
                    anyhow::anyhow!("{}: cannot read {path}: {e}", self.url)
                })?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("{}: cannot read {path}: {e}", self.url)),
        }
    }

    /// Reads and checks the snapshot committed as `sequence`. The outer error is the
    /// store's; the inner one says why what it holds cannot be restored.
    pub async fn read(
        &self,
        sequence: u64,
    ) -> anyhow::Result<Result<(pb::Manifest, ClusterState), Invalid>> {
        let (manifest, state) = self.check(sequence).await?;
        Ok(state.map(|state| (manifest.expect("a whole snapshot has its manifest"), state)))
    }

    /// Reads snapshot `sequence`: its manifest where it decodes, and its state or why it
    /// cannot be restored.
    async fn check(
        &self,
        sequence: u64,
    ) -> anyhow::Result<(Option<pb::Manifest>, Result<ClusterState, Invalid>)> {
        let Some(bytes) = self.get(&self.manifest_path(sequence)).await? else {
            return Ok((None, Err(Invalid::Uncommitted)));
        };
        let manifest = match format::decode_manifest(&bytes, &self.region) {
            Ok(m) => m,
            Err(e) => return Ok((None, Err(e))),
        };
        if manifest.sequence != sequence {
            let found = manifest.sequence;
            return Ok((
                Some(manifest),
                Err(Invalid::Manifest(format!(
                    "it says sequence {found}, stored as {sequence}"
                ))),
            ));
        }
        let body_path = self.folder.clone().join(manifest.body.as_str());
        let Some(body) = self.get(&body_path).await? else {
            let missing = Invalid::MissingBody(manifest.body.clone());
            return Ok((Some(manifest), Err(missing)));
        };
        let state = format::check_body(&manifest, &body).and_then(|()| format::decode_body(&body));
        Ok((Some(manifest), state))
    }

    /// Every snapshot in the store, newest first, each checked as a restore would check it.
    pub async fn list(&self) -> anyhow::Result<Vec<Listed>> {
        let found = self.scan().await?;
        let mut listed = Vec::with_capacity(found.len());
        for (&sequence, objects) in found.iter().rev() {
            if objects.manifest.is_none() {
                listed.push(Listed {
                    sequence,
                    manifest: None,
                    problem: Some(Invalid::Uncommitted),
                });
                continue;
            }
            let (manifest, state) = self.check(sequence).await?;
            let problem = state.err();
            listed.push(Listed {
                sequence,
                manifest,
                problem,
            });
        }
        Ok(listed)
    }

    /// The newest snapshot that reads whole, with what was skipped on the way to it
    /// (newer ones that cannot be restored, with why).
    pub async fn newest_valid(
        &self,
    ) -> anyhow::Result<(Option<(pb::Manifest, ClusterState)>, Vec<(u64, Invalid)>)> {
        let found = self.scan().await?;
        let mut skipped = Vec::new();
        for &sequence in found.keys().rev() {
            match self.read(sequence).await? {
                Ok(snapshot) => return Ok((Some(snapshot), skipped)),
                Err(problem) => skipped.push((sequence, problem)),
            }
        }
        Ok((None, skipped))
    }

    /// Keeps the `keep` newest committed snapshots and removes older ones, and uncommitted
    /// bodies older than the oldest kept (a newer one may be a write under way). Returns how
    /// many objects were removed.
    pub async fn prune(&self, keep: usize) -> anyhow::Result<usize> {
        let found = self.scan().await?;
        let committed: Vec<u64> = found
            .iter()
            .filter(|(_, f)| f.manifest.is_some())
            .map(|(s, _)| *s)
            .collect();
        let Some(&oldest_kept) = committed
            .len()
            .checked_sub(keep)
            .map_or(committed.first(), |first| committed.get(first))
        else {
            return Ok(0);
        };
        let mut removed = 0;
        for (_, objects) in found.range(..oldest_kept) {
            // The manifest first: a reader never finds a manifest whose body is gone.
            for path in objects.manifest.iter().chain(&objects.bodies) {
                match self.store.delete(path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                    Err(e) => anyhow::bail!("{}: cannot remove {path}: {e}", self.url),
                }
            }
        }
        Ok(removed)
    }

    /// Records that `region` owns `pipeline` from region epoch `epoch` on. `Ok(false)`: a
    /// record of that epoch exists already (this region's, or another's that won).
    pub async fn claim(&self, pipeline: &str, epoch: u64, region: &str) -> anyhow::Result<bool> {
        let path = self
            .ownership
            .clone()
            .join(pipeline)
            .join(key_name(epoch).as_str());
        let result = self
            .store
            .put_opts(
                &path,
                PutPayload::from(region.as_bytes().to_vec()),
                PutMode::Create.into(),
            )
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let holder = self.get(&path).await?.unwrap_or_default();
                Ok(holder.as_ref() == region.as_bytes())
            }
            Err(e) => Err(anyhow::anyhow!("{}: cannot create {path}: {e}", self.url)),
        }
    }

    /// The newest ownership record of each pipeline that has one.
    pub async fn owners(&self) -> anyhow::Result<BTreeMap<String, Owner>> {
        let objects: Vec<_> = self
            .store
            .list(Some(&self.ownership))
            .try_collect()
            .await
            .map_err(|e| anyhow::anyhow!("{}: cannot list {}: {e}", self.url, self.ownership))?;
        let mut newest: BTreeMap<String, (u64, Path)> = BTreeMap::new();
        for object in objects {
            let parts: Vec<_> = object.location.parts().collect();
            let [.., pipeline, epoch] = parts.as_slice() else {
                continue;
            };
            let (pipeline, epoch) = (pipeline.as_ref(), epoch.as_ref());
            let Ok(epoch) = epoch.parse::<u64>() else {
                continue;
            };
            if newest.get(pipeline).is_none_or(|(known, _)| *known < epoch) {
                newest.insert(pipeline.to_string(), (epoch, object.location.clone()));
            }
        }
        let mut owners = BTreeMap::new();
        for (pipeline, (epoch, path)) in newest {
            let Some(region) = self.get(&path).await? else {
                continue;
            };
            let region = String::from_utf8_lossy(&region).into_owned();
            owners.insert(pipeline, Owner { epoch, region });
        }
        Ok(owners)
    }

    /// Writes raw bytes under the region's folder: for tests that damage a snapshot, and
    /// tools that copy one.
    pub async fn put_raw(&self, name: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        let path = self.folder.clone().join(name);
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| anyhow::anyhow!("{}: cannot write {path}: {e}", self.url))?;
        Ok(())
    }

    /// Reads raw bytes under the region's folder (`None`: absent).
    pub async fn get_raw(&self, name: &str) -> anyhow::Result<Option<Bytes>> {
        self.get(&self.folder.clone().join(name)).await
    }

    /// Removes an object under the region's folder.
    pub async fn delete_raw(&self, name: &str) -> anyhow::Result<()> {
        let path = self.folder.clone().join(name);
        self.store
            .delete(&path)
            .await
            .map_err(|e| anyhow::anyhow!("{}: cannot remove {path}: {e}", self.url))
    }
}

/// A cloud store's requests give up within seconds, not object_store's default minutes: a
/// writer tries again at its next interval, and an operator's call answers. Options given
/// in the config (`timeout`, `connect_timeout`) win.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(15),
    }
}

fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_timeout(std::time::Duration::from_secs(10))
        .with_connect_timeout(std::time::Duration::from_secs(3))
}

/// Options of `field`, each parsed as a key of `K`; unknown keys are refused by name.
fn parse_options<K: std::str::FromStr>(
    options: Option<&BTreeMap<String, String>>,
    field: &str,
    kind: &str,
) -> Result<Vec<(K, String)>, FieldError> {
    options
        .into_iter()
        .flatten()
        .map(|(key, value)| {
            key.to_ascii_lowercase()
                .parse::<K>()
                .map(|k| (k, value.clone()))
                .map_err(|_| {
                    FieldError::new(
                        format!("{field}.options.{key}"),
                        format!("is not an object_store {kind} setting"),
                    )
                })
        })
        .collect()
}

fn s3(
    bucket: &str,
    options: Option<&BTreeMap<String, String>>,
    field: &str,
) -> Result<object_store::aws::AmazonS3, FieldError> {
    let options = parse_options::<AmazonS3ConfigKey>(options, field, "S3")?;
    let has = |key: AmazonS3ConfigKey| options.iter().any(|(k, _)| *k == key);
    let static_keys =
        has(AmazonS3ConfigKey::AccessKeyId) && has(AmazonS3ConfigKey::SecretAccessKey);
    if !static_keys && !has(AmazonS3ConfigKey::SkipSignature) {
        return Err(FieldError::new(
            format!("{field}.options"),
            "give aws_access_key_id and aws_secret_access_key, or aws_skip_signature: a \
             store never looks for credentials by itself",
        ));
    }
    options
        .into_iter()
        .fold(
            AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_retry(retry())
                .with_client_options(client_options()),
            |builder, (key, value)| builder.with_config(key, value),
        )
        .build()
        .map_err(|e| store_error(field, e))
}

fn gcs(
    bucket: &str,
    options: Option<&BTreeMap<String, String>>,
    field: &str,
) -> Result<object_store::gcp::GoogleCloudStorage, FieldError> {
    let options = parse_options::<GoogleConfigKey>(options, field, "GCS")?;
    let has = |key: GoogleConfigKey| options.iter().any(|(k, _)| *k == key);
    if !has(GoogleConfigKey::ServiceAccount) && !has(GoogleConfigKey::ServiceAccountKey) {
        return Err(FieldError::new(
            format!("{field}.options"),
            "give google_service_account (a key file's path) or google_service_account_key: \
             a store never looks for credentials by itself",
        ));
    }
    options
        .into_iter()
        .fold(
            GoogleCloudStorageBuilder::new()
                .with_bucket_name(bucket)
                .with_retry(retry())
                .with_client_options(client_options()),
            |builder, (key, value)| builder.with_config(key, value),
        )
        .build()
        .map_err(|e| store_error(field, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_refused_naming_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let local = StoreConfig::Url(dir.path().display().to_string());
        assert!(SnapshotStore::open(&local, "a", "snapshot.store").is_ok());
        let error = |config: StoreConfig| {
            SnapshotStore::open(&config, "a", "snapshot.store")
                .err()
                .unwrap()
        };
        let with = |url: &str, options: &[(&str, &str)]| {
            StoreConfig::WithOptions(StoreWithOptions {
                url: url.into(),
                options: options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
        };
        let e = error(with("s3://b/p", &[]));
        assert_eq!(e.field, "snapshot.store.options");
        assert!(e.message.contains("credentials"), "{e:?}");
        let e = error(with("s3://b/p", &[("aws_acess_key_id", "k")]));
        assert_eq!(e.field, "snapshot.store.options.aws_acess_key_id");
        let e = error(with("gs://b", &[]));
        assert!(e.message.contains("google_service_account"), "{e:?}");
        let e = error(StoreConfig::Url("ftp://host/x".into()));
        assert_eq!(e.field, "snapshot.store");
        let e = error(with(&dir.path().display().to_string(), &[("k", "v")]));
        assert_eq!(e.field, "snapshot.store.options");
        let e = SnapshotStore::open(&local, "a/b", "snapshot.store")
            .err()
            .unwrap();
        assert_eq!(e.field, "region");
    }

    #[test]
    fn names_sort_by_sequence_and_strangers_are_ignored() {
        assert_eq!(
            parse_name("00000000000000000042.manifest"),
            Some((42, "manifest"))
        );
        assert_eq!(
            parse_name("00000000000000000042.3.body"),
            Some((42, "3.body"))
        );
        assert_eq!(parse_name("42.manifest"), None);
        assert_eq!(parse_name("README"), None);
        assert!(key_name(9) < key_name(10));
    }
}
