//! One lane of a subscription: a streaming pull whose messages are acknowledged only once
//! they reached the sink or the dead letter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{ShutdownBehavior, ShutdownToken};
use mirador_actors::{Position, Source, SourceBatch, SourceFinisher, StageError};
use mirador_proto::sync::Locked;

use super::PubsubSourceSpec;
use crate::event::RawRecord;

/// How long a lane gathers messages into one batch once the first has come.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// How often a waiting lane acknowledges what became delivered.
const ACK_EVERY: Duration = Duration::from_millis(100);
/// How long a stopped lane waits for its last acknowledgements to be sent.
const FINAL_ACKS: Duration = Duration::from_secs(5);

type Delivery = Result<(Message, Handler), String>;

/// A lane. Pub/Sub has no offsets: a record's position is its number in the lane, and
/// the checkpoint is the acknowledgement of every message before it. Messages not
/// acknowledged when the lane goes away (a crash, a generation restart) are delivered
/// again by Pub/Sub.
pub struct PubsubSource {
    lane: u32,
    /// The stream's messages, forwarded by a task of their own: waiting on a channel can be
    /// given up at any time, waiting on the stream itself cannot without losing a message
    /// (it would only come back once its lease ran out).
    messages: tokio::sync::mpsc::Receiver<Delivery>,
    batch_records: usize,
    stop_after_idle: Option<Duration>,
    next: u64,
    acks: Arc<Acks>,
    last_message: Instant,
}

/// The batches in flight, shared with the lane's [`SourceFinisher`], which acknowledges
/// the last ones once the partition stopped and the source is gone.
struct Acks {
    /// Handlers of the batches in flight, with the position after each batch.
    unacked: Mutex<VecDeque<(u64, Vec<Handler>)>>,
    /// Ends the stream once its acknowledgements are sent: on shutdown it sends those
    /// given before, gives back (nacks) every other message it holds, and takes no more.
    shutdown: ShutdownToken,
    /// The task that owns the stream. It outlives the source, so that the stream still
    /// takes the last acknowledgements; it goes with the last holder of these `Acks`.
    forwarder: tokio::task::JoinHandle<()>,
}

impl Drop for Acks {
    fn drop(&mut self) {
        // The stream goes with its task: what it held unacknowledged is given back.
        self.forwarder.abort();
    }
}

impl Acks {
    /// Acknowledges the batches `committed` has passed.
    fn up_to(&self, committed: Option<Position>) {
        let committed = committed.map_or(0, |p| p.offset);
        let mut unacked = self.unacked.locked();
        while unacked.front().is_some_and(|(end, _)| *end <= committed) {
            let (_, handlers) = unacked.pop_front().expect("checked");
            handlers.into_iter().for_each(Handler::ack);
        }
    }

    fn is_empty(&self) -> bool {
        self.unacked.locked().is_empty()
    }
}

/// What a stopped lane still does: see [`Acks`].
struct LaneFinisher(Arc<Acks>);

impl SourceFinisher for LaneFinisher {
    fn finish(&self, committed: Option<Position>) -> BoxFuture<'_, ()> {
        let acks = &self.0;
        // Run again, it finds nothing left to acknowledge and the shutdown done.
        Box::pin(async move {
            acks.up_to(committed);
            // What was read past the checkpoint is given back at once (a dropped handler
            // is a nack), not left to its lease.
            acks.unacked.locked().clear();
            if tokio::time::timeout(FINAL_ACKS, acks.shutdown.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(
                    "pubsub: the last acknowledgements were not confirmed in time; \
                     their messages may be delivered again"
                );
            }
            acks.forwarder.abort();
        })
    }
}

impl PubsubSource {
    pub async fn start(
        spec: &PubsubSourceSpec,
        lane: u32,
        batch_records: usize,
        resume: Option<Position>,
    ) -> Result<Self, StageError> {
        if spec.per_region() {
            return Err(StageError::Fatal(format!(
                "source.pubsub.subscription: {:?} names {}: only an executor of a region \
                 (--region) reads it",
                spec.subscription,
                mirador_spec::pubsub::REGION_PLACEHOLDER
            )));
        }
        let connection = super::connection(spec.endpoint.as_ref());
        let mut builder = Subscriber::builder();
        if let Some(endpoint) = connection.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(credentials) = connection.credentials {
            builder = builder.with_credentials(credentials);
        }
        let client = builder
            .build()
            .await
            .map_err(|e| StageError::Fatal(format!("source.pubsub: {e}")))?;
        let mut stream = client
            .subscribe(spec.subscription_path())
            .set_max_outstanding_messages(spec.max_outstanding_messages)
            .set_max_lease_extension(std::time::Duration::from_secs(spec.lease_extension_secs))
            .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
            .build();
        let shutdown = stream.shutdown_token();
        // Bounded by a batch: the stream's own flow control bounds the rest.
        let (tx, messages) = tokio::sync::mpsc::channel(batch_records.max(1));
        let forwarder = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                if tx.send(item.map_err(|e| e.to_string())).await.is_err() {
                    break;
                }
            }
            // The source is gone, or the stream ended (the source then sees its end). The
            // stream stays, to send the acknowledgements still to come, until the finisher
            // or the last holder of the `Acks` ends this task.
            drop(tx);
            std::future::pending::<()>().await;
            drop(stream);
        });
        let acks = Arc::new(Acks {
            unacked: Mutex::new(VecDeque::new()),
            shutdown,
            forwarder,
        });
        Ok(PubsubSource {
            lane,
            messages,
            batch_records,
            stop_after_idle: spec.stop_after_idle_ms.map(Duration::from_millis),
            next: resume.map_or(0, |p| p.offset),
            acks,
            last_message: Instant::now(),
        })
    }

    fn position(&self, offset: u64) -> Position {
        Position {
            partition: self.lane,
            offset,
        }
    }
}

impl Source for PubsubSource {
    type Out = RawRecord;

    fn name(&self) -> &'static str {
        "source"
    }

    /// Acknowledges the batches the checkpoint has passed.
    fn on_checkpoint(&mut self, committed: Option<Position>) {
        self.acks.up_to(committed);
    }

    fn finisher(&mut self) -> Option<Box<dyn SourceFinisher>> {
        Some(Box::new(LaneFinisher(self.acks.clone())))
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch<RawRecord>>, StageError> {
        // Wait for a first message; without one, an empty batch after ACK_EVERY brings the
        // checkpoint again, to acknowledge what was delivered meanwhile.
        let first = match tokio::time::timeout(ACK_EVERY, self.messages.recv()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => {
                return Err(StageError::Unavailable {
                    service: "pubsub",
                    message: error,
                })
            }
            Ok(None) => return Err(StageError::internal("the pubsub stream closed")),
            Err(_) => {
                let idle = self.last_message.elapsed();
                if self
                    .stop_after_idle
                    .is_some_and(|limit| idle >= limit && self.acks.is_empty())
                {
                    return Ok(None);
                }
                return Ok(Some(SourceBatch {
                    items: Vec::new(),
                    end: self.position(self.next),
                }));
            }
        };
        let mut messages = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while messages.len() < self.batch_records {
            match tokio::time::timeout_at(deadline, self.messages.recv()).await {
                Ok(Some(Ok(message))) => messages.push(message),
                _ => break,
            }
        }
        self.last_message = Instant::now();
        let start = self.next;
        let end = start + messages.len() as u64;
        self.next = end;
        let read_at = Instant::now();
        let mut handlers = Vec::with_capacity(messages.len());
        let mut items = Vec::with_capacity(messages.len());
        for (i, (message, handler)) in messages.into_iter().enumerate() {
            handlers.push(handler);
            items.push(RawRecord::read(
                self.lane,
                start + i as u64,
                message.data,
                read_at,
            ));
        }
        self.acks.unacked.locked().push_back((end, handlers));
        Ok(Some(SourceBatch {
            items,
            end: self.position(end),
        }))
    }
}
