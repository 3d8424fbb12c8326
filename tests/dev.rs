//! `mirador dev` runs the demo through a one-node region in its own process: every
//! generated event ends in the scored file or the dead-letter file.

use std::process::Command;

#[test]
fn mirador_dev_runs_the_demo_through_a_local_region() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mirador"))
        .args(["dev", "--events", "20000", "--partitions", "2", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("coordinator on 127.0.0.1:"), "{stderr}");
    let lines = |name: &str| {
        std::fs::read_to_string(out.path().join(name))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let (scored, dead) = (lines("scored.jsonl"), lines("dead-letter.jsonl"));
    assert_eq!(
        scored + dead,
        20_000,
        "{scored} scored, {dead} dead-lettered"
    );
    assert!(dead > 0, "the demo's 1 % poison is dead-lettered");
    assert!(
        stderr.contains(&format!("{scored} scored, {dead} dead-lettered")),
        "{stderr}"
    );
    // The region kept its state on disk, beside the output.
    assert!(out.path().join("coordinator/raft.redb").is_file());
}
