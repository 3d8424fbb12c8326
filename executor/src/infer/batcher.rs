//! One dynamic batcher per (model, device) on a node, shared by every partition.
//!
//! Partitions send requests (their batch's feature rows) over a bounded channel; a
//! dedicated thread gathers requests into one forward pass of at most `max_batch_rows`
//! rows. It runs a pass as soon as the batch is full, as soon as every partition has a
//! request waiting (nobody else can add to it), or when the oldest request has waited
//! `max_wait`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;

use futures::future::BoxFuture;

use super::model::{ModelError, Scorer, Scores, TorchModel};
use super::scoring::{Scoring, ScoringUnavailable};
use crate::spec::ModelSpec;
use mirador_proto::sync::Locked;

struct Request {
    rows: Vec<f32>,
    n: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Scores, ModelError>>,
}

#[derive(Debug, Default)]
pub struct BatcherStats {
    pub passes: AtomicU64,
    pub rows: AtomicU64,
    pub largest_pass: AtomicU64,
    pub forward_ns: AtomicU64,
    /// Longest time a request waited before its pass started.
    pub longest_wait_ns: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatcherSnapshot {
    pub passes: u64,
    pub rows: u64,
    pub largest_pass: u64,
    pub forward_ms: u64,
    pub longest_wait_us: u64,
}

impl BatcherStats {
    pub fn snapshot(&self) -> BatcherSnapshot {
        BatcherSnapshot {
            passes: self.passes.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            largest_pass: self.largest_pass.load(Ordering::Relaxed),
            forward_ms: self.forward_ns.load(Ordering::Relaxed) / 1_000_000,
            longest_wait_us: self.longest_wait_ns.load(Ordering::Relaxed) / 1000,
        }
    }
}

pub struct InferenceBatcher {
    tx: flume::Sender<Request>,
    clients: Arc<AtomicUsize>,
    stats: Arc<BatcherStats>,
    width: usize,
}

/// A partition's handle on a batcher. At most one request in flight per client.
pub struct BatcherClient {
    tx: flume::Sender<Request>,
    clients: Arc<AtomicUsize>,
    width: usize,
}

impl InferenceBatcher {
    /// Starts the batcher's thread. `threads` is libtorch's intra-op thread count.
    pub fn start(
        name: &str,
        scorer: impl Scorer,
        max_batch_rows: usize,
        max_wait: Duration,
        threads: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = flume::bounded::<Request>(256);
        let clients = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(BatcherStats::default());
        let width = scorer.input_width();
        let thread = BatchLoop {
            rx,
            scorer,
            clients: clients.clone(),
            stats: stats.clone(),
            max_rows: max_batch_rows.max(1),
            max_wait,
        };
        std::thread::Builder::new()
            .name(format!("infer-{name}"))
            .spawn(move || {
                tch::set_num_threads(threads as i32);
                let _no_grad = tch::no_grad_guard();
                thread.run()
            })?;
        Ok(InferenceBatcher {
            tx,
            clients,
            stats,
            width,
        })
    }

    pub fn client(&self) -> BatcherClient {
        self.clients.fetch_add(1, Ordering::SeqCst);
        BatcherClient {
            tx: self.tx.clone(),
            clients: self.clients.clone(),
            width: self.width,
        }
    }

    pub fn stats(&self) -> Arc<BatcherStats> {
        self.stats.clone()
    }

    pub fn input_width(&self) -> usize {
        self.width
    }
}

/// The local implementation of [`Scoring`]: requests go to the node's batcher thread.
/// The scorer is unavailable only when that thread is gone.
impl Scoring for BatcherClient {
    fn input_width(&self) -> usize {
        self.width
    }

    fn score(
        &self,
        rows: Vec<f32>,
        n: usize,
    ) -> BoxFuture<'_, Result<Result<Scores, ModelError>, ScoringUnavailable>> {
        Box::pin(async move {
            let gone = || ScoringUnavailable("the inference batcher has stopped".into());
            let (reply, answer) = oneshot::channel();
            let request = Request {
                rows,
                n,
                enqueued: Instant::now(),
                reply,
            };
            self.tx.send_async(request).await.map_err(|_| gone())?;
            answer.await.map_err(|_| gone())
        })
    }
}

impl Drop for BatcherClient {
    fn drop(&mut self) {
        self.clients.fetch_sub(1, Ordering::SeqCst);
    }
}

struct BatchLoop<S> {
    rx: flume::Receiver<Request>,
    scorer: S,
    clients: Arc<AtomicUsize>,
    stats: Arc<BatcherStats>,
    max_rows: usize,
    max_wait: Duration,
}

impl<S: Scorer> BatchLoop<S> {
    fn run(mut self) {
        let mut carry: Option<Request> = None;
        loop {
            let first = match carry.take() {
                Some(request) => request,
                None => match self.rx.recv() {
                    Ok(request) => request,
                    Err(_) => return,
                },
            };
            let deadline = first.enqueued + self.max_wait;
            let mut rows = first.n;
            let mut group = vec![first];
            while rows < self.max_rows && group.len() < self.clients.load(Ordering::SeqCst) {
                match self.rx.recv_deadline(deadline) {
                    Ok(request) if rows + request.n > self.max_rows => {
                        carry = Some(request);
                        break;
                    }
                    Ok(request) => {
                        rows += request.n;
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.pass(group);
        }
    }

    fn pass(&mut self, group: Vec<Request>) {
        let started = Instant::now();
        let waited = group
            .iter()
            .map(|r| started.saturating_duration_since(r.enqueued))
            .max()
            .unwrap_or_default();
        self.stats
            .longest_wait_ns
            .fetch_max(waited.as_nanos() as u64, Ordering::Relaxed);
        let total: usize = group.iter().map(|r| r.n).sum();
        let result = if group.len() == 1 {
            self.score_chunked(&group[0].rows, group[0].n)
        } else {
            let rows: Vec<f32> = group.iter().flat_map(|r| r.rows.iter().copied()).collect();
            self.score_chunked(&rows, total)
        };
        self.stats
            .forward_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.stats.rows.fetch_add(total as u64, Ordering::Relaxed);
        match result {
            Ok(scores) => {
                let mut at = 0;
                for request in group {
                    let len = request.n * scores.outputs;
                    let values = scores.values[at..at + len].to_vec();
                    at += len;
                    let _ = request.reply.send(Ok(Scores {
                        values,
                        outputs: scores.outputs,
                    }));
                }
            }
            Err(error) => {
                for request in group {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// One forward pass per `max_rows` rows: a request larger than the maximum is split.
    fn score_chunked(&mut self, rows: &[f32], n: usize) -> Result<Scores, ModelError> {
        let width = self.scorer.input_width();
        let mut values = Vec::new();
        let mut outputs = 1;
        let mut done = 0;
        while done < n || n == 0 {
            let take = (n - done).min(self.max_rows);
            let scores = self
                .scorer
                .score(&rows[done * width..(done + take) * width], take)?;
            self.stats.passes.fetch_add(1, Ordering::Relaxed);
            self.stats
                .largest_pass
                .fetch_max(take as u64, Ordering::Relaxed);
            if scores.values.len() != take * scores.outputs {
                return Err(ModelError(format!(
                    "model returned {} scores for {take} rows",
                    scores.values.len()
                )));
            }
            outputs = scores.outputs;
            values.extend_from_slice(&scores.values);
            done += take;
            if n == 0 {
                break;
            }
        }
        Ok(Scores { values, outputs })
    }
}

/// A model file and version on a device, with its batching settings.
type BatcherKey = (PathBuf, String, String, usize, u64, usize);

/// The batchers of a node, one per (model file, version, device) and batching settings,
/// shared by every partition of every pipeline.
#[derive(Default)]
pub struct InferencePool {
    /// By key, with the model's name.
    batchers: Mutex<HashMap<BatcherKey, (String, Arc<InferenceBatcher>)>>,
}

impl InferencePool {
    pub fn batcher(
        &self,
        spec: &ModelSpec,
        width: usize,
    ) -> Result<Arc<InferenceBatcher>, ModelError> {
        let mut batchers = self.batchers.locked();
        let key = (
            spec.path.clone(),
            spec.version.clone(),
            format!("{:?}", spec.device),
            spec.max_batch_rows,
            spec.max_wait_ms,
            spec.threads,
        );
        if let Some((_, batcher)) = batchers.get(&key) {
            if batcher.input_width() != width {
                return Err(ModelError(format!(
                    "model {} v{} is already running with {} features per row, not {width}",
                    spec.name,
                    spec.version,
                    batcher.input_width()
                )));
            }
            return Ok(batcher.clone());
        }
        let model = TorchModel::load(&spec.path, spec.device, width)?;
        tracing::info!(model = %spec.name, version = %spec.version, device = ?model.device(), "model loaded");
        let batcher = InferenceBatcher::start(
            &spec.name,
            model,
            spec.max_batch_rows,
            Duration::from_millis(spec.max_wait_ms),
            spec.threads,
        )
        .map_err(|e| ModelError(format!("cannot start the inference thread: {e}")))?;
        let batcher = Arc::new(batcher);
        batchers.insert(key, (spec.name.clone(), batcher.clone()));
        Ok(batcher)
    }

    /// Each model's batcher as the metrics show it: (name, version, device, counters).
    pub fn models(&self) -> Vec<(String, String, String, BatcherSnapshot)> {
        self.batchers
            .locked()
            .iter()
            .map(|((_, version, device, ..), (name, batcher))| {
                (
                    name.clone(),
                    version.clone(),
                    device.to_lowercase(),
                    batcher.stats().snapshot(),
                )
            })
            .collect()
    }
}
