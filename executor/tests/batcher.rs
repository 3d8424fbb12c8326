//! The node's dynamic batcher: bounded passes, bounded waits, shared by partitions.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirador_executor::infer::{InferenceBatcher, ModelError, Scorer, Scores, Scoring, TorchModel};
use mirador_executor::spec::DeviceSpec;

/// Scores each row with the sum of its values and records the size of every pass.
struct SumScorer {
    width: usize,
    passes: Arc<Mutex<Vec<usize>>>,
}

impl Scorer for SumScorer {
    fn input_width(&self) -> usize {
        self.width
    }
    fn score(&mut self, rows: &[f32], n: usize) -> Result<Scores, ModelError> {
        self.passes.lock().unwrap().push(n);
        Ok(Scores {
            values: rows.chunks(self.width).map(|r| r.iter().sum()).collect(),
            outputs: 1,
        })
    }
}

fn rows(n: usize, width: usize, base: f32) -> Vec<f32> {
    (0..n * width).map(|i| base + (i / width) as f32).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pass_exceeds_the_maximum_and_every_row_gets_its_own_score() {
    let passes = Arc::new(Mutex::new(Vec::new()));
    let batcher = Arc::new(
        InferenceBatcher::start(
            "sum",
            SumScorer {
                width: 2,
                passes: passes.clone(),
            },
            100,
            Duration::from_millis(5),
            1,
        )
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for client in 0..8 {
        let batcher = batcher.clone();
        tasks.push(tokio::spawn(async move {
            let client_handle = batcher.client();
            for round in 0..20 {
                // Sizes from 1 to 250: some larger than the maximum pass.
                let n = 1 + (client * 37 + round * 11) % 250;
                let base = (client * 1000 + round) as f32;
                let scores = client_handle
                    .score(rows(n, 2, base), n)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(scores.values.len(), n);
                for (i, score) in scores.values.iter().enumerate() {
                    assert_eq!(
                        *score,
                        2.0 * (base + i as f32),
                        "client {client} round {round} row {i}"
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let passes = passes.lock().unwrap();
    assert!(
        passes.iter().all(|n| *n <= 100),
        "a pass exceeded the maximum: {passes:?}"
    );
    assert!(
        passes.iter().any(|n| *n > 50),
        "requests were gathered into larger passes"
    );
    assert_eq!(
        batcher.stats().snapshot().largest_pass,
        *passes.iter().max().unwrap() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_record_waits_no_longer_than_the_maximum_wait() {
    let max_wait = Duration::from_millis(40);
    let passes = Arc::new(Mutex::new(Vec::new()));
    let batcher = InferenceBatcher::start(
        "sum",
        SumScorer {
            width: 3,
            passes: passes.clone(),
        },
        1000,
        max_wait,
        1,
    )
    .unwrap();
    // Two partitions are registered; only one sends, so the pass waits for the other one
    // until the maximum wait, and no longer.
    let lone = batcher.client();
    let _idle = batcher.client();
    let mut longest_seen = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let scores = lone.score(vec![1.0, 2.0, 3.0], 1).await.unwrap().unwrap();
        let elapsed = started.elapsed();
        assert_eq!(scores.values, vec![6.0]);
        assert!(
            elapsed >= max_wait,
            "the pass waited for more requests: {elapsed:?}"
        );
        assert!(
            elapsed < max_wait + Duration::from_millis(250),
            "waited {elapsed:?}"
        );
        longest_seen = longest_seen.max(elapsed);
    }
    // The batcher's own figure is the wait it imposed: at least the maximum wait (the idle
    // partition never sent), and no more than what the caller saw around it.
    let longest = Duration::from_micros(batcher.stats().snapshot().longest_wait_us);
    assert!(
        longest >= max_wait && longest <= longest_seen,
        "longest wait {longest:?}, the caller saw at most {longest_seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_partition_is_waiting_the_pass_starts_at_once() {
    let batcher = InferenceBatcher::start(
        "sum",
        SumScorer {
            width: 1,
            passes: Arc::default(),
        },
        1000,
        Duration::from_secs(5),
        1,
    )
    .unwrap();
    let only = batcher.client();
    let started = Instant::now();
    only.score(vec![1.0], 1).await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a lone partition does not wait for nobody"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_model_scores_through_the_batcher() {
    let model = TorchModel::load(&common::demo_model(), DeviceSpec::Cpu, 16).unwrap();
    let batcher =
        InferenceBatcher::start("propensity", model, 256, Duration::from_millis(2), 1).unwrap();
    let client = batcher.client();
    let n = 1000;
    let scores = client.score(vec![0.5; n * 16], n).await.unwrap().unwrap();
    assert_eq!(scores.values.len(), n);
    assert!(scores.values.iter().all(|s| (0.0..=1.0).contains(s)));
    assert!(
        scores.values.windows(2).all(|w| w[0] == w[1]),
        "equal rows, equal scores"
    );
    assert_eq!(batcher.stats().snapshot().largest_pass, 256);
}
