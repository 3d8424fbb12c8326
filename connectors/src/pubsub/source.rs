//! One lane of a subscription: a streaming pull whose messages are acknowledged only once
//! they reached the sink or the dead letter.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use mirador_actors::{Position, Source, SourceBatch, StageError};

use super::PubsubSourceSpec;
use crate::event::RawRecord;

/// How long a lane gathers messages into one batch once the first has come.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// How often a waiting lane acknowledges what became delivered.
const ACK_EVERY: Duration = Duration::from_millis(100);

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
    forwarder: tokio::task::JoinHandle<()>,
    batch_records: usize,
    stop_after_idle: Option<Duration>,
    next: u64,
    /// Handlers of the batches in flight, with the position after each batch.
    unacked: VecDeque<(u64, Vec<Handler>)>,
    last_message: Instant,
}

impl PubsubSource {
    pub async fn start(
        spec: &PubsubSourceSpec,
        lane: u32,
        batch_records: usize,
        resume: Option<Position>,
    ) -> Result<Self, StageError> {
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
            .build();
        // Bounded by a batch: the stream's own flow control bounds the rest.
        let (tx, messages) = tokio::sync::mpsc::channel(batch_records.max(1));
        let forwarder = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                if tx.send(item.map_err(|e| e.to_string())).await.is_err() {
                    return;
                }
            }
        });
        Ok(PubsubSource {
            lane,
            messages,
            forwarder,
            batch_records,
            stop_after_idle: spec.stop_after_idle_ms.map(Duration::from_millis),
            next: resume.map_or(0, |p| p.offset),
            unacked: VecDeque::new(),
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
        let committed = committed.map_or(0, |p| p.offset);
        while self
            .unacked
            .front()
            .is_some_and(|(end, _)| *end <= committed)
        {
            let (_, handlers) = self.unacked.pop_front().expect("checked");
            handlers.into_iter().for_each(Handler::ack);
        }
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
                    .is_some_and(|limit| idle >= limit && self.unacked.is_empty())
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
        self.unacked.push_back((end, handlers));
        Ok(Some(SourceBatch {
            items,
            end: self.position(end),
        }))
    }
}

impl Drop for PubsubSource {
    fn drop(&mut self) {
        // The stream goes with its task; what it held unacknowledged is delivered again.
        self.forwarder.abort();
    }
}
