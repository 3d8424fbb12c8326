//! Prometheus metrics of a region of separate processes: an executor's counters agree
//! exactly with what its sinks wrote, a coordinator shows its Raft member and the region,
//! and `promtool check metrics` (Debian's prometheus package) accepts both pages.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{mirador, whole_lines};
use mirador_cluster_tests::cluster::Region;
use mirador_cluster_tests::http_get;
use mirador_cluster_tests::services::{free_port, BigtableEmulator};
use mirador_cluster_tests::spec::{SpecYaml, DEFAULTS_ON_MISS};

/// One sample: its metric name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The body of `GET /metrics` at `address`, in Prometheus's text format, or why not.
fn scrape(address: &str) -> Result<String, String> {
    let (head, body) = http_get(address, "/metrics")?;
    if !head.contains("text/plain; version=0.0.4") {
        return Err(format!("not Prometheus's text format: {head}"));
    }
    Ok(body)
}

/// The samples of a page in Prometheus's text format (label values here hold no `,` or
/// `"`).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("key=value");
                    (key.to_string(), value.trim_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().unwrap_or_else(|_| panic!("a number: {line}")),
            }
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include `with`.
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// promtool from `make test`'s setup (MIRADOR_PROMTOOL), or on the PATH, run in the
/// repository with `args` (and `stdin` fed to it): fails, saying why, unless it accepts.
fn promtool(args: &[&str], stdin: Option<&str>, what: &str) {
    let binary = std::env::var("MIRADOR_PROMTOOL").unwrap_or_else(|_| "promtool".to_string());
    let mut child = std::process::Command::new(binary)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is missing ({e}): `make test` unpacks Debian's prometheus package \
                 into the cache, or set MIRADOR_PROMTOOL"
            )
        });
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool {} refused {what}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_scraped_counters_agree_with_the_sink_and_the_dead_letter_and_promtool_accepts_them() {
    const EVENTS: u64 = 3000;
    let binary = mirador();
    let coordinator_metrics = format!("127.0.0.1:{}", free_port());
    let mut region = Region::start_configured(
        Path::new(&binary),
        1,
        &format!("metrics_listen: {coordinator_metrics}\n"),
    );
    region.wait_for("a leader", Duration::from_secs(20), || region.leader());
    let executor_metrics = format!("127.0.0.1:{}", free_port());
    region.add_executor_with("e1", 4, &["--metrics-listen", &executor_metrics]);

    // Two partitions of 3000 events, 5 % poison, scored into a file.
    let dir = region.dir.path();
    let (scored, dead) = (dir.join("scored.jsonl"), dir.join("dead.jsonl"));
    let yaml = SpecYaml {
        name: "counted",
        source: &format!(
            "  generator:\n    events: {EVENTS}\n    partitions: 2\n    customers: 1000\n    \
             poison_ratio: 0.05"
        ),
        sink: &format!("  file:\n    path: {}", scored.display()),
        dead_letter: &format!("  file:\n    path: {}", dead.display()),
        rest: "checkpoint:\n  interval_ms: 100\n",
        ..SpecYaml::default()
    }
    .yaml();
    let spec = dir.join("counted.yaml");
    std::fs::write(&spec, yaml).unwrap();
    region.admin(&["create", spec.to_str().unwrap()]).unwrap();
    region.wait_for("both partitions finished", Duration::from_secs(90), || {
        let info = region.admin(&["describe", "counted"]).ok()?;
        let states: Vec<&str> = info["assignments"]
            .as_array()?
            .iter()
            .filter_map(|a| a["state"].as_str())
            .collect();
        (states == ["finished", "finished"]).then_some(())
    });

    let written = whole_lines(&scored).len() as f64;
    let dead_letters = whole_lines(&dead);
    let mut by_reason: BTreeMap<String, f64> = BTreeMap::new();
    for line in &dead_letters {
        *by_reason
            .entry(line["reason"].as_str().expect("a reason").to_string())
            .or_default() += 1.0;
    }
    assert!(written > 0.0 && !dead_letters.is_empty());

    let page = scrape(&executor_metrics).unwrap();
    let s = samples(&page);
    let pipeline = ("pipeline", "counted");
    assert_eq!(
        sum(
            &s,
            "mirador_stage_records_out_total",
            &[pipeline, ("stage", "source")]
        ),
        2.0 * EVENTS as f64,
        "{page}"
    );
    assert_eq!(
        sum(
            &s,
            "mirador_stage_records_in_total",
            &[pipeline, ("stage", "sink")]
        ),
        written,
        "the sink's count is the file's lines"
    );
    assert_eq!(
        sum(
            &s,
            "mirador_stage_records_in_total",
            &[pipeline, ("stage", "dead_letter")]
        ),
        dead_letters.len() as f64,
        "the dead letter's count is its file's lines"
    );
    for (reason, count) in &by_reason {
        assert_eq!(
            sum(
                &s,
                "mirador_dead_letters_total",
                &[pipeline, ("reason", reason)]
            ),
            *count,
            "dead letters for {reason}"
        );
    }
    assert_eq!(
        sum(&s, "mirador_dead_letters_total", &[pipeline]),
        dead_letters.len() as f64
    );
    assert_eq!(sum(&s, "mirador_partition_running", &[pipeline]), 0.0);
    assert_eq!(
        sum(&s, "mirador_partition_checkpoint_offset", &[pipeline]),
        2.0 * EVENTS as f64
    );
    assert_eq!(
        sum(&s, "mirador_executor_slots", &[("executor", "e1")]),
        4.0
    );
    assert!(
        sum(&s, "mirador_inference_rows_total", &[]) >= written,
        "every scored record went through the model"
    );
    promtool(&["check", "metrics"], Some(&page), "the executor's page");

    let page = scrape(&coordinator_metrics).unwrap();
    let c = samples(&page);
    assert_eq!(sum(&c, "mirador_raft_leader", &[]), 1.0, "{page}");
    assert!(sum(&c, "mirador_raft_term", &[]) >= 1.0);
    assert!(sum(&c, "mirador_raft_last_applied_index", &[]) >= 1.0);
    assert_eq!(sum(&c, "mirador_region_executors", &[]), 1.0);
    assert_eq!(sum(&c, "mirador_region_pipelines", &[]), 1.0);
    assert_eq!(
        sum(&c, "mirador_executor_lease_live", &[("executor", "e1")]),
        1.0
    );
    promtool(&["check", "metrics"], Some(&page), "the coordinator's page");
}

#[test]
fn a_metrics_listener_that_cannot_bind_is_an_error_naming_the_setting() {
    let binary = mirador();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = std::process::Command::new(&binary)
        .args([
            "executor",
            "--id",
            "e1",
            "--coordinators",
            "127.0.0.1:1",
            "--metrics-listen",
            &address,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("metrics_listen"), "{stderr}");
}

#[test]
fn the_deployments_prometheus_config_and_alert_rules_pass_promtool() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = "deploy/prometheus/prometheus.yml";
    promtool(&["check", "config", "--syntax-only", config], None, config);
    promtool(
        &["check", "rules", "deploy/prometheus/rules.yml"],
        None,
        "the alert rules",
    );
    // Every metric an alert names is one a node serves (docs/cluster.md lists them).
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/rules.yml")).unwrap();
    assert_served(&rules, "rules.yml");
}

/// Fails naming any `mirador_` metric in `text` that no node serves (a histogram's
/// `_bucket`, `_sum` and `_count` are its own).
fn assert_served(text: &str, what: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let served = [
        std::fs::read_to_string(root.join("executor/src/metrics.rs")).unwrap(),
        std::fs::read_to_string(root.join("coordinator/src/metrics.rs")).unwrap(),
    ]
    .concat();
    let named: std::collections::BTreeSet<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("mirador_"))
        .collect();
    assert!(!named.is_empty(), "{what} names no metric");
    for metric in named {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| metric.strip_suffix(suffix))
            .filter(|base| served.contains(&format!("\"{base}\"")))
            .unwrap_or(metric);
        assert!(
            served.contains(&format!("\"{family}\"")),
            "{what} names {metric}, which no node serves"
        );
    }
}

#[test]
fn the_grafana_dashboard_follows_grafanas_model_and_queries_only_served_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/grafana/mirador.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Grafana's dashboard model (schemaVersion 39, Grafana 10 and 11): what an import needs.
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert_eq!(dashboard["schemaVersion"].as_u64(), Some(39));
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut ids = std::collections::BTreeSet::new();
    let mut cells = std::collections::BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "{title}: id taken"
        );
        assert!(
            ["timeseries", "stat"].contains(&panel["type"].as_str().unwrap_or("")),
            "{title}: a panel type of Grafana's own"
        );
        assert_eq!(panel["datasource"]["type"], "prometheus", "{title}");
        let at = |key: &str| panel["gridPos"][key].as_u64().expect("gridPos x, y, w, h");
        let (x, y, w, h) = (at("x"), at("y"), at("w"), at("h"));
        assert!(
            w >= 1 && h >= 1 && x + w <= 24,
            "{title}: within the 24 columns"
        );
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            assert!(cells.insert(cell), "{title} overlaps another panel");
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert!(target["refId"].as_str().is_some(), "{title}: refId");
            exprs.push(target["expr"].as_str().expect("an expr").to_string());
        }
    }
    assert_served(&exprs.join("\n"), "the dashboard");
    // Each query is valid PromQL: promtool parses them as recording rules.
    let rules = format!(
        "groups:\n  - name: dashboard\n    rules:\n{}",
        exprs
            .iter()
            .enumerate()
            .map(|(i, expr)| format!(
                "      - record: dashboard:panel_{i}\n        expr: {}\n",
                serde_json::to_string(expr).unwrap()
            ))
            .collect::<String>()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    let file = file.to_str().unwrap();
    promtool(
        &["check", "rules", file],
        None,
        "the dashboard's queries as PromQL",
    );
}

/// Data freshness (s) of partition 0 of `pipeline`, from `describe` and from the
/// executor's metrics.
fn freshness(region: &Region, pipeline: &str, metrics: &str) -> Option<(f64, f64)> {
    let info = region.admin(&["describe", pipeline]).ok()?;
    let described = info["assignments"][0]["freshness_ms"].as_u64()? as f64 / 1000.0;
    let page = scrape(metrics).ok()?;
    let scraped = samples(&page)
        .into_iter()
        .find(|s| s.name == "mirador_partition_data_freshness_seconds")?
        .value;
    Some((described, scraped))
}

#[test]
fn freshness_rises_while_bigtable_holds_every_lookup_and_falls_after() {
    let bigtable = BigtableEmulator::start();
    let binary = mirador();
    let loaded = std::process::Command::new(&binary)
        .args([
            "bigtable-load",
            "--endpoint",
            &bigtable.endpoint(),
            "--table",
            "features",
        ])
        .arg("--csv")
        .arg(mirador_cluster_tests::spec::demo_features())
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let mut region = Region::start(Path::new(&binary), 1);
    region.wait_for("a leader", Duration::from_secs(20), || region.leader());
    let metrics = format!("127.0.0.1:{}", free_port());
    region.add_executor_with("e1", 2, &["--metrics-listen", &metrics]);

    // 200 events/s of a million customers: nearly every lookup misses the cache and
    // reaches Bigtable.
    let dead = region.dir.path().join("dead.jsonl");
    let yaml = SpecYaml {
        name: "fresh",
        source: "  generator:\n    partitions: 1\n    customers: 1000000\n    rate_per_sec: 200",
        lookup: &format!(
            "  bigtable:\n    project: test-project\n    instance: test-instance\n    \
             table: features\n    endpoint: {}\n    timeout_ms: 500",
            bigtable.endpoint()
        ),
        enrichment: DEFAULTS_ON_MISS,
        sink: "  \"null\": {}",
        dead_letter: &format!("  file:\n    path: {}", dead.display()),
        rest: "checkpoint:\n  interval_ms: 100\nslo:\n  freshness_p90_secs: 3\n",
        ..SpecYaml::default()
    }
    .yaml();
    let spec = region.dir.path().join("fresh.yaml");
    std::fs::write(&spec, yaml).unwrap();
    region.admin(&["create", spec.to_str().unwrap()]).unwrap();

    let fresh = region.wait_for("fresh output", Duration::from_secs(30), || {
        freshness(&region, "fresh", &metrics).filter(|(d, s)| *d < 3.0 && *s < 3.0)
    });
    bigtable.freeze(true);
    let stale = region.wait_for(
        "freshness rising while Bigtable holds the lookups",
        Duration::from_secs(30),
        || freshness(&region, "fresh", &metrics).filter(|(d, s)| *d > 6.0 && *s > 6.0),
    );
    bigtable.freeze(false);
    let recovered = region.wait_for("fresh output again", Duration::from_secs(60), || {
        freshness(&region, "fresh", &metrics).filter(|(d, s)| *d < 3.0 && *s < 3.0)
    });
    println!(
        "freshness (describe, metrics) in s: before {fresh:?}, Bigtable held {stale:?}, after {recovered:?}"
    );

    // The seconds over the 3 s target count against the SLO's budget.
    let info = region.admin(&["describe", "fresh"]).unwrap();
    assert_eq!(info["slo_freshness_p90_secs"], 3, "{info}");
    let met = info["slo_met"].as_f64().expect("the SLO measured");
    let left = info["slo_budget_left"].as_f64().expect("a budget");
    assert!(met > 0.0 && met < 1.0, "{info}");
    assert!(left < 1.0, "some of the budget is spent: {info}");
    let page = scrape(&metrics).unwrap();
    let s = samples(&page);
    let measured = sum(&s, "mirador_slo_freshness_measured_seconds_total", &[]);
    let good = sum(&s, "mirador_slo_freshness_good_seconds_total", &[]);
    assert!(good > 0.0 && good < measured, "good {good} of {measured} s");
    assert_eq!(sum(&s, "mirador_slo_freshness_target_seconds", &[]), 3.0);
    println!(
        "SLO: {:.1} % met, {:.0} % of the budget left",
        100.0 * met,
        100.0 * left
    );
    drop(bigtable);
}
