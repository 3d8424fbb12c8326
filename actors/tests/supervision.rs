//! A partition pipeline under failing stages: every record still ends up exactly once in
//! the sink or the dead letter (or at least once, after a generation restart).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use mirador_actors::{
    link, CheckpointStore, CheckpointTracker, DeadLetter, ExitStatus, Generation,
    GenerationFactory, Origin, Output, PipelineArgs, PipelineHandle, Position, ReasonCode,
    RestartPolicy, Source, SourceBatch, SourceRunner, Stage, StageError, StageRunner, StageStats,
};

const BATCH: usize = 10;

/// Ids that reached the sink (no reason) or the dead letter (with its reason).
type Seen = Arc<Mutex<Vec<(u64, Option<ReasonCode>)>>>;

struct VecSource {
    next: u64,
    total: u64,
}

impl Source for VecSource {
    type Out = Origin;
    fn name(&self) -> &'static str {
        "source"
    }
    async fn next_batch(&mut self) -> Result<Option<SourceBatch<Origin>>, StageError> {
        if self.next >= self.total {
            return Ok(None);
        }
        let end = (self.next + BATCH as u64).min(self.total);
        let items = (self.next..end)
            .map(|id| Origin {
                ack: 0,
                position: pos(id),
                payload: Bytes::from(id.to_string()),
                read_at: Instant::now(),
            })
            .collect();
        self.next = end;
        Ok(Some(SourceBatch {
            items,
            end: pos(end),
        }))
    }
}

fn pos(offset: u64) -> Position {
    Position {
        partition: 0,
        offset,
    }
}

fn id_of(origin: &Origin) -> u64 {
    std::str::from_utf8(&origin.payload)
        .unwrap()
        .parse()
        .unwrap()
}

/// Fails on the record `poison` while `failures_left` is positive, by panicking or by
/// returning an error.
struct FlakyStage {
    poison: u64,
    failures_left: Arc<AtomicU32>,
    fault: Fault,
}

#[derive(Clone, Copy)]
enum Fault {
    Panic,
    Error,
    Unavailable,
}

impl Stage for FlakyStage {
    type In = Origin;
    type Out = Origin;
    fn name(&self) -> &'static str {
        "flaky"
    }
    async fn handle(
        &mut self,
        batch: &[Origin],
        out: &mut Output<Origin>,
    ) -> Result<(), StageError> {
        for origin in batch {
            if id_of(origin) == self.poison
                && self
                    .failures_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return match self.fault {
                    Fault::Panic => panic!("flaky stage panics on {}", self.poison),
                    Fault::Error => Err(StageError::internal("flaky stage fails")),
                    Fault::Unavailable => Err(StageError::Unavailable {
                        service: "test service",
                        message: "down".into(),
                    }),
                };
            }
            out.push(origin.clone());
        }
        Ok(())
    }
}

struct Collect<T> {
    seen: Seen,
    tracker: Arc<CheckpointTracker>,
    reason: fn(&T) -> Option<ReasonCode>,
    origin: fn(&T) -> &Origin,
}

impl<T: mirador_actors::Traced + Send + Sync + 'static> Stage for Collect<T> {
    type In = T;
    type Out = ();
    fn name(&self) -> &'static str {
        "collect"
    }
    async fn handle(&mut self, batch: &[T], _out: &mut Output<()>) -> Result<(), StageError> {
        let mut seen = self.seen.lock().unwrap();
        for record in batch {
            seen.push((id_of((self.origin)(record)), (self.reason)(record)));
        }
        self.tracker.ack(batch.iter().map(|r| (self.origin)(r).ack));
        Ok(())
    }
}

#[derive(Default)]
struct MemoryStore(Mutex<Option<Position>>);

impl CheckpointStore for MemoryStore {
    fn load(&self, _partition: u32) -> std::io::Result<Option<Position>> {
        Ok(*self.0.lock().unwrap())
    }
    fn save(&self, position: Position) -> std::io::Result<()> {
        *self.0.lock().unwrap() = Some(position);
        Ok(())
    }
}

struct Fixture {
    total: u64,
    poison: u64,
    failures: Arc<AtomicU32>,
    fault: Fault,
    max_attempts: u32,
    seen: Seen,
    stats: Vec<Arc<StageStats>>,
}

impl GenerationFactory for Fixture {
    fn build(
        &self,
        tracker: Arc<CheckpointTracker>,
    ) -> BoxFuture<'_, Result<Generation, StageError>> {
        Box::pin(async move {
            let next = tracker.committed().map_or(0, |p| p.offset);
            let (source_tx, source_rx) = link(2);
            let (flaky_tx, flaky_rx) = link(2);
            let (dead_tx, dead_rx) = link::<DeadLetter>(2);
            let source = SourceRunner::new(
                VecSource {
                    next,
                    total: self.total,
                },
                source_tx,
                self.stats[0].clone(),
                tracker.clone(),
            );
            let (poison, failures, fault) = (self.poison, self.failures.clone(), self.fault);
            let flaky = StageRunner::new(
                move || {
                    Ok(FlakyStage {
                        poison,
                        failures_left: failures.clone(),
                        fault,
                    })
                },
                source_rx,
                Some(flaky_tx),
                Some(dead_tx),
                self.stats[1].clone(),
                self.max_attempts,
            )?;
            let (seen, t) = (self.seen.clone(), tracker.clone());
            let sink = StageRunner::new(
                move || {
                    Ok(Collect::<Origin> {
                        seen: seen.clone(),
                        tracker: t.clone(),
                        reason: |_| None,
                        origin: |o| o,
                    })
                },
                flaky_rx,
                None,
                None,
                self.stats[2].clone(),
                self.max_attempts,
            )?;
            let (seen, t) = (self.seen.clone(), tracker.clone());
            let dead = StageRunner::new(
                move || {
                    Ok(Collect::<DeadLetter> {
                        seen: seen.clone(),
                        tracker: t.clone(),
                        reason: |d| Some(d.reason),
                        origin: |d| &d.origin,
                    })
                },
                dead_rx,
                None,
                None,
                self.stats[3].clone(),
                self.max_attempts,
            )?;
            Ok(Generation {
                slots: vec![
                    Box::new(source),
                    Box::new(flaky),
                    Box::new(sink),
                    Box::new(dead),
                ],
            })
        })
    }
}

async fn run(
    fixture: Fixture,
    policy: RestartPolicy,
) -> (
    ExitStatus,
    Vec<(u64, Option<ReasonCode>)>,
    mirador_actors::PipelineSnapshot,
) {
    let seen = fixture.seen.clone();
    let handle = PipelineHandle::spawn(PipelineArgs {
        name: "test".into(),
        partition: 0,
        factory: Arc::new(fixture),
        store: Arc::new(MemoryStore::default()),
        policy,
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !handle.is_finished() {
        assert!(
            Instant::now() < deadline,
            "pipeline did not finish: {:?}",
            handle.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let snapshot = handle.snapshot();
    let exit = handle.wait().await;
    let seen = seen.lock().unwrap().clone();
    (exit, seen, snapshot)
}

fn fixture(poison: u64, failures: u32, fault: Fault, max_attempts: u32) -> Fixture {
    Fixture {
        total: 500,
        poison,
        failures: Arc::new(AtomicU32::new(failures)),
        fault,
        max_attempts,
        seen: Arc::default(),
        stats: (0..4).map(|_| Arc::default()).collect(),
    }
}

fn fast_policy() -> RestartPolicy {
    RestartPolicy {
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
        checkpoint_interval: Duration::from_millis(5),
        ..RestartPolicy::default()
    }
}

fn counts(seen: &[(u64, Option<ReasonCode>)]) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for (id, _) in seen {
        *counts.entry(*id).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_stage_that_panics_once_is_restarted_and_loses_nothing() {
    let (exit, seen, snapshot) = run(fixture(123, 1, Fault::Panic, 3), fast_policy()).await;
    assert_eq!(exit, ExitStatus::Success);
    let counts = counts(&seen);
    assert_eq!(counts.len(), 500, "every id arrives");
    assert!(counts.values().all(|n| *n == 1), "no id arrives twice");
    assert!(
        seen.iter().all(|(_, reason)| reason.is_none()),
        "nothing dead-lettered"
    );
    assert_eq!(snapshot.stages[1].restarts, 1);
    assert_eq!(snapshot.generation, 1);
    assert_eq!(snapshot.committed, Some(pos(500)));
}

#[tokio::test]
async fn a_stage_that_returns_an_error_is_restarted_and_loses_nothing() {
    let (exit, seen, snapshot) = run(fixture(77, 2, Fault::Error, 3), fast_policy()).await;
    assert_eq!(exit, ExitStatus::Success);
    let counts = counts(&seen);
    assert_eq!(counts.len(), 500);
    assert!(counts.values().all(|n| *n == 1));
    assert_eq!(snapshot.stages[1].restarts, 2);
}

#[tokio::test]
async fn a_batch_that_always_fails_goes_to_the_dead_letter_and_the_rest_flows() {
    let (exit, seen, snapshot) = run(fixture(250, u32::MAX, Fault::Panic, 3), fast_policy()).await;
    assert_eq!(exit, ExitStatus::Success);
    let counts = counts(&seen);
    assert_eq!(counts.len(), 500);
    assert!(
        counts.values().all(|n| *n == 1),
        "exactly once in sink or dead letter"
    );
    let dead: Vec<u64> = seen
        .iter()
        .filter(|(_, reason)| *reason == Some(ReasonCode::StageFailed))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        dead.len(),
        BATCH,
        "the failing batch, and only it, is dead-lettered"
    );
    assert!(dead.contains(&250));
    assert_eq!(snapshot.stages[1].restarts, 3);
}

#[tokio::test]
async fn past_the_restart_budget_the_generation_restarts_from_its_checkpoint() {
    let policy = RestartPolicy {
        stage_restarts: 1,
        ..fast_policy()
    };
    let (exit, seen, snapshot) = run(fixture(300, 3, Fault::Panic, 10), policy).await;
    assert_eq!(exit, ExitStatus::Success);
    let counts = counts(&seen);
    assert_eq!(counts.len(), 500, "every id arrives at least once");
    assert!(snapshot.generation_restarts >= 1, "{snapshot:?}");
    assert!(seen.iter().all(|(_, reason)| reason.is_none()));
    // Replays start at the checkpoint, which never passes an unacknowledged record.
    let duplicated = counts.values().filter(|n| **n > 1).count();
    assert!(
        duplicated <= 300,
        "duplicates only after the checkpoint: {duplicated}"
    );
}

#[tokio::test]
async fn past_every_budget_the_pipeline_fails_and_says_why() {
    let policy = RestartPolicy {
        stage_restarts: 0,
        generation_restarts: 1,
        ..fast_policy()
    };
    let (exit, _, _) = run(fixture(10, u32::MAX, Fault::Panic, 100), policy).await;
    match exit {
        ExitStatus::Failed(reason) => assert!(reason.contains("flaky"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_service_that_is_down_is_waited_for_without_restarts() {
    let (exit, seen, snapshot) = run(fixture(42, 4, Fault::Unavailable, 3), fast_policy()).await;
    assert_eq!(exit, ExitStatus::Success);
    let counts = counts(&seen);
    assert_eq!(counts.len(), 500);
    assert!(counts.values().all(|n| *n == 1));
    assert!(
        seen.iter().all(|(_, reason)| reason.is_none()),
        "nothing dead-lettered"
    );
    assert_eq!(snapshot.stages[1].restarts, 0);
    assert_eq!(
        snapshot.stages[1].retries, 4,
        "more tries than max_batch_attempts"
    );
}
