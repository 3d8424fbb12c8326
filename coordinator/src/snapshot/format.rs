//! The stored form of a snapshot (`proto/proto/snapshot.proto`): a [`ClusterState`] as a
//! protobuf body, and the manifest that names, sizes and checksums it.
//!
//! The body is the state only, so that the same state encodes to the same bytes whoever
//! writes it; when and by whom it was taken is in the manifest.

use std::collections::BTreeMap;

use mirador_proto::snapshot as pb;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::state::{Assignment, Checkpoint, ClusterState, Executor, Pipeline};

/// The version of the manifest and body this code writes, and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Why a stored snapshot cannot be restored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("the manifest cannot be decoded: {0}")]
    Manifest(String),
    #[error("format version {0} is not known (this coordinator reads {FORMAT_VERSION})")]
    Version(u32),
    #[error("the manifest is of region {found:?}, stored under {expected:?}")]
    Region { expected: String, found: String },
    #[error("the body {0} is missing")]
    MissingBody(String),
    #[error("the body is {found} bytes, the manifest says {expected}")]
    Length { expected: u64, found: u64 },
    #[error("the body's SHA-256 is {found}, the manifest says {expected}")]
    Checksum { expected: String, found: String },
    #[error("the body cannot be decoded: {0}")]
    Body(String),
    #[error(
        "no manifest: the snapshot was never committed (its writer stopped, or is still writing)"
    )]
    Uncommitted,
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A body ready to store, with what its manifest says of it.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub body: bytes::Bytes,
    pub sha256: Vec<u8>,
    pub pipelines: u32,
    pub partitions: u32,
}

impl Encoded {
    /// The manifest of this body as snapshot `sequence` of `region` by coordinator
    /// `written_by`; when and at which Raft index it was taken is the writer's to add.
    pub fn manifest(&self, region: &str, sequence: u64, written_by: u64) -> pb::Manifest {
        pb::Manifest {
            format_version: FORMAT_VERSION,
            region: region.to_string(),
            sequence,
            written_by,
            body_len: self.body.len() as u64,
            body_sha256: self.sha256.clone(),
            pipelines: self.pipelines,
            partitions: self.partitions,
            ..pb::Manifest::default()
        }
    }
}

/// Encodes and checksums `state`: what a snapshot writer runs off the async threads.
pub fn encode(state: &ClusterState) -> Encoded {
    let body = encode_body(state);
    Encoded {
        sha256: sha256(&body),
        body: body.into(),
        pipelines: state.pipelines.len() as u32,
        partitions: state.assignments.len() as u32,
    }
}

/// Encodes `state` as a snapshot body.
pub fn encode_body(state: &ClusterState) -> Vec<u8> {
    let partitions = state
        .assignments
        .iter()
        .map(|((pipeline, partition), a)| pb::Partition {
            pipeline: pipeline.clone(),
            partition: *partition,
            owner: a.owner.clone(),
            epoch: a.epoch,
            target: a.target.clone(),
            finished: a.finished,
            checkpoint: state
                .checkpoints
                .get(&(pipeline.clone(), *partition))
                .map(|c| pb::Checkpoint {
                    position: c.position,
                    epoch: c.epoch,
                }),
        })
        .collect();
    pb::State {
        pipelines: state
            .pipelines
            .values()
            .map(|p| pb::Pipeline {
                name: p.name.clone(),
                version: p.version,
                spec: p.spec.clone(),
                partitions: p.partitions,
                gpu: p.gpu,
                paused: p.paused,
                owned_by: p.owned_by.clone(),
                region_epoch: p.region_epoch,
                failover: p.failover.as_str().to_string(),
            })
            .collect(),
        partitions,
        executors: state
            .executors
            .values()
            .map(|e| pb::Executor {
                id: e.id.clone(),
                address: e.address.clone(),
                region: e.region.clone(),
                slots: e.slots,
                gpu: e.gpu,
                incarnation: e.incarnation,
                draining: e.draining,
            })
            .collect(),
        last_epoch: state.last_epoch,
        last_incarnation: state.last_incarnation,
    }
    .encode_to_vec()
}

/// Decodes a body that [`check_body`] accepted.
pub fn decode_body(body: &[u8]) -> Result<ClusterState, Invalid> {
    let stored = pb::State::decode(body).map_err(|e| Invalid::Body(e.to_string()))?;
    let mut state = ClusterState {
        last_epoch: stored.last_epoch,
        last_incarnation: stored.last_incarnation,
        ..ClusterState::default()
    };
    for p in stored.pipelines {
        // Absent (a snapshot from before the field): manual.
        let failover = match p.failover.as_str() {
            "" => mirador_spec::FailoverMode::Manual,
            text => mirador_spec::FailoverMode::parse(text).ok_or_else(|| {
                Invalid::Body(format!(
                    "pipeline {}: failover {text:?} is not a mode",
                    p.name
                ))
            })?,
        };
        state.pipelines.insert(
            p.name.clone(),
            Pipeline {
                name: p.name,
                version: p.version,
                spec: p.spec,
                partitions: p.partitions,
                gpu: p.gpu,
                paused: p.paused,
                failover,
                owned_by: p.owned_by,
                region_epoch: p.region_epoch,
            },
        );
    }
    for p in stored.partitions {
        if !state.pipelines.contains_key(&p.pipeline) {
            return Err(Invalid::Body(format!(
                "partition {}/{} of a pipeline the snapshot does not hold",
                p.pipeline, p.partition
            )));
        }
        let key = (p.pipeline, p.partition);
        if let Some(c) = p.checkpoint {
            state.checkpoints.insert(
                key.clone(),
                Checkpoint {
                    position: c.position,
                    epoch: c.epoch,
                },
            );
        }
        state.assignments.insert(
            key,
            Assignment {
                owner: p.owner,
                epoch: p.epoch,
                target: p.target,
                finished: p.finished,
            },
        );
    }
    state.executors = stored
        .executors
        .into_iter()
        .map(|e| {
            let executor = Executor {
                id: e.id,
                address: e.address,
                region: e.region,
                slots: e.slots,
                gpu: e.gpu,
                incarnation: e.incarnation,
                draining: e.draining,
            };
            (executor.id.clone(), executor)
        })
        .collect::<BTreeMap<_, _>>();
    Ok(state)
}

/// Decodes a manifest stored for `region`.
pub fn decode_manifest(bytes: &[u8], region: &str) -> Result<pb::Manifest, Invalid> {
    let manifest = pb::Manifest::decode(bytes).map_err(|e| Invalid::Manifest(e.to_string()))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(Invalid::Version(manifest.format_version));
    }
    if manifest.region != region {
        return Err(Invalid::Region {
            expected: region.to_string(),
            found: manifest.region,
        });
    }
    Ok(manifest)
}

/// Checks a body against its manifest's length and checksum.
pub fn check_body(manifest: &pb::Manifest, body: &[u8]) -> Result<(), Invalid> {
    if body.len() as u64 != manifest.body_len {
        return Err(Invalid::Length {
            expected: manifest.body_len,
            found: body.len() as u64,
        });
    }
    let found = sha256(body);
    if found != manifest.body_sha256 {
        return Err(Invalid::Checksum {
            expected: hex(&manifest.body_sha256),
            found: hex(&found),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn state() -> ClusterState {
        let mut state = ClusterState::default();
        for command in [
            Command::RegisterExecutor {
                id: "e1".into(),
                address: "127.0.0.1:1".into(),
                region: "a".into(),
                slots: 4,
                gpu: false,
            },
            Command::PutPipeline {
                name: "p".into(),
                spec: "name: p\n".into(),
                partitions: 3,
                gpu: false,
                failover: mirador_spec::FailoverMode::Manual,
            },
        ] {
            state.apply(&command);
        }
        let moves = (0..3)
            .map(|partition| crate::state::Move {
                pipeline: "p".into(),
                partition,
                from: None,
                to: "e1".into(),
            })
            .collect();
        state.apply(&Command::ApplyPlan { moves });
        let epoch = state.assignments[&("p".to_string(), 1)].epoch;
        state.apply(&Command::CommitCheckpoint {
            pipeline: "p".into(),
            partition: 1,
            executor: "e1".into(),
            epoch,
            position: 4096,
        });
        assert_eq!(state.checkpoints.len(), 1);
        state
    }

    #[test]
    fn a_state_comes_back_equal_and_encodes_to_the_same_bytes() {
        let state = state();
        let body = encode_body(&state);
        assert_eq!(decode_body(&body).unwrap(), state);
        assert_eq!(encode_body(&decode_body(&body).unwrap()), body);
    }

    /// The manifest of `body` in region "a".
    fn manifest_of(body: &[u8]) -> pb::Manifest {
        pb::Manifest {
            format_version: FORMAT_VERSION,
            region: "a".into(),
            body_len: body.len() as u64,
            body_sha256: sha256(body),
            ..Default::default()
        }
    }

    #[test]
    fn a_flipped_bit_or_a_cut_body_is_caught_by_its_manifest() {
        let body = encode_body(&state());
        let manifest = manifest_of(&body);
        assert_eq!(check_body(&manifest, &body), Ok(()));
        let mut flipped = body.clone();
        flipped[body.len() / 2] ^= 0x10;
        assert!(matches!(
            check_body(&manifest, &flipped),
            Err(Invalid::Checksum { .. })
        ));
        assert!(matches!(
            check_body(&manifest, &body[..body.len() - 1]),
            Err(Invalid::Length { .. })
        ));
        let manifest = manifest.encode_to_vec();
        assert!(decode_manifest(&manifest, "a").is_ok());
        assert!(matches!(
            decode_manifest(&manifest, "b"),
            Err(Invalid::Region { .. })
        ));
        assert!(matches!(
            decode_manifest(&manifest[..manifest.len() - 3], "a"),
            Err(Invalid::Manifest(_))
        ));
    }

    proptest::proptest! {
        /// Any bytes as a manifest or a body: an error or a state, never a panic; and a
        /// body changed anywhere is caught by its manifest.
        #[test]
        fn arbitrary_bytes_never_panic_and_any_changed_byte_is_caught(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let _ = decode_manifest(&bytes, "a");
            let _ = decode_body(&bytes);
            let body = encode_body(&state());
            let manifest = manifest_of(&body);
            let mut changed = body.clone();
            changed[at.index(body.len())] ^= flip;
            proptest::prop_assert!(check_body(&manifest, &changed).is_err());
        }
    }

    #[test]
    fn garbage_never_decodes_to_a_state_silently() {
        // Bytes that are no protobuf at all, and a partition of an unknown pipeline.
        assert!(decode_body(&[0xff; 64]).is_err());
        let orphan = pb::State {
            partitions: vec![pb::Partition {
                pipeline: "gone".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        assert!(matches!(decode_body(&orphan), Err(Invalid::Body(_))));
    }
}
