//! Timing and log-compaction settings of a coordinator's Raft node.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a coordinator runs Raft.
///
/// With the defaults a new leader is elected about 0.5 to 0.7 s after the old one goes silent.
/// openraft 0.9 makes a follower that knew a leader wait the leader's lease
/// (`election_timeout_max_ms`) plus a random election timeout before it stands, and checks
/// timeouts on a tick of 1.5 heartbeat intervals: 300 + 150..300 ms + up to 75 ms, then one
/// vote round trip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// A follower that hears no leader for a random time in
    /// `[election_timeout_min_ms, election_timeout_max_ms)` starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How often the leader sends heartbeats; well below the election timeout so that a lost
    /// heartbeat or two does not start an election.
    pub heartbeat_interval_ms: u64,
    /// How long [`super::RaftNode::write`] waits for a command to commit. A leader cut off from
    /// its quorum never commits, and openraft keeps the proposal pending, so the caller needs
    /// a bound.
    pub write_timeout_ms: u64,
    /// How long a gRPC peer may take to accept a connection.
    pub connect_timeout_ms: u64,
    /// A snapshot is built after this many applied entries since the last one.
    pub snapshot_after_logs: u64,
    /// Entries kept in the log below a snapshot, so that a follower that lags a little catches
    /// up from the log rather than by a full snapshot.
    pub logs_kept_after_snapshot: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            heartbeat_interval_ms: 50,
            write_timeout_ms: 3_000,
            connect_timeout_ms: 200,
            snapshot_after_logs: 1_000,
            logs_kept_after_snapshot: 1_000,
        }
    }
}

/// A setting of [`RaftConfig`] that cannot work, named with its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("election_timeout_min_ms ({min}) must be less than election_timeout_max_ms ({max})")]
    ElectionTimeout { min: u64, max: u64 },
    #[error(
        "heartbeat_interval_ms ({heartbeat}) must be less than election_timeout_min_ms ({election_min})"
    )]
    Heartbeat { heartbeat: u64, election_min: u64 },
    #[error("{field} must be at least 1, got 0")]
    Zero { field: &'static str },
}

impl RaftConfig {
    /// Checks the settings without doing any I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("snapshot_after_logs", self.snapshot_after_logs),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return Err(ConfigError::ElectionTimeout {
                min: self.election_timeout_min_ms,
                max: self.election_timeout_max_ms,
            });
        }
        if self.heartbeat_interval_ms >= self.election_timeout_min_ms {
            return Err(ConfigError::Heartbeat {
                heartbeat: self.heartbeat_interval_ms,
                election_min: self.election_timeout_min_ms,
            });
        }
        Ok(())
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The openraft configuration these settings stand for.
    pub(crate) fn timing(&self) -> super::prevote::Timing {
        super::prevote::Timing {
            election_min: Duration::from_millis(self.election_timeout_min_ms),
            election_max: Duration::from_millis(self.election_timeout_max_ms),
        }
    }

    pub(crate) fn to_openraft(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: "mirador-coordinators".to_string(),
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            heartbeat_interval: self.heartbeat_interval_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_after_logs),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            // Elections are called by our pre-vote (`super::prevote`).
            enable_elect: false,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_for_openraft_too() {
        let config = RaftConfig::default();
        config.validate().unwrap();
        config.to_openraft().validate().unwrap();
    }

    #[test]
    fn names_the_bad_field_and_value() {
        let config = RaftConfig {
            heartbeat_interval_ms: 200,
            ..RaftConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "heartbeat_interval_ms (200) must be less than election_timeout_min_ms (150)"
        );
        let unknown = serde_json::from_str::<RaftConfig>(r#"{"heartbeat_ms": 10}"#);
        assert!(unknown.is_err(), "unknown fields are refused");
    }
}
