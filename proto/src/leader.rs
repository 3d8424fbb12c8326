//! A client channel that follows the Raft leader of a region.
//!
//! Coordinators that are not the leader refuse a call with `UNAVAILABLE` and the leader's
//! `host:port` in the [`LEADER_METADATA`] metadata (empty when no leader is known). A
//! [`LeaderChannel`] retries such a call at the leader, and a call that found nobody at
//! the next address, with backoff, until its deadline.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::retry::Backoff;
use crate::sync::Locked;
use crate::transport::{self, ChannelOptions};

/// Between attempts at the coordinators: short, as an election takes about a second.
const RETRY: Backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));

/// The metadata key of the leader's address on a refusal.
pub const LEADER_METADATA: &str = "mirador-leader";

/// The refusal of a coordinator that is not the leader.
pub fn not_leader(leader: Option<&str>) -> Status {
    let mut status = Status::unavailable(match leader {
        Some(addr) => format!("not the leader: the leader is {addr}"),
        None => "not the leader: no leader is known yet".to_string(),
    });
    if let Ok(value) = leader.unwrap_or_default().parse() {
        status.metadata_mut().insert(LEADER_METADATA, value);
    }
    status
}

/// `Some(addr)` when the status is a refusal by a follower that knows the leader,
/// `Some("")` when it knows none yet, `None` when it is not such a refusal.
fn redirect(status: &Status) -> Option<String> {
    let value = status.metadata().get(LEADER_METADATA)?;
    Some(value.to_str().unwrap_or_default().to_string())
}

/// A lazily connected channel per address; one is used at a time, the leader's.
pub struct LeaderChannel {
    options: ChannelOptions,
    addresses: Mutex<Vec<String>>,
    current: Mutex<(usize, Option<Channel>)>,
    /// How long a call keeps retrying before it gives up.
    patience: Duration,
}

impl LeaderChannel {
    /// `addresses`: `host:port` of the region's coordinators (any of them).
    pub fn new(addresses: Vec<String>, patience: Duration) -> Self {
        Self::with_options(addresses, patience, ChannelOptions::control())
    }

    /// As [`LeaderChannel::new`], each channel built with `options`.
    pub fn with_options(
        addresses: Vec<String>,
        patience: Duration,
        options: ChannelOptions,
    ) -> Self {
        LeaderChannel {
            options,
            addresses: Mutex::new(addresses),
            current: Mutex::new((0, None)),
            patience,
        }
    }

    fn channel(&self) -> Result<(String, Channel), Status> {
        let addresses = self.addresses.locked();
        if addresses.is_empty() {
            return Err(Status::invalid_argument("no coordinator address"));
        }
        let mut current = self.current.locked();
        let index = current.0 % addresses.len();
        let addr = addresses[index].clone();
        if current.1.is_none() {
            let channel = transport::channel(&addr, &self.options)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            current.1 = Some(channel);
        }
        Ok((addr, current.1.clone().expect("set above")))
    }

    /// Calls the next address from now on.
    fn rotate(&self, failed: &str) {
        let addresses = self.addresses.locked();
        let mut current = self.current.locked();
        if addresses
            .get(current.0 % addresses.len().max(1))
            .map(String::as_str)
            == Some(failed)
        {
            current.0 = (current.0 + 1) % addresses.len().max(1);
            current.1 = None;
        }
    }

    /// Calls `leader` from now on, learning its address if it is new.
    fn follow(&self, leader: &str) {
        let mut addresses = self.addresses.locked();
        let index = match addresses.iter().position(|a| a == leader) {
            Some(index) => index,
            None => {
                addresses.push(leader.to_string());
                addresses.len() - 1
            }
        };
        let mut current = self.current.locked();
        if current.0 != index {
            *current = (index, None);
        }
    }

    /// The address called now.
    pub fn current(&self) -> String {
        self.channel().map(|(addr, _)| addr).unwrap_or_default()
    }

    /// Runs `call` on the leader's channel, following redirects and skipping coordinators
    /// that do not answer, until it succeeds, fails for another reason, or patience ends.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.patience;
        let mut attempts = RETRY.attempts();
        loop {
            let (addr, channel) = self.channel()?;
            let status = match call(channel).await {
                Ok(value) => return Ok(value),
                Err(status) => status,
            };
            match redirect(&status) {
                Some(leader) if !leader.is_empty() && leader != addr => {
                    self.follow(&leader);
                    continue;
                }
                // A follower that knows no leader yet (an election), or a coordinator that
                // does not answer: try the next one after a pause.
                Some(_) => self.rotate(&addr),
                None if status.code() == Code::Unavailable
                    || status.code() == Code::Unknown
                    || status.code() == Code::Cancelled
                    || status.code() == Code::DeadlineExceeded =>
                {
                    self.rotate(&addr)
                }
                None => return Err(status),
            }
            let backoff = attempts.next_delay();
            if Instant::now() + backoff > deadline {
                return Err(status);
            }
            tokio::time::sleep(backoff).await;
        }
    }
}
