//! One mapping from coordinator errors to gRPC codes, for every service.

use std::collections::{BTreeMap, BTreeSet};

use mirador_proto::leader::not_leader;
use openraft::ServerState;
use tonic::Status;

use crate::admin::FieldError;
use crate::raft::{InitError, RaftNode, WriteError};
use crate::state::Refusal;

/// A member of the Raft group, as the admin API shows it.
#[derive(Clone, Debug)]
pub struct MemberStatus {
    pub id: u64,
    pub addr: String,
    /// "leader", "voter" or "learner".
    pub role: &'static str,
}

/// The Raft group, as one node sees it.
#[derive(Clone, Debug)]
pub struct GroupStatus {
    pub leader_id: Option<u64>,
    pub leader_addr: Option<String>,
    pub term: u64,
    pub last_applied: u64,
    pub members: Vec<MemberStatus>,
}

impl GroupStatus {
    pub fn member(&self, id: u64) -> Option<&MemberStatus> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The members that vote, the leader included.
    pub fn voters(&self) -> BTreeSet<u64> {
        self.members
            .iter()
            .filter(|m| m.role != "learner")
            .map(|m| m.id)
            .collect()
    }
}

impl RaftNode {
    pub fn is_leader(&self) -> bool {
        let m = self.metrics();
        m.server_state == ServerState::Leader && m.leader == Some(m.id)
    }

    /// The refusal a follower gives: the leader's address, when it knows it.
    pub fn not_leader(&self) -> Status {
        let m = self.metrics();
        not_leader(m.leader.and_then(|l| m.members.get(&l)).map(String::as_str))
    }

    /// `Ok` on the leader; elsewhere the refusal that names it.
    pub fn lead(&self) -> Result<(), Status> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    /// Commits `command` for a gRPC caller: a refusal of the state machine is the caller's
    /// error, named; a write that did not commit here points at the leader or is worth
    /// retrying.
    pub async fn commit(
        &self,
        command: crate::state::Command,
    ) -> Result<crate::state::Outcome, Status> {
        match self.write(command).await.map_err(write_error)? {
            crate::state::Outcome::Refused(refusal) => Err(refused(refusal)),
            outcome => Ok(outcome),
        }
    }

    pub fn status(&self) -> GroupStatus {
        let m = self.metrics();
        GroupStatus {
            leader_id: m.leader,
            leader_addr: m.leader.and_then(|l| m.members.get(&l).cloned()),
            term: m.term,
            last_applied: m.last_applied.unwrap_or_default(),
            members: m
                .members
                .iter()
                .map(|(id, addr)| MemberStatus {
                    id: *id,
                    addr: addr.clone(),
                    role: if Some(*id) == m.leader {
                        "leader"
                    } else if m.voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    },
                })
                .collect(),
        }
    }

    /// Initializes a new group; a node that already belongs to one is left as it is.
    pub async fn initialize_if_new(&self, members: BTreeMap<u64, String>) -> anyhow::Result<()> {
        match self.initialize(members).await {
            Ok(()) | Err(InitError::Refused(_)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// A request refused for one of its fields: `INVALID_ARGUMENT`, "field: message".
pub fn invalid(error: &FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// A command the state machine refused: the caller's error, named.
pub fn refused(refusal: Refusal) -> Status {
    let message = refusal.to_string();
    match refusal {
        Refusal::UnknownPipeline(_) | Refusal::UnknownPartition { .. } => {
            Status::not_found(message)
        }
        Refusal::UnknownExecutor(_) => Status::not_found(format!("executor_id: {message}")),
        Refusal::StaleEpoch { .. }
        | Refusal::NotOwner { .. }
        | Refusal::Backwards { .. }
        | Refusal::OwnedElsewhere { .. } => Status::failed_precondition(message),
        Refusal::Invalid(error) => invalid(&error),
    }
}

/// A write that did not commit here: a follower points at the leader; anything else is
/// worth retrying.
pub fn write_error(error: WriteError) -> Status {
    match error {
        WriteError::ForwardToLeader { leader_addr, .. } => not_leader(leader_addr.as_deref()),
        other => Status::unavailable(other.to_string()),
    }
}
