//! A client channel that follows the Raft leader of a region.
//!
//! Coordinators that are not the leader refuse a call with `UNAVAILABLE` and the leader's
//! `host:port` in the [`LEADER_METADATA`] metadata (empty when no leader is known). A
//! [`LeaderChannel`] retries such a call at the leader, and a call that found nobody at
//! the next address, with backoff, until its deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::retry::Backoff;
use crate::sync::Locked;
use crate::transport::{self, ChannelOptions};

/// Between attempts at the coordinators: short, as an election takes about a second and
/// an executor's lease a couple of seconds.
const RETRY: Backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(250));

/// How long a coordinator that did not answer is not called again on a follower's word.
/// The followers of a leader that hangs go on naming it until they elect another, an
/// election timeout or more later: following them there would spend a whole attempt's
/// timeout on it each time, while the new leader may already be elected.
const SUSPECT_FOR: Duration = Duration::from_secs(1);

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
    /// The coordinators that did not answer a call lately, and when.
    unanswered: Mutex<HashMap<String, Instant>>,
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
            unanswered: Mutex::new(HashMap::new()),
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

    /// Whether `addr` did not answer within [`SUSPECT_FOR`].
    fn is_suspect(&self, addr: &str) -> bool {
        self.unanswered
            .locked()
            .get(addr)
            .is_some_and(|at| at.elapsed() < SUSPECT_FOR)
    }

    /// The first index from `from` on whose address answered lately, or `from` when none did.
    fn answering_from(&self, addresses: &[String], from: usize) -> usize {
        (0..addresses.len())
            .map(|i| (from + i) % addresses.len())
            .find(|&i| !self.is_suspect(&addresses[i]))
            .unwrap_or(from)
    }

    /// Calls the next address (that answered lately) from now on.
    fn rotate(&self, failed: &str) {
        let addresses = self.addresses.locked();
        let mut current = self.current.locked();
        if addresses
            .get(current.0 % addresses.len().max(1))
            .map(String::as_str)
            == Some(failed)
        {
            let next = self.answering_from(&addresses, (current.0 + 1) % addresses.len().max(1));
            *current = (next, None);
        }
    }

    /// Calls the address listed after `redirector` from now on: the leader it named did not
    /// answer (an address this client cannot reach, or a leader that is gone), so every
    /// listed coordinator gets its turn, the leader among them under the address listed.
    fn rotate_after(&self, redirector: &str) {
        let addresses = self.addresses.locked();
        let Some(index) = addresses.iter().position(|a| a == redirector) else {
            return;
        };
        let next = self.answering_from(&addresses, (index + 1) % addresses.len());
        *self.current.locked() = (next, None);
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
        // The coordinator whose redirect named the address called now.
        let mut redirector: Option<String> = None;
        loop {
            let (addr, channel) = self.channel()?;
            let attempt = Instant::now();
            let status = match call(channel).await {
                Ok(value) => {
                    self.unanswered.locked().remove(&addr);
                    return Ok(value);
                }
                Err(status) => status,
            };
            tracing::debug!(%addr, code = ?status.code(), message = status.message(),
                took_ms = attempt.elapsed().as_millis() as u64, "coordinator call failed");
            match redirect(&status) {
                // A follower that has not noticed yet that the leader it names hangs: the
                // others may know the new one.
                Some(leader)
                    if !leader.is_empty() && leader != addr && self.is_suspect(&leader) =>
                {
                    self.rotate(&addr)
                }
                Some(leader) if !leader.is_empty() && leader != addr => {
                    self.follow(&leader);
                    redirector = Some(addr);
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
                    self.unanswered
                        .locked()
                        .insert(addr.clone(), Instant::now());
                    match redirector.take() {
                        Some(by) => self.rotate_after(&by),
                        None => self.rotate(&addr),
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::region_peer_client::RegionPeerClient;
    use crate::region::region_peer_server::{RegionPeer, RegionPeerServer};
    use crate::region::{HandOverRequest, HandOverResponse, PeerStatusRequest, PeerStatusResponse};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response};

    /// What a test coordinator does with a call.
    enum Reply {
        Lead,
        Name(String),
        Hang,
    }

    /// A coordinator whose replies follow a script; it counts the calls it gets.
    struct Peer {
        reply: Box<dyn Fn() -> Reply + Send + Sync>,
        calls: Arc<AtomicUsize>,
    }

    impl Peer {
        fn new(reply: impl Fn() -> Reply + Send + Sync + 'static) -> Self {
            Peer {
                reply: Box::new(reply),
                calls: Arc::new(AtomicUsize::new(0)),
            }
        }
    }

    #[tonic::async_trait]
    impl RegionPeer for Peer {
        async fn status(
            &self,
            _: Request<PeerStatusRequest>,
        ) -> Result<Response<PeerStatusResponse>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match (self.reply)() {
                Reply::Name(leader) => Err(not_leader(Some(&leader))),
                Reply::Hang => std::future::pending().await,
                Reply::Lead => Ok(Response::new(PeerStatusResponse {
                    region: "here".into(),
                    leader_id: 2,
                    ..Default::default()
                })),
            }
        }

        async fn hand_over(
            &self,
            _: Request<HandOverRequest>,
        ) -> Result<Response<HandOverResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    /// Asks `channel` for the status, each attempt given up after `attempt`.
    async fn status(channel: &LeaderChannel, attempt: Duration) -> Result<u64, Status> {
        let answer = channel
            .call(|channel| async move {
                tokio::time::timeout(
                    attempt,
                    RegionPeerClient::new(channel).status(PeerStatusRequest::default()),
                )
                .await
                .map_err(|_| Status::deadline_exceeded("the attempt's deadline"))?
            })
            .await?;
        Ok(answer.into_inner().leader_id)
    }

    async fn serve(peer: Peer) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            transport::server()
                .add_service(RegionPeerServer::new(peer))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    #[tokio::test]
    async fn a_leader_named_at_an_address_out_of_reach_is_found_at_its_listed_one() {
        // The follower names the leader by an address this client cannot reach (its
        // address on another network); the leader is also listed, under the address that
        // this client reaches.
        let unreachable = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let follower = serve(Peer::new(move || Reply::Name(unreachable.clone()))).await;
        let leader = serve(Peer::new(|| Reply::Lead)).await;
        let channel = LeaderChannel::new(vec![follower, leader.clone()], Duration::from_secs(5));
        for _ in 0..3 {
            let answer = status(&channel, Duration::from_secs(5)).await;
            assert_eq!(answer.expect("the listed leader answers"), 2);
        }
        assert_eq!(channel.current(), leader);
    }

    #[tokio::test]
    async fn the_followers_of_a_hung_leader_are_asked_again_until_they_name_the_new_one() {
        // The leader hangs; its followers go on naming it until, 600 ms on, they elect the
        // first of them.
        let hung = Peer::new(|| Reply::Hang);
        let hung_calls = hung.calls.clone();
        let hung = serve(hung).await;
        let elected = Instant::now() + Duration::from_millis(600);
        let first = {
            let hung = hung.clone();
            serve(Peer::new(move || match Instant::now() < elected {
                true => Reply::Name(hung.clone()),
                false => Reply::Lead,
            }))
            .await
        };
        let second = {
            let (hung, first) = (hung.clone(), first.clone());
            serve(Peer::new(move || match Instant::now() < elected {
                true => Reply::Name(hung.clone()),
                false => Reply::Name(first.clone()),
            }))
            .await
        };
        let channel = LeaderChannel::new(vec![hung, first.clone(), second], Duration::from_secs(5));
        let asked = Instant::now();
        let answer = status(&channel, Duration::from_millis(300)).await;
        assert_eq!(answer.expect("the new leader answers"), 2);
        assert_eq!(channel.current(), first);
        assert_eq!(
            hung_calls.load(Ordering::SeqCst),
            1,
            "the hung leader is not called again on its followers' word"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
    }
}
