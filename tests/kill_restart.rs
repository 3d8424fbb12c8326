//! `kill -9` of a running `mirador run`, then running it again: every input record ends in
//! the sink or the dead letter, and only records after the last checkpoint are written
//! twice.

mod common;

use std::path::Path;
use std::process::Command;

use common::{checkpoint, run, run_and_kill, write_spec, written, MIRADOR};

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
    let spec = write_spec(
        dir,
        "killed",
        &format!("  file:\n    path: {}", input.display()),
    );
    let checkpoint = || checkpoint(dir, "killed", 0);
    let written_offsets = || -> std::collections::HashMap<u64, usize> {
        written(dir)
            .into_iter()
            .map(|((_, offset), n)| (offset, n))
            .collect()
    };
    let expected = line_offsets(&input);
    assert_eq!(expected.len(), 150_000);

    // First run: killed once a checkpoint has been written.
    run_and_kill(&spec, || checkpoint().is_some_and(|offset| offset > 0));
    let resume = checkpoint().unwrap();
    let before = written_offsets();
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
    let status = run(&spec).wait().unwrap();
    assert!(status.success());
    let after = written_offsets();
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
