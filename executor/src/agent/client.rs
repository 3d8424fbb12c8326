//! What the executor agent asks of its region's coordinators, as one trait with two
//! implementations: over gRPC to whichever coordinator leads ([`GrpcCoordinators`]), and
//! in process to a service object ([`InProcessCoordinators`]), so that the agent can be
//! tested without a socket.
//!
//! Fencing is a typed error: [`CoordinatorError::Fenced`] means the coordinators refused
//! this incarnation or epoch for good, and the caller must stop acting on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use mirador_proto::coordinator::executor_service_client::ExecutorServiceClient;
use mirador_proto::coordinator::executor_service_server::ExecutorService;
use mirador_proto::coordinator::{
    AssignmentSet, CommitRequest, HeartbeatRequest, LeaveRequest, RegisterRequest,
    RegisterResponse, ReleaseRequest, WatchRequest,
};
use mirador_proto::leader::LeaderChannel;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// How long one heartbeat attempt may take before the next coordinator is asked.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(400);

/// Why a call to the coordinators did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// Refused for good: the incarnation expired, or the partition has another owner or
    /// epoch. Retrying cannot help.
    #[error("fenced: {0}")]
    Fenced(String),
    /// Not now: no coordinator answered, or none leads yet. Retrying may help.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request itself was refused (a bad field): our bug or a bad config.
    #[error("refused: {0}")]
    Refused(String),
}

impl CoordinatorError {
    pub fn is_fenced(&self) -> bool {
        matches!(self, CoordinatorError::Fenced(_))
    }
}

impl From<Status> for CoordinatorError {
    fn from(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::FailedPrecondition => CoordinatorError::Fenced(message),
            Code::InvalidArgument | Code::NotFound | Code::AlreadyExists => {
                CoordinatorError::Refused(message)
            }
            _ => CoordinatorError::Unavailable(format!("{}: {message}", status.code())),
        }
    }
}

/// The assignment sets of one executor, newest last; ends when the coordinator that sent
/// them no longer leads or the incarnation expired.
pub type AssignmentStream =
    Pin<Box<dyn Stream<Item = Result<AssignmentSet, CoordinatorError>> + Send>>;

fn assignment_stream(
    stream: impl Stream<Item = Result<AssignmentSet, Status>> + Send + 'static,
) -> AssignmentStream {
    Box::pin(stream.map(|item| item.map_err(CoordinatorError::from)))
}

/// Everything the executor agent asks of the coordinators.
pub trait CoordinatorClient: Send + Sync + 'static {
    fn register(
        &self,
        request: RegisterRequest,
    ) -> BoxFuture<'_, Result<RegisterResponse, CoordinatorError>>;

    fn heartbeat(&self, request: HeartbeatRequest) -> BoxFuture<'_, Result<(), CoordinatorError>>;

    fn watch_assignments(
        &self,
        request: WatchRequest,
    ) -> BoxFuture<'_, Result<AssignmentStream, CoordinatorError>>;

    fn commit_checkpoint(
        &self,
        request: CommitRequest,
    ) -> BoxFuture<'_, Result<(), CoordinatorError>>;

    fn release(&self, request: ReleaseRequest) -> BoxFuture<'_, Result<(), CoordinatorError>>;

    /// This executor shuts down: the coordinators give it nothing new.
    fn leave(&self, request: LeaveRequest) -> BoxFuture<'_, Result<(), CoordinatorError>>;

    /// Where calls go now, for logs.
    fn current(&self) -> String;
}

/// The coordinators over gRPC: each call goes to the leader, following redirects.
pub struct GrpcCoordinators {
    channel: LeaderChannel,
}

impl GrpcCoordinators {
    /// `addresses`: `host:port` of the region's coordinators; a call keeps trying them for
    /// `patience` before it gives up.
    pub fn new(addresses: Vec<String>, patience: Duration) -> Self {
        GrpcCoordinators {
            channel: LeaderChannel::new(addresses, patience),
        }
    }
}

impl GrpcCoordinators {
    /// One unary call at the leader, following redirects.
    async fn unary<Req, T, F, Fut>(&self, request: Req, call: F) -> Result<T, CoordinatorError>
    where
        Req: Clone,
        F: Fn(ExecutorServiceClient<Channel>, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let response = self
            .channel
            .call(|channel| call(ExecutorServiceClient::new(channel), request.clone()))
            .await?;
        Ok(response.into_inner())
    }
}

impl CoordinatorClient for GrpcCoordinators {
    fn register(
        &self,
        request: RegisterRequest,
    ) -> BoxFuture<'_, Result<RegisterResponse, CoordinatorError>> {
        Box::pin(self.unary(request, |mut c, r| async move { c.register(r).await }))
    }

    fn heartbeat(&self, request: HeartbeatRequest) -> BoxFuture<'_, Result<(), CoordinatorError>> {
        Box::pin(async move {
            self.unary(request, |mut c, r| async move {
                // A heartbeat is answered from memory: one that takes longer went to a
                // coordinator that hangs, and the next one may answer within the lease.
                let mut r = Request::new(r);
                r.set_timeout(HEARTBEAT_TIMEOUT);
                c.heartbeat(r).await
            })
            .await
            .map(drop)
        })
    }

    fn watch_assignments(
        &self,
        request: WatchRequest,
    ) -> BoxFuture<'_, Result<AssignmentStream, CoordinatorError>> {
        Box::pin(async move {
            let stream = self
                .unary(
                    request,
                    |mut c, r| async move { c.watch_assignments(r).await },
                )
                .await?;
            Ok(assignment_stream(stream))
        })
    }

    fn commit_checkpoint(
        &self,
        request: CommitRequest,
    ) -> BoxFuture<'_, Result<(), CoordinatorError>> {
        Box::pin(async move {
            self.unary(
                request,
                |mut c, r| async move { c.commit_checkpoint(r).await },
            )
            .await
            .map(drop)
        })
    }

    fn release(&self, request: ReleaseRequest) -> BoxFuture<'_, Result<(), CoordinatorError>> {
        Box::pin(async move {
            self.unary(request, |mut c, r| async move { c.release(r).await })
                .await
                .map(drop)
        })
    }

    fn leave(&self, request: LeaveRequest) -> BoxFuture<'_, Result<(), CoordinatorError>> {
        Box::pin(async move {
            self.unary(request, |mut c, r| async move { c.leave(r).await })
                .await
                .map(drop)
        })
    }

    fn current(&self) -> String {
        self.channel.current()
    }
}

/// The coordinators as a service object in this process: the coordinator's own
/// `ExecutorService`, called without a socket.
pub struct InProcessCoordinators<S> {
    service: Arc<S>,
}

impl<S> InProcessCoordinators<S> {
    pub fn new(service: Arc<S>) -> Self {
        InProcessCoordinators { service }
    }
}

impl<S: ExecutorService> CoordinatorClient for InProcessCoordinators<S> {
    fn register(
        &self,
        request: RegisterRequest,
    ) -> BoxFuture<'_, Result<RegisterResponse, CoordinatorError>> {
        Box::pin(async move {
            Ok(self
                .service
                .register(Request::new(request))
                .await?
                .into_inner())
        })
    }

    fn heartbeat(&self, request: HeartbeatRequest) -> BoxFuture<'_, Result<(), CoordinatorError>> {
        Box::pin(async move {
            self.service.heartbeat(Request::new(request)).await?;
            Ok(())
        })
    }

    fn watch_assignments(
        &self,
        request: WatchRequest,
    ) -> BoxFuture<'_, Result<AssignmentStream, CoordinatorError>> {
        Box::pin(async move {
            let stream = self
                .service
                .watch_assignments(Request::new(request))
                .await?
                .into_inner();
            Ok(assignment_stream(stream))
        })
    }

    fn commit_checkpoint(
        &self,
        request: CommitRequest,
    ) -> BoxFuture<'_, Result<(), CoordinatorError>> {
        Box::pin(async move {
            self.service
                .commit_checkpoint(Request::new(request))
                .await?;
            Ok(())
        })
    }

    fn release(&self, request: ReleaseRequest) -> BoxFuture<'_, Result<(), CoordinatorError>> {
        Box::pin(async move {
            self.service.release(Request::new(request)).await?;
            Ok(())
        })
    }

    fn leave(&self, request: LeaveRequest) -> BoxFuture<'_, Result<(), CoordinatorError>> {
        Box::pin(async move {
            self.service.leave(Request::new(request)).await?;
            Ok(())
        })
    }

    fn current(&self) -> String {
        "in process".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_precondition_is_fencing_and_nothing_else_is() {
        let fenced = CoordinatorError::from(Status::failed_precondition("epoch 3 is stale"));
        assert_eq!(fenced, CoordinatorError::Fenced("epoch 3 is stale".into()));
        assert!(fenced.is_fenced());
        for status in [
            Status::unavailable("not the leader"),
            Status::deadline_exceeded("slow"),
            Status::invalid_argument("slots: 0"),
        ] {
            assert!(!CoordinatorError::from(status).is_fenced());
        }
        assert!(matches!(
            CoordinatorError::from(Status::invalid_argument("slots: 0")),
            CoordinatorError::Refused(_)
        ));
    }
}
