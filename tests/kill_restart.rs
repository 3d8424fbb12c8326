//! `kill -9` of a running `mirador run`, then running it again: every input record ends in
//! the sink or the dead letter, and only records after the last checkpoint are written
//! twice. And `kill -TERM`: the run drains as at Ctrl-C.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

#[test]
fn sigterm_drains_the_run_saves_its_checkpoint_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // An unbounded generator: only a signal ends the run.
    let spec = write_spec(
        dir,
        "terminated",
        "  generator:\n    partitions: 1\n    rate_per_sec: 5000",
    );
    let stderr = dir.join("stderr.txt");
    let mut child = Command::new(MIRADOR)
        .args(["run", "--pipeline"])
        .arg(&spec)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint(dir, "terminated", 0).is_none_or(|offset| offset <= 1000) {
        assert!(Instant::now() < deadline, "no checkpoint was written");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended by itself"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let terminated = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not end after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(status.code(), Some(0), "a drained run exits 0: {said}");
    assert!(said.contains("pipeline terminated"), "the summary: {said}");

    // Everything read was delivered, and the checkpoint stands right after it.
    let saved = checkpoint(dir, "terminated", 0).unwrap();
    let written = written(dir);
    assert!(written.values().all(|n| *n == 1), "no duplicates");
    assert_eq!(
        written.len() as u64,
        saved,
        "the checkpoint covers every record written, and no more"
    );
    assert!(written.keys().all(|(_, offset)| *offset < saved));
}
