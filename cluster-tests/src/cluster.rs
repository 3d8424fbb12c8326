//! A region on loopback, as separate processes: coordinators and executors of the
//! `mirador` binary, each with its own log file, killed by pid when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::services::free_port;

/// One `mirador` process that can be killed and started again with the same arguments.
pub struct Node {
    pub name: String,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(binary: &Path, name: &str, args: Vec<String>, dir: &Path) -> Self {
        let mut node = Node {
            name: name.to_string(),
            binary: binary.to_path_buf(),
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        node.restart();
        node
    }

    /// Starts it (again), appending to its log.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("a log file");
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env("MIRADOR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.name));
        self.child = Some(child);
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`...) with `kill`.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running node");
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal} {}", self.name);
    }

    /// Waits at most `limit` for it to exit by itself; its exit status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A coordinator node of the region.
pub struct CoordinatorNode {
    pub id: u64,
    pub address: String,
    pub node: Node,
}

impl CoordinatorNode {
    /// `mirador coordinator` number `id` on `address`, with its data in `dir/c<id>`.
    fn start(binary: &Path, dir: &Path, id: u64, address: String, extra: &[&str]) -> Self {
        let mut args = vec![
            "coordinator".to_string(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            address.clone(),
            "--data-dir".into(),
            dir.join(format!("c{id}")).display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let node = Node::start(binary, &format!("coordinator-{id}"), args, dir);
        CoordinatorNode { id, address, node }
    }
}

/// Coordinators and executors on loopback, in a scratch directory.
pub struct Region {
    binary: PathBuf,
    /// The config's `region:`, given to its executors too.
    name: Option<String>,
    pub dir: tempfile::TempDir,
    pub coordinators: Vec<CoordinatorNode>,
    pub executors: Vec<Node>,
}

impl Region {
    /// `coordinators` Raft voters; no executor yet.
    pub fn start(binary: &Path, coordinators: u64) -> Self {
        Self::start_configured(binary, coordinators, "")
    }

    /// `coordinators` Raft voters, each given `config` as its config file (flags set the
    /// id, addresses and data directory; the file may set the rest: `region:`,
    /// `snapshot:`...). Empty: no file.
    pub fn start_configured(binary: &Path, coordinators: u64, config: &str) -> Self {
        Self::start_at(binary, Self::addresses(coordinators), config)
    }

    /// Loopback addresses for `coordinators` coordinators, ids from 1: for regions that
    /// must know each other's before either starts.
    pub fn addresses(coordinators: u64) -> Vec<(u64, String)> {
        (1..=coordinators)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect()
    }

    /// As [`Region::start_configured`], on `addresses` (from [`Region::addresses`]).
    pub fn start_at(binary: &Path, addresses: Vec<(u64, String)>, config: &str) -> Self {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let config_file = dir.path().join("coordinator.yaml");
        let mut extra = Vec::new();
        if !config.is_empty() {
            std::fs::write(&config_file, config).expect("the coordinators' config file");
            extra = vec!["--config".to_string(), config_file.display().to_string()];
        }
        let members = addresses
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        let coordinators = addresses
            .into_iter()
            .map(|(id, address)| {
                let mut args = vec!["--members", members.as_str()];
                args.extend(extra.iter().map(String::as_str));
                CoordinatorNode::start(binary, dir.path(), id, address, &args)
            })
            .collect();
        let name = config
            .lines()
            .find_map(|line| line.strip_prefix("region: "))
            .map(|name| name.trim().to_string());
        Region {
            binary: binary.to_path_buf(),
            name,
            dir,
            coordinators,
            executors: Vec::new(),
        }
    }

    /// Starts coordinator `id` empty, to join the running group once an operator adds it
    /// (`mirador admin add-learner`); its address is among the region's from now on.
    pub fn add_joining_coordinator(&mut self, id: u64) -> String {
        let address = format!("127.0.0.1:{}", free_port());
        let node = CoordinatorNode::start(
            &self.binary,
            self.dir.path(),
            id,
            address.clone(),
            &["--join"],
        );
        self.coordinators.push(node);
        address
    }

    pub fn coordinator(&mut self, id: u64) -> &mut Node {
        &mut self
            .coordinators
            .iter_mut()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("no coordinator {id}"))
            .node
    }

    /// The coordinators' addresses, comma-separated.
    pub fn coordinator_list(&self) -> String {
        self.coordinators
            .iter()
            .map(|c| c.address.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn add_executor(&mut self, id: &str, slots: u32) {
        self.add_executor_with(id, slots, &[]);
    }

    /// As [`Region::add_executor`], with more flags (`--metrics-listen`...).
    pub fn add_executor_with(&mut self, id: &str, slots: u32, extra: &[&str]) {
        let mut args = vec![
            "executor".to_string(),
            "--id".into(),
            id.into(),
            "--coordinators".into(),
            self.coordinator_list(),
            "--slots".into(),
            slots.to_string(),
        ];
        if let Some(name) = &self.name {
            args.extend(["--region".to_string(), name.clone()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let node = Node::start(&self.binary, id, args, self.dir.path());
        self.executors.push(node);
    }

    /// `kill -9` of every process of the region, executors first.
    pub fn kill_all(&mut self) {
        for executor in &mut self.executors {
            executor.kill();
        }
        for coordinator in &mut self.coordinators {
            coordinator.node.kill();
        }
    }

    /// Starts every process of the region again, coordinators first.
    pub fn restart_all(&mut self) {
        for coordinator in &mut self.coordinators {
            coordinator.node.restart();
        }
        for executor in &mut self.executors {
            executor.restart();
        }
    }

    pub fn executor(&mut self, id: &str) -> &mut Node {
        self.executors
            .iter_mut()
            .find(|e| e.name == id)
            .unwrap_or_else(|| panic!("no executor {id}"))
    }

    /// `mirador admin --json ...` against the region: its JSON answer, or the error text.
    pub fn admin(&self, args: &[&str]) -> Result<Value, String> {
        let output = Command::new(&self.binary)
            .args([
                "admin",
                "--json",
                "--coordinators",
                &self.coordinator_list(),
            ])
            .args(args)
            .output()
            .expect("mirador admin runs");
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        serde_json::from_slice(&output.stdout).map_err(|e| {
            format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// The leader's node id, once one is known to the coordinators that answer.
    pub fn leader(&self) -> Option<u64> {
        let status = self.admin(&["status"]).ok()?;
        let leader = status["leader_id"].as_u64()?;
        // Only a leader that is alive counts.
        self.coordinators
            .iter()
            .any(|c| c.id == leader && c.node.is_running())
            .then_some(leader)
    }

    /// The end of every process's log.
    pub fn log_tails(&self) -> String {
        let logs: Vec<String> = self
            .coordinators
            .iter()
            .map(|c| format!("--- {}\n{}", c.node.name, c.node.log_tail()))
            .chain(
                self.executors
                    .iter()
                    .map(|e| format!("--- {}\n{}", e.name, e.log_tail())),
            )
            .collect();
        logs.join("\n")
    }

    /// Polls `check` every 50 ms until it returns `Some`, or panics after `limit`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(value) = check() {
                return value;
            }
            if Instant::now() > deadline {
                panic!("{what}: not within {limit:?}\n{}", self.log_tails());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
