//! `mirador run` against what an operator does to its files: a checkpoint directory
//! removed or made unwritable mid-run, a second run on the same checkpoints, an input file
//! truncated under its checkpoint, and a last line still being written.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{checkpoint, whole_lines, write_spec, written, MIRADOR};

/// Starts `mirador run` on `spec`, its stderr into `dir/<label>.stderr`.
fn start(dir: &Path, spec: &Path, label: &str) -> (Child, PathBuf) {
    let stderr = dir.join(format!("{label}.stderr"));
    let child = Command::new(MIRADOR)
        .args(["run", "--quiet", "--pipeline"])
        .arg(spec)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    (child, stderr)
}

fn wait_for(what: &str, child: &mut Child, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "{what}: the run ended first"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn terminate(mut child: Child) -> ExitStatus {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An unbounded generator pipeline in `dir`.
fn unbounded(dir: &Path, name: &str) -> PathBuf {
    write_spec(
        dir,
        name,
        "  generator:\n    partitions: 1\n    rate_per_sec: 5000",
    )
}

#[test]
fn a_checkpoint_directory_removed_during_a_run_is_created_again() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let spec = unbounded(dir, "removed");
    let (mut child, stderr) = start(dir, &spec, "run");
    wait_for("a first checkpoint", &mut child, || {
        checkpoint(dir, "removed", 0).is_some()
    });
    std::fs::remove_dir_all(dir.join("checkpoints")).unwrap();
    wait_for("the checkpoint saved again", &mut child, || {
        checkpoint(dir, "removed", 0).is_some()
    });
    let status = terminate(child);
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{said}");
    let saved = checkpoint(dir, "removed", 0).unwrap();
    assert_eq!(
        written(dir).len() as u64,
        saved,
        "the final checkpoint covers everything written"
    );
}

#[test]
fn a_final_checkpoint_that_cannot_be_saved_fails_the_run_naming_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let spec = unbounded(dir, "unsaved");
    let (mut child, stderr) = start(dir, &spec, "run");
    wait_for("a first checkpoint", &mut child, || {
        checkpoint(dir, "unsaved", 0).is_some()
    });
    // A file where the directory was: it can be neither written nor created again.
    let checkpoints = dir.join("checkpoints");
    std::fs::remove_dir_all(&checkpoints).unwrap();
    std::fs::write(&checkpoints, b"not a directory").unwrap();
    let status = terminate(child);
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert_ne!(
        status.code(),
        Some(0),
        "an unsaved checkpoint is a failure: {said}"
    );
    assert!(
        said.contains(&format!(
            "{}",
            checkpoints.join("unsaved.p0.json").display()
        )),
        "the path is named: {said}"
    );
    assert!(said.contains("cannot save the checkpoint"), "{said}");
}

#[test]
fn a_second_run_on_the_same_checkpoints_is_refused_naming_the_first_ones_pid() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let spec = unbounded(dir, "twice");
    let (mut first, _) = start(dir, &spec, "first");
    wait_for("a first checkpoint", &mut first, || {
        checkpoint(dir, "twice", 0).is_some()
    });
    let (mut second, stderr) = start(dir, &spec, "second");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the second run was not refused");
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert_ne!(status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!("process {}", first.id())),
        "the holder's pid is named: {said}"
    );
    assert!(
        !dir.join("scored.jsonl").exists() || said.contains("already running"),
        "{said}"
    );
    assert_eq!(terminate(first).code(), Some(0));
    assert!(
        written(dir).values().all(|n| *n == 1),
        "nothing was written twice"
    );
}

/// A file pipeline over `content`, JSON lines.
fn file_pipeline(dir: &Path, name: &str, content: &str) -> (PathBuf, PathBuf) {
    let input = dir.join("events.jsonl");
    std::fs::write(&input, content).unwrap();
    let spec = write_spec(
        dir,
        name,
        &format!("  file:\n    path: {}", input.display()),
    );
    (input, spec)
}

fn event(i: usize) -> String {
    format!(
        "{{\"event_id\":\"e{i}\",\"customer_id\":\"c00000{}\",\"event_type\":\"page_view\",\"channel\":\"web\",\"value\":0.0,\"event_time\":\"2026-11-27T15:30:49.904Z\"}}",
        i % 10
    )
}

fn run_to_end(dir: &Path, spec: &Path, label: &str) -> (ExitStatus, String) {
    let (mut child, stderr) = start(dir, spec, label);
    let status = child.wait().unwrap();
    (status, std::fs::read_to_string(stderr).unwrap())
}

#[test]
fn an_input_truncated_under_its_checkpoint_fails_the_run_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let content: String = (0..20).map(|i| event(i) + "\n").collect();
    let (input, spec) = file_pipeline(dir, "rotated", &content);
    let (status, said) = run_to_end(dir, &spec, "first");
    assert!(status.success(), "{said}");
    let saved = checkpoint(dir, "rotated", 0).unwrap();
    assert_eq!(saved, content.len() as u64);

    // The file is rotated: a shorter one takes its place.
    let shorter: String = (100..103).map(|i| event(i) + "\n").collect();
    std::fs::write(&input, &shorter).unwrap();
    let (status, said) = run_to_end(dir, &spec, "second");
    assert!(
        !status.success(),
        "reading nothing is not a success: {said}"
    );
    assert!(said.contains(&format!("byte {saved}")), "{said}");
    assert!(
        said.contains(&format!("({} bytes)", shorter.len())),
        "{said}"
    );
    assert!(said.contains("checkpoints/rotated.p0.json"), "{said}");

    // The documented way back: delete the checkpoint.
    std::fs::remove_file(dir.join("checkpoints/rotated.p0.json")).unwrap();
    let (status, said) = run_to_end(dir, &spec, "third");
    assert!(status.success(), "{said}");
    assert_eq!(whole_lines(&dir.join("scored.jsonl")).len(), 23);
}

#[test]
fn a_last_line_still_being_written_is_read_whole_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let last = event(9);
    let (head, tail) = last.split_at(last.len() / 2);
    let content: String = (0..9).map(|i| event(i) + "\n").collect::<String>() + head;
    let (input, spec) = file_pipeline(dir, "growing", &content);
    let (status, said) = run_to_end(dir, &spec, "first");
    assert!(status.success(), "{said}");
    assert_eq!(whole_lines(&dir.join("scored.jsonl")).len(), 9);
    assert!(
        whole_lines(&dir.join("dead.jsonl")).is_empty(),
        "the unfinished line is not dead-lettered"
    );

    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    std::io::Write::write_all(&mut file, format!("{tail}\n").as_bytes()).unwrap();
    let (status, said) = run_to_end(dir, &spec, "second");
    assert!(status.success(), "{said}");
    let scored = whole_lines(&dir.join("scored.jsonl"));
    assert_eq!(scored.len(), 10);
    assert_eq!(scored[9]["event"]["event_id"], "e9");
    assert!(whole_lines(&dir.join("dead.jsonl")).is_empty());
}
