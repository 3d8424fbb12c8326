//! Shared by the tests that run the `mirador` binary and kill it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mirador_cluster_tests::spec::SpecYaml;
use serde_json::Value;

pub const MIRADOR: &str = env!("CARGO_BIN_EXE_mirador");

/// The binary under test for a region: this build's, or `MIRADOR_BIN` (to measure a
/// release build).
pub fn mirador() -> String {
    std::env::var("MIRADOR_BIN").unwrap_or_else(|_| MIRADOR.to_string())
}

/// Writes `dir/pipeline.yaml`: `source` (a YAML block indented by two spaces) through the
/// demo features and model into `dir/scored.jsonl` and `dir/dead.jsonl`, checkpointing
/// every 100 ms into `dir/checkpoints`.
pub fn write_spec(dir: &Path, name: &str, source: &str) -> PathBuf {
    let spec = dir.join("pipeline.yaml");
    let out = dir.display();
    std::fs::write(
        &spec,
        SpecYaml {
            name,
            source,
            sink: &format!("  file:\n    path: {out}/scored.jsonl"),
            dead_letter: &format!("  file:\n    path: {out}/dead.jsonl"),
            rest: &format!(
                "batching:\n  max_records: 256\ncheckpoint:\n  dir: {out}/checkpoints\n  interval_ms: 100\n"
            ),
            ..SpecYaml::default()
        }
        .yaml(),
    )
    .unwrap();
    spec
}

pub fn run(spec: &Path) -> Child {
    Command::new(MIRADOR)
        .args(["run", "--quiet", "--pipeline"])
        .arg(spec)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs `spec` and kills it with SIGKILL a little after `checkpointed` first holds.
pub fn run_and_kill(spec: &Path, checkpointed: impl Fn() -> bool) {
    let mut first = run(spec);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !checkpointed() {
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
}

/// The saved position of a partition.
pub fn checkpoint(dir: &Path, pipeline: &str, partition: u32) -> Option<u64> {
    let path = dir.join(format!("checkpoints/{pipeline}.p{partition}.json"));
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["offset"].as_u64()
}

/// The whole lines of a sink file: a line still being written (or cut by a kill) at its
/// end is left out; anything else must parse.
pub fn whole_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    whole
        .lines()
        .map(|l| serde_json::from_str(l).expect("only whole lines in a sink"))
        .collect()
}

/// (partition, offset) -> times written, over the sink and the dead letter.
pub fn written(dir: &Path) -> HashMap<(u64, u64), usize> {
    let mut counts = HashMap::new();
    for file in ["scored.jsonl", "dead.jsonl"] {
        for value in whole_lines(&dir.join(file)) {
            let key = (
                value["source"]["partition"].as_u64().unwrap(),
                value["source"]["offset"].as_u64().unwrap(),
            );
            *counts.entry(key).or_default() += 1;
        }
    }
    counts
}
