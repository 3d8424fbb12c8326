//! `kill -9` of a running `mirador run`, then running it again: every input record ends in
//! the sink or the dead letter, and only records after the last checkpoint are written
//! twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const MIRADOR: &str = env!("CARGO_BIN_EXE_mirador");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Byte offsets of the records of a JSON-lines file, as the file source numbers them.
fn line_offsets(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut offsets = Vec::new();
    let mut start = 0;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if !line.iter().all(u8::is_ascii_whitespace) {
            offsets.push(start as u64);
        }
        start += line.len();
    }
    offsets
}

fn written_offsets(dir: &Path) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for file in ["scored.jsonl", "dead.jsonl"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        for line in text.lines() {
            let value: Value = serde_json::from_str(line).expect("only whole lines in a sink");
            *counts
                .entry(value["source"]["offset"].as_u64().unwrap())
                .or_default() += 1;
        }
    }
    counts
}

fn checkpoint(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(dir.join("checkpoints/killed.p0.json")).ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["offset"].as_u64()
}

#[test]
fn kill_9_then_restart_loses_nothing_and_duplicates_only_past_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let input = dir.join("events.jsonl");
    let generated = Command::new(MIRADOR)
        .args(["generate", "--events", "150000", "--poison-ratio", "0.01"])
        .stdout(std::fs::File::create(&input).unwrap())
        .status()
        .unwrap();
    assert!(generated.success());
    let spec = dir.join("pipeline.yaml");
    std::fs::write(
        &spec,
        format!(
            r#"
name: killed
source:
  file:
    path: {input}
enrichment:
  table:
    path: {features}
  features: [recency_days, frequency_30d, monetary_90d, engagement_score, email_opt_in, loyalty_tier, churn_risk]
model:
  name: propensity
  version: "1"
  path: {model}
sink:
  file:
    path: {out}/scored.jsonl
dead_letter:
  file:
    path: {out}/dead.jsonl
batching:
  max_records: 256
checkpoint:
  dir: {out}/checkpoints
  interval_ms: 100
"#,
            input = input.display(),
            features = repo().join("examples/features.csv").display(),
            model = repo().join("models/propensity-v1.pt").display(),
            out = dir.display(),
        ),
    )
    .unwrap();
    let run = || {
        Command::new(MIRADOR)
            .args(["run", "--quiet", "--pipeline"])
            .arg(&spec)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let expected = line_offsets(&input);
    assert_eq!(expected.len(), 150_000);

    // First run: killed once a checkpoint has been written.
    let mut first = run();
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoint(dir).is_none_or(|offset| offset == 0) {
        assert!(Instant::now() < deadline, "no checkpoint was written");
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let resume = checkpoint(dir).unwrap();
    let before = written_offsets(dir);
    assert!(
        before.len() < expected.len(),
        "the kill came before the end ({} of {} written)",
        before.len(),
        expected.len()
    );
    assert!(
        before.keys().all(|o| before[o] == 1),
        "no duplicates before the crash"
    );

    // Second run: resumes at the checkpoint and goes to the end.
    let status = run().wait().unwrap();
    assert!(status.success());
    let after = written_offsets(dir);
    let missing: Vec<&u64> = expected.iter().filter(|o| !after.contains_key(o)).collect();
    assert!(
        missing.is_empty(),
        "{} records lost, first at offset {}",
        missing.len(),
        missing[0]
    );
    assert_eq!(after.len(), expected.len(), "nothing but input records");
    let duplicated: Vec<u64> = after
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(o, _)| *o)
        .collect();
    assert!(after.values().all(|n| *n <= 2));
    assert!(
        duplicated.iter().all(|o| *o >= resume),
        "a record before the checkpoint at {resume} was written twice"
    );
    let written_past_checkpoint = before.keys().filter(|o| **o >= resume).count();
    assert_eq!(
        duplicated.len(),
        written_past_checkpoint,
        "exactly the records written after the checkpoint are replayed"
    );
    eprintln!(
        "killed at checkpoint {resume}: {} of {} written before the kill, {} duplicates after restart",
        before.len(),
        expected.len(),
        duplicated.len()
    );
}
