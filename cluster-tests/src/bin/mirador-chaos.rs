//! `mirador-chaos`: the reliability matrix against the deployment of docker-compose.yml.
//!
//!   mirador-chaos --mirador PATH [--row N]... [--write docs/reliability.md]
//!                 [--tag latest] [--net 172.29] [--rate 1000]
//!
//! Each row brings up a deployment of its own (project `miradorchaos`, networks
//! NET.10-13.0/24), injects its fault under load, reconciles, and removes it. A failed row
//! keeps its containers' logs under target/chaos-logs/row-N. Exit status 1 if a row failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use mirador_cluster_tests::chaos::deployment::Deployment;
use mirador_cluster_tests::chaos::scenario::{execute, rows, smoke, Settings};
use mirador_cluster_tests::chaos::table;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut mirador, mut wanted, mut write) = (None, Vec::new(), None);
    let (mut tag, mut net, mut rate) = ("latest".to_string(), "172.29".to_string(), 1000u32);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--mirador" => mirador = Some(PathBuf::from(value())),
            "--row" => wanted.push(
                value()
                    .parse::<u32>()
                    .unwrap_or_else(|_| usage("--row: a number")),
            ),
            "--write" => write = Some(PathBuf::from(value())),
            "--tag" => tag = value(),
            "--net" => net = value(),
            "--rate" => {
                rate = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--rate: a number"))
            }
            _ => usage(&format!("unknown argument {arg}")),
        }
    }
    let mirador = mirador.unwrap_or_else(|| usage("--mirador: the mirador binary is required"));
    let root = std::env::current_dir().expect("a working directory");
    if !root.join("docker-compose.yml").exists() {
        usage("run it from the repository root (docker-compose.yml)");
    }
    let settings = Settings {
        rate,
        poison_share: 0.01,
        spec: root.join("examples/compose.yaml"),
        logs: root.join("target/chaos-logs"),
    };
    // Row 0: the smoke scenario of `make test`.
    let mut all = rows();
    all.insert(0, smoke());
    let selected: Vec<_> = all
        .iter()
        .filter(|r| (wanted.is_empty() && r.number > 0) || wanted.contains(&r.number))
        .collect();
    if selected.is_empty() {
        usage("no such row");
    }
    let d = Deployment::new("miradorchaos", &net, &root, &mirador, &tag);
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for row in selected {
        eprintln!("row {}: {} ...", row.number, row.name);
        let outcome = execute(row, &d, &settings);
        eprintln!(
            "row {}: {} in {:.0} s{}",
            row.number,
            if outcome.passed() { "pass" } else { "FAIL" },
            outcome.wall_s,
            if outcome.passed() {
                String::new()
            } else {
                format!(": {}", outcome.failures.join("; "))
            }
        );
        outcomes.push(outcome);
    }
    let wall = started.elapsed().as_secs_f64();
    let table = table(&outcomes);
    println!("{table}\nwall time {:.0} s ({:.1} min)", wall, wall / 60.0);
    if let Some(path) = write {
        if let Err(e) = write_report(&path, &table, wall, rate) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if outcomes.iter().all(|o| o.passed()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Replaces the part of `path` between the two markers with the table.
fn write_report(path: &PathBuf, table: &str, wall: f64, rate: u32) -> std::io::Result<()> {
    const BEGIN: &str = "<!-- chaos:begin -->";
    const END: &str = "<!-- chaos:end -->";
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| format!("{BEGIN}\n{END}\n"));
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        return Err(std::io::Error::other(format!(
            "{BEGIN} ... {END} not found"
        )));
    };
    let today = chrono::Utc::now().format("%Y-%m-%d");
    let body = format!(
        "{BEGIN}\nOne `make chaos` run on {today}, {rate} records/s, wall time {:.1} min:\n\n{table}{END}",
        wall / 60.0
    );
    std::fs::write(
        path,
        format!("{}{}{}", &text[..b], body, &text[e + END.len()..]),
    )
}

fn usage(message: &str) -> ! {
    eprintln!("mirador-chaos: {message}\nusage: mirador-chaos --mirador PATH [--row N]... [--write FILE] [--tag T] [--net A.B] [--rate N]");
    std::process::exit(2)
}
