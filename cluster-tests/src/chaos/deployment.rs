//! The deployment of docker-compose.yml under a project of its own, and the nemesis's
//! hands on it: docker for kills, pauses and network cuts; `tc netem` and iptables run
//! from this host inside a container's network namespace (`nsenter -t <pid> -n`), so that
//! the images need no network tools.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The pipeline of examples/ that every scenario runs.
pub const PIPELINE: &str = "compose";
pub const PARTITIONS: i32 = 4;

#[derive(Clone)]
pub struct Deployment {
    /// The compose project: letters and digits only, as compose v1 names its networks
    /// and containers after it.
    pub project: String,
    /// The first two octets of every network (`MIRADOR_NET`).
    pub net: String,
    root: PathBuf,
    mirador: PathBuf,
    tag: String,
    /// docker-compose.yml, then the overrides a row adds to it.
    files: Vec<String>,
}

pub type Result<T> = std::result::Result<T, String>;

fn run(command: &mut Command, what: &str) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{what}: {}{}",
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        ))
    }
}

impl Deployment {
    /// `root`: the repository (docker-compose.yml, models/, examples/); `mirador`: the
    /// binary that runs `mirador admin` from this host; `tag`: the images' tag.
    pub fn new(project: &str, net: &str, root: &Path, mirador: &Path, tag: &str) -> Self {
        assert!(
            project
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "a project name of lowercase letters and digits"
        );
        Deployment {
            project: project.to_string(),
            net: net.to_string(),
            root: root.to_path_buf(),
            mirador: mirador.to_path_buf(),
            tag: tag.to_string(),
            files: vec!["docker-compose.yml".to_string()],
        }
    }

    /// The same deployment with the compose file `file` (relative to the repository)
    /// laid over it.
    pub fn with_override(&self, file: &str) -> Self {
        let mut d = self.clone();
        d.files.push(file.to_string());
        d
    }

    fn compose(&self, args: &[&str]) -> Result<String> {
        run(
            Command::new("docker-compose")
                .current_dir(&self.root)
                .args(["-p", &self.project])
                .args(self.files.iter().flat_map(|f| ["-f", f]))
                .args(args)
                .env("MIRADOR_NET", &self.net)
                .env("MIRADOR_TAG", &self.tag),
            &format!("docker-compose {}", args.join(" ")),
        )
    }

    /// Starts every service and waits until both regions have a leader and their
    /// executors are registered.
    pub fn up(&self) -> Result<()> {
        self.compose(&["up", "-d"])?;
        self.wait("both regions with a leader and 2 executors", 120, || {
            ["a", "b"].iter().all(|r| {
                self.admin(r, &["nodes"])
                    .map(|v| v.as_array().map_or(0, |e| e.len()) == 2)
                    .unwrap_or(false)
            })
        })
    }

    /// Removes every container, network and volume of the project.
    pub fn down(&self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "2"]);
    }

    pub fn wait(&self, what: &str, secs: u64, mut done: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if done() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("waited {secs} s for {what}"))
    }

    pub fn brokers(&self) -> String {
        format!("{}.10.10:9092", self.net)
    }

    /// The deployment's Prometheus (its UI and HTTP API).
    pub fn prometheus(&self) -> String {
        format!("{}.10.60:9090", self.net)
    }

    /// (up, all) of the targets Prometheus scrapes, from its API.
    pub fn prometheus_targets(&self) -> Result<(usize, usize)> {
        let address = self.prometheus();
        let (_, body) = crate::http_get(&address, "/api/v1/targets?state=active")?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("prometheus's targets: {e}"))?;
        let targets = answer["data"]["activeTargets"]
            .as_array()
            .ok_or_else(|| format!("prometheus's targets: no list in {body}"))?;
        let up = targets.iter().filter(|t| t["health"] == "up").count();
        Ok((up, targets.len()))
    }

    /// The coordinators of region `a` or `b`, as `mirador admin` takes them.
    pub fn coordinators(&self, region: &str) -> String {
        let subnet = if region == "a" { 11 } else { 12 };
        (1..=3)
            .map(|i| format!("{}.{subnet}.1{i}:7001", self.net))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `mirador admin --json` against a region.
    pub fn admin(&self, region: &str, args: &[&str]) -> Result<Value> {
        let out = run(
            Command::new(&self.mirador)
                .args([
                    "admin",
                    "--json",
                    "--coordinators",
                    &self.coordinators(region),
                ])
                .args(args)
                .current_dir(&self.root),
            &format!("mirador admin {}", args.join(" ")),
        )?;
        serde_json::from_str(&out).map_err(|e| format!("admin answer is not JSON: {e}: {out}"))
    }

    /// The leader's id in a region, asked of one coordinator (`1..=3`) alone.
    pub fn leader_seen_by(&self, region: &str, coordinator: u32) -> Option<(u64, u64)> {
        let subnet = if region == "a" { 11 } else { 12 };
        let out = run(
            Command::new(&self.mirador).args([
                "admin",
                "--json",
                "--coordinators",
                &format!("{}.{subnet}.1{coordinator}:7001", self.net),
                "status",
            ]),
            "status",
        )
        .ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        Some((v["leader_id"].as_u64()?, v["last_applied"].as_u64()?))
    }

    pub fn leader(&self, region: &str) -> Option<u64> {
        self.admin(region, &["status"]).ok()?["leader_id"].as_u64()
    }

    pub fn kill(&self, service: &str) -> Result<()> {
        self.compose(&["kill", "-s", "SIGKILL", service]).map(drop)
    }

    pub fn start(&self, service: &str) -> Result<()> {
        self.compose(&["start", service]).map(drop)
    }

    pub fn pause(&self, service: &str) -> Result<()> {
        self.compose(&["pause", service]).map(drop)
    }

    pub fn unpause(&self, service: &str) -> Result<()> {
        self.compose(&["unpause", service]).map(drop)
    }

    fn container(&self, service: &str) -> Result<String> {
        let id = self.compose(&["ps", "-q", service])?.trim().to_string();
        if id.is_empty() {
            return Err(format!("no container for {service}"));
        }
        Ok(id)
    }

    fn docker(&self, args: &[&str]) -> Result<String> {
        run(
            Command::new("docker").args(args),
            &format!("docker {}", args.join(" ")),
        )
    }

    /// Runs `command` in `service`'s container; its standard output.
    pub fn exec(&self, service: &str, command: &[&str]) -> Result<String> {
        let container = self.container(service)?;
        let mut args = vec!["exec", container.as_str()];
        args.extend_from_slice(command);
        self.docker(&args)
    }

    /// Takes `service` off `network` (`region-a`, `services`, `wan`, ...).
    pub fn disconnect(&self, network: &str, service: &str) -> Result<()> {
        let container = self.container(service)?;
        self.docker(&[
            "network",
            "disconnect",
            &format!("{}_{network}", self.project),
            &container,
        ])
        .map(drop)
    }

    /// Puts `service` back on `network` at the address it had.
    pub fn connect(&self, network: &str, service: &str, ip: &str) -> Result<()> {
        let container = self.container(service)?;
        let network = format!("{}_{network}", self.project);
        self.docker(&["network", "connect", "--ip", ip, &network, &container])
            .map(drop)
    }

    /// Runs a command inside the network namespace of `service`'s container.
    pub fn in_netns(&self, service: &str, command: &[&str]) -> Result<String> {
        let container = self.container(service)?;
        let pid = self
            .docker(&["inspect", "-f", "{{.State.Pid}}", &container])?
            .trim()
            .to_string();
        run(
            Command::new("nsenter")
                .args(["-t", &pid, "-n"])
                .args(command),
            &format!("nsenter {service} {}", command.join(" ")),
        )
    }

    /// The network interfaces of `service`'s container, loopback left out.
    pub fn interfaces(&self, service: &str) -> Result<Vec<String>> {
        let links = self.in_netns(service, &["ip", "-o", "link"])?;
        Ok(links
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .filter(|n| n != "lo")
            .collect())
    }

    /// `tc qdisc replace ... root netem <args>` on every interface of `service`; `None`
    /// takes it off again.
    pub fn netem(&self, service: &str, args: Option<&str>) -> Result<()> {
        for dev in self.interfaces(service)? {
            match args {
                Some(args) => {
                    let mut command = vec!["tc", "qdisc", "replace", "dev", &dev, "root", "netem"];
                    command.extend(args.split_whitespace());
                    self.in_netns(service, &command)?;
                }
                None => {
                    let _ = self.in_netns(service, &["tc", "qdisc", "del", "dev", &dev, "root"]);
                }
            }
        }
        Ok(())
    }

    /// Drops a `percent` share of the packets `service` receives and sends, at random
    /// (iptables' `statistic` match), or (`on` false) stops dropping them.
    pub fn lose(&self, service: &str, percent: u32, on: bool) -> Result<()> {
        let probability = format!("{:.2}", percent as f64 / 100.0);
        let op = if on { "-I" } else { "-D" };
        for chain in ["INPUT", "OUTPUT"] {
            let rule = [
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &probability,
                "-j",
                "DROP",
            ];
            let mut command = vec!["iptables", op, chain];
            command.extend(rule);
            self.in_netns(service, &command)?;
        }
        Ok(())
    }

    /// Drops every packet between `service` and `peer` (an address), both ways.
    pub fn block(&self, service: &str, peer: &str) -> Result<()> {
        self.drop_rules(service, peer, "-I")
    }

    pub fn unblock(&self, service: &str, peer: &str) -> Result<()> {
        self.drop_rules(service, peer, "-D")
    }

    /// Inserts (`-I`) or deletes (`-D`) the rules that drop packets from and to `peer`.
    fn drop_rules(&self, service: &str, peer: &str, op: &str) -> Result<()> {
        for (chain, side) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            self.in_netns(service, &["iptables", op, chain, side, peer, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// The resident memory of each executor container, in MiB.
    pub fn executor_memory_mib(&self) -> Vec<f64> {
        let ids: Vec<String> = ["a-e1", "a-e2", "b-e1", "b-e2"]
            .iter()
            .filter_map(|s| self.container(s).ok())
            .collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut args = vec!["stats", "--no-stream", "--format", "{{.MemUsage}}"];
        args.extend(ids.iter().map(String::as_str));
        let Ok(out) = self.docker(&args) else {
            return Vec::new();
        };
        out.lines()
            .filter_map(|l| mib(l.split('/').next()?.trim()))
            .collect()
    }

    /// `service`'s log so far.
    pub fn logs(&self, service: &str) -> Result<String> {
        self.compose(&["logs", "--no-color", service])
    }

    /// Every container's log, into `dir`.
    pub fn save_logs(&self, dir: &Path) {
        let _ = std::fs::create_dir_all(dir);
        let Ok(services) = self.compose(&["ps", "--services"]) else {
            return;
        };
        for service in services.lines() {
            if let Ok(log) = self.compose(&["logs", "--no-color", "-t", service]) {
                let _ = std::fs::write(dir.join(format!("{service}.log")), log);
            }
        }
    }
}

/// `123.4MiB`, `1.2GiB`, `512KiB`, in MiB.
fn mib(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "B" => number / 1048576.0,
        "KiB" | "kB" => number / 1024.0,
        "MiB" | "MB" => number,
        "GiB" | "GB" => number * 1024.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_figures_of_docker_stats_read_in_mib() {
        assert_eq!(super::mib("512KiB"), Some(0.5));
        assert_eq!(super::mib("142.8MiB"), Some(142.8));
        assert_eq!(super::mib("1.5GiB"), Some(1536.0));
        assert_eq!(super::mib("lots"), None);
    }
}
