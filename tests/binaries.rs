//! A coordinator node never links libtorch: `mirador-coordinator` starts where libtorch
//! cannot be found, and `mirador coordinator` runs it.

use std::process::Command;

/// Runs `binary args` with no library path, so that libtorch (found through
/// `LD_LIBRARY_PATH` here) is out of reach.
fn without_libtorch(binary: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary)
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap_or_else(|e| panic!("{binary} runs: {e}"))
}

#[test]
fn the_coordinator_binary_starts_without_libtorch() {
    let coordinator = without_libtorch(env!("CARGO_BIN_EXE_mirador-coordinator"), &["--version"]);
    assert!(
        coordinator.status.success(),
        "mirador-coordinator needs a library it should not: {}",
        String::from_utf8_lossy(&coordinator.stderr)
    );
    // The control: the executor's binary links libtorch, and does not start without it.
    let mirador = without_libtorch(env!("CARGO_BIN_EXE_mirador"), &["--version"]);
    assert!(
        !mirador.status.success() && String::from_utf8_lossy(&mirador.stderr).contains("libtorch"),
        "mirador started without libtorch: the check above proves nothing"
    );
}

#[test]
fn mirador_coordinator_runs_the_coordinator_binary() {
    let help = Command::new(env!("CARGO_BIN_EXE_mirador"))
        .args(["coordinator", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "{help:?}");
    assert!(
        text.contains("Usage: mirador-coordinator") && text.contains("--join"),
        "{text}"
    );
    // A bad setting is named, by the coordinator binary itself.
    let bad = Command::new(env!("CARGO_BIN_EXE_mirador"))
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("id: needed"),
        "{bad:?}"
    );
}
