//! A coordinator node never links libtorch: `mirador-coordinator` needs no libtorch
//! library and starts where none can be found, and `mirador coordinator` runs it.

use std::process::Command;

/// The shared libraries that `binary` names as needed, from its ELF dynamic section.
fn needed(binary: &str) -> Vec<String> {
    let output = Command::new("readelf")
        .args(["--dynamic", binary])
        .output()
        .expect("readelf (binutils, installed with g++) runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.trim_end_matches(']').to_string()))
        .collect()
}

fn is_libtorch(library: &str) -> bool {
    ["libtorch", "libc10"]
        .iter()
        .any(|p| library.starts_with(p))
}

#[test]
fn the_coordinator_binary_needs_no_libtorch() {
    let coordinator = needed(env!("CARGO_BIN_EXE_mirador-coordinator"));
    assert!(!coordinator.is_empty(), "the check reads the section");
    assert!(
        !coordinator.iter().any(|l| is_libtorch(l)),
        "mirador-coordinator links {coordinator:?}"
    );
    // The control: the executor's binary does link it.
    let mirador = needed(env!("CARGO_BIN_EXE_mirador"));
    assert!(mirador.iter().any(|l| is_libtorch(l)), "{mirador:?}");

    // And it starts with no path to libtorch.
    let started = Command::new(env!("CARGO_BIN_EXE_mirador-coordinator"))
        .arg("--version")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
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
        text.contains("Usage: mirador coordinator ") && text.contains("--join"),
        "its help names the command as it was typed: {text}"
    );
    assert!(
        text.contains("Where this node keeps its Raft log"),
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

#[test]
fn logs_are_one_json_object_a_line_with_log_format_json() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mirador"))
        .args(["--log-format", "json", "dev", "--events", "2000", "--out"])
        .arg(out.path())
        .env("MIRADOR_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        !stderr
            .lines()
            .any(|l| !l.starts_with('{') && (l.contains(" INFO ") || l.contains(" WARN "))),
        "a log line as text: {stderr}"
    );
    let started = logs
        .iter()
        .find(|l| l["fields"]["message"] == "generation started")
        .unwrap_or_else(|| panic!("no JSON line for a generation started: {stderr}"));
    assert_eq!(started["level"], "INFO", "{started}");
    assert!(started["fields"]["pipeline"].is_string(), "{started}");
    assert!(started["timestamp"].is_string(), "{started}");
}

/// `mirador dev` of 20,000 events at 8,000 a second into `dir`, under a terminal
/// (`script` from util-linux gives it one) or with standard error piped.
fn dev_output(dir: &std::path::Path, terminal: bool) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let dev = format!(
        "{} dev --events 20000 --rate 8000 --out {}",
        env!("CARGO_BIN_EXE_mirador"),
        dir.display()
    );
    let output = if terminal {
        let typescript = dir.join("typescript");
        let status = Command::new("script")
            .args(["-qec", &dev])
            .arg(&typescript)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("script (util-linux) runs");
        assert!(status.success());
        std::fs::read(&typescript).unwrap()
    } else {
        let output = Command::new("bash").args(["-c", &dev]).output().unwrap();
        assert!(output.status.success());
        output.stderr
    };
    String::from_utf8_lossy(&output).into_owned()
}

#[test]
fn progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let bar = dev_output(&dir.path().join("tty"), true);
    assert!(
        bar.contains("20,000/20,000 events") && bar.contains("ETA"),
        "a bar with the count, the total and the time left: {bar}"
    );
    let plain = dev_output(&dir.path().join("pipe"), false);
    let lines: Vec<&str> = plain.lines().filter(|l| l.contains("events/s")).collect();
    assert!(lines.len() >= 2, "a line a second: {plain}");
    assert!(
        !plain.contains("ETA") && !plain.contains('\r'),
        "no bar drawn into a pipe: {plain}"
    );
}
