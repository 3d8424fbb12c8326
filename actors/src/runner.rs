//! The actors that run stages: one actor per stage, fed by its bounded input link.
//!
//! A stage actor sends itself `Next` after every batch; control messages (stop, kill)
//! are handled between batches. The input link, the batch being processed and the
//! outputs live in a shared slot that outlives the actor, so a fresh incarnation started
//! by the supervisor after a panic or an error picks up the very batch that failed.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use mirador_proto::retry::Backoff;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};

use crate::checkpoint::CheckpointTracker;
use crate::dead_letter::{DeadLetter, ReasonCode};
use crate::link::{LinkReceiver, LinkSender};
use crate::record::Position;
use crate::record::Traced;
use crate::stage::{Output, Source, SourceFinisher, Stage, StageError};
use crate::stats::StageStats;
use mirador_proto::sync::Locked;

/// Between attempts at a batch while an outside service is unavailable.
const UNAVAILABLE_RETRY: Backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(5));

/// One stage of a generation, as the supervisor sees it: something it can (re)spawn.
pub trait StageSlot: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn stats(&self) -> Arc<StageStats>;
    /// Spawns a fresh incarnation linked to `supervisor`.
    fn spawn(&self, supervisor: ActorCell) -> BoxFuture<'_, Result<ActorCell, SpawnErr>>;
    /// Drops the stage's outputs, so that the stages after it see the end of their input
    /// once the current incarnation is gone.
    fn close_outputs(&self);
    /// A source cannot be restarted alone: its position is only known at a checkpoint.
    fn is_source(&self) -> bool;
    /// The last step after a stop, once every stage is gone: see [`Source::finisher`].
    fn finish(&self, committed: Option<Position>) -> BoxFuture<'_, ()> {
        let _ = committed;
        Box::pin(async {})
    }
}

/// The message a stage actor sends itself to process the next batch.
#[derive(Debug)]
pub enum StageMsg {
    Next,
}

struct Inflight<T> {
    batch: Vec<T>,
    attempts: u32,
}

struct StageShared<S: Stage> {
    name: &'static str,
    make: Box<dyn Fn() -> Result<S, StageError> + Send + Sync>,
    /// The instance built eagerly by `StageRunner::new`, used by the first incarnation.
    first: Mutex<Option<S>>,
    input: tokio::sync::Mutex<LinkReceiver<S::In>>,
    inflight: tokio::sync::Mutex<Option<Inflight<S::In>>>,
    output: Mutex<Option<LinkSender<S::Out>>>,
    dead: Mutex<Option<LinkSender<DeadLetter>>>,
    stats: Arc<StageStats>,
    max_attempts: u32,
}

/// Runs a [`Stage`] between an input link, an optional output link and the dead letter.
pub struct StageRunner<S: Stage> {
    shared: Arc<StageShared<S>>,
}

impl<S: Stage> StageRunner<S> {
    /// `make` builds the stage, now and again at every restart. A batch on which the stage
    /// fails `max_attempts` times goes to the dead letter as `stage_failed`.
    pub fn new(
        make: impl Fn() -> Result<S, StageError> + Send + Sync + 'static,
        input: LinkReceiver<S::In>,
        output: Option<LinkSender<S::Out>>,
        dead: Option<LinkSender<DeadLetter>>,
        stats: Arc<StageStats>,
        max_attempts: u32,
    ) -> Result<Self, StageError> {
        let first = make()?;
        stats.attach(Some(input.gauge()), output.as_ref().map(LinkSender::gauge));
        Ok(StageRunner {
            shared: Arc::new(StageShared {
                name: first.name(),
                make: Box::new(make),
                first: Mutex::new(Some(first)),
                input: tokio::sync::Mutex::new(input),
                inflight: tokio::sync::Mutex::new(None),
                output: Mutex::new(output),
                dead: Mutex::new(dead),
                stats,
                max_attempts: max_attempts.max(1),
            }),
        })
    }
}

impl<S: Stage> StageSlot for StageRunner<S> {
    fn name(&self) -> &'static str {
        self.shared.name
    }

    fn stats(&self) -> Arc<StageStats> {
        self.shared.stats.clone()
    }

    fn spawn(&self, supervisor: ActorCell) -> BoxFuture<'_, Result<ActorCell, SpawnErr>> {
        Box::pin(async move {
            let (actor, _) = Actor::spawn_linked(
                None,
                StageActor::<S>(PhantomData),
                self.shared.clone(),
                supervisor,
            )
            .await?;
            Ok(actor.get_cell())
        })
    }

    fn close_outputs(&self) {
        self.shared.output.locked().take();
        self.shared.dead.locked().take();
    }

    fn is_source(&self) -> bool {
        false
    }
}

struct StageActor<S>(PhantomData<fn() -> S>);

struct StageState<S: Stage> {
    stage: S,
    shared: Arc<StageShared<S>>,
}

impl<S: Stage> Actor for StageActor<S> {
    type Msg = StageMsg;
    type State = StageState<S>;
    type Arguments = Arc<StageShared<S>>;

    async fn pre_start(
        &self,
        myself: ActorRef<StageMsg>,
        shared: Arc<StageShared<S>>,
    ) -> Result<StageState<S>, ActorProcessingErr> {
        let first = shared.first.locked().take();
        let stage = match first {
            Some(stage) => stage,
            None => (shared.make)()?,
        };
        myself.send_message(StageMsg::Next)?;
        Ok(StageState { stage, shared })
    }

    async fn handle(
        &self,
        myself: ActorRef<StageMsg>,
        _message: StageMsg,
        state: &mut StageState<S>,
    ) -> Result<(), ActorProcessingErr> {
        if state.step().await? {
            myself.send_message(StageMsg::Next)?;
        } else {
            myself.stop(Some("end of input".to_string()));
        }
        Ok(())
    }
}

impl<S: Stage> StageState<S> {
    /// Processes one batch. Returns false once the input has ended.
    async fn step(&mut self) -> Result<bool, StageError> {
        let shared = &self.shared;
        let name = shared.name;
        let mut slot = shared.inflight.lock().await;
        if slot.is_none() {
            let next = shared.input.lock().await.recv().await;
            match next {
                Some(batch) => *slot = Some(Inflight { batch, attempts: 0 }),
                None => {
                    self.stage.finish().await?;
                    shared.output.locked().take();
                    shared.dead.locked().take();
                    return Ok(false);
                }
            }
        }
        let inflight = slot.as_mut().expect("filled above");
        inflight.attempts += 1;
        let started = Instant::now();
        let mut out = Output::with_capacity(inflight.batch.len());
        if inflight.attempts > shared.max_attempts {
            let message = format!(
                "stage {name} failed {} times on the batch holding this record",
                inflight.attempts - 1
            );
            for record in &inflight.batch {
                out.reject(name, record.origin(), ReasonCode::StageFailed, &message);
            }
        } else {
            let mut attempts = UNAVAILABLE_RETRY.attempts();
            loop {
                match self.stage.handle(&inflight.batch, &mut out).await {
                    Ok(()) => break,
                    // An outside service is down: wait and try the same batch again, as long
                    // as it takes. The pipeline slows down behind this stage; nothing is lost
                    // and the restart budget is kept for real faults.
                    Err(StageError::Unavailable { service, message }) => {
                        shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                        let backoff = attempts.next_delay();
                        tracing::warn!(stage = name, service, %message, ?backoff,
                            "service unavailable, retrying the batch");
                        out = Output::with_capacity(inflight.batch.len());
                        tokio::time::sleep(backoff).await;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        let busy_ns = started.elapsed().as_nanos() as u64;
        let (records_in, records_out, dead) =
            (inflight.batch.len(), out.items.len(), out.dead.len());
        let output = shared.output.locked().clone();
        if let Some(output) = output {
            output
                .send(out.items)
                .await
                .map_err(|_| StageError::internal(format!("{name}: output link closed")))?;
        }
        if !out.dead.is_empty() {
            let dead_link = shared.dead.locked().clone();
            let dead_link = dead_link.ok_or_else(|| {
                StageError::internal(format!("{name}: no dead letter to send rejects to"))
            })?;
            dead_link
                .send(out.dead)
                .await
                .map_err(|_| StageError::internal(format!("{name}: dead letter link closed")))?;
        }
        *slot = None;
        shared
            .stats
            .count_batch(records_in, records_out, dead, busy_ns);
        Ok(true)
    }
}

struct SourceShared<S: Source> {
    name: &'static str,
    source: Mutex<Option<S>>,
    output: Mutex<Option<LinkSender<S::Out>>>,
    stats: Arc<StageStats>,
    tracker: Arc<CheckpointTracker>,
    finisher: Option<Box<dyn SourceFinisher>>,
}

/// Runs a [`Source`]: gives it the partition's checkpoint, reads a batch, opens it in the
/// tracker and sends it down its output link, as fast as the link takes them.
pub struct SourceRunner<S: Source> {
    shared: Arc<SourceShared<S>>,
}

impl<S: Source> SourceRunner<S> {
    pub fn new(
        mut source: S,
        output: LinkSender<S::Out>,
        stats: Arc<StageStats>,
        tracker: Arc<CheckpointTracker>,
    ) -> Self {
        stats.attach(None, Some(output.gauge()));
        SourceRunner {
            shared: Arc::new(SourceShared {
                name: source.name(),
                finisher: source.finisher(),
                source: Mutex::new(Some(source)),
                output: Mutex::new(Some(output)),
                stats,
                tracker,
            }),
        }
    }
}

impl<S: Source> StageSlot for SourceRunner<S> {
    fn name(&self) -> &'static str {
        self.shared.name
    }

    fn stats(&self) -> Arc<StageStats> {
        self.shared.stats.clone()
    }

    fn spawn(&self, supervisor: ActorCell) -> BoxFuture<'_, Result<ActorCell, SpawnErr>> {
        Box::pin(async move {
            let (actor, _) = Actor::spawn_linked(
                None,
                SourceActor::<S>(PhantomData),
                self.shared.clone(),
                supervisor,
            )
            .await?;
            Ok(actor.get_cell())
        })
    }

    fn close_outputs(&self) {
        self.shared.output.locked().take();
    }

    fn is_source(&self) -> bool {
        true
    }

    fn finish(&self, committed: Option<Position>) -> BoxFuture<'_, ()> {
        match &self.shared.finisher {
            Some(finisher) => finisher.finish(committed),
            None => Box::pin(async {}),
        }
    }
}

struct SourceActor<S>(PhantomData<fn() -> S>);

struct SourceState<S: Source> {
    source: S,
    shared: Arc<SourceShared<S>>,
}

impl<S: Source> Actor for SourceActor<S> {
    type Msg = StageMsg;
    type State = SourceState<S>;
    type Arguments = Arc<SourceShared<S>>;

    async fn pre_start(
        &self,
        myself: ActorRef<StageMsg>,
        shared: Arc<SourceShared<S>>,
    ) -> Result<SourceState<S>, ActorProcessingErr> {
        let source = shared
            .source
            .locked()
            .take()
            .ok_or_else(|| StageError::internal("a source runs once per generation"))?;
        myself.send_message(StageMsg::Next)?;
        Ok(SourceState { source, shared })
    }

    async fn handle(
        &self,
        myself: ActorRef<StageMsg>,
        _message: StageMsg,
        state: &mut SourceState<S>,
    ) -> Result<(), ActorProcessingErr> {
        let started = Instant::now();
        state.source.on_checkpoint(state.shared.tracker.committed());
        match state.source.next_batch().await? {
            // Nothing came within the source's wait: ask again.
            Some(batch) if batch.items.is_empty() => {
                myself.send_message(StageMsg::Next)?;
            }
            Some(batch) => {
                let batch = batch.open(&state.shared.tracker);
                let count = batch.len();
                let busy_ns = started.elapsed().as_nanos() as u64;
                let output = state.shared.output.locked().clone();
                match output {
                    Some(output) => {
                        output.send(batch).await.map_err(|_| {
                            StageError::internal(format!(
                                "{}: output link closed",
                                state.shared.name
                            ))
                        })?;
                    }
                    // Stopped on request: whatever was read goes back to the source.
                    None => {
                        myself.stop(Some("stopped".to_string()));
                        return Ok(());
                    }
                }
                state.shared.stats.count_batch(count, count, 0, busy_ns);
                myself.send_message(StageMsg::Next)?;
            }
            None => {
                state.shared.output.locked().take();
                myself.stop(Some("end of input".to_string()));
            }
        }
        Ok(())
    }
}
