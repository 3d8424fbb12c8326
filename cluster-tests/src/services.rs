//! Real services started by the tests themselves, on loopback, stopped by their pid.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const CBTEMULATOR: &str = "/usr/lib/google-cloud-sdk/platform/bigtable-emulator/cbtemulator";

/// A port nobody listens on now, and one this process has not handed out before: the
/// kernel may offer a port it just freed again, and two services of one test binary
/// started on the same port would each see the other's traffic.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port)
        {
            return port;
        }
    }
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `child` listens on `port`, and checks that it is `child` that listens: a
/// service that could not bind exits, and whatever else holds the port would answer.
fn wait_for_child(child: &mut Child, port: u16, what: &str) {
    wait_for_port(port, what);
    std::thread::sleep(Duration::from_millis(50));
    if let Ok(Some(status)) = child.try_wait() {
        panic!("{what} exited at start ({status}): 127.0.0.1:{port} is held by another process");
    }
}

/// The Bigtable emulator (in memory), killed when dropped.
pub struct BigtableEmulator {
    pub port: u16,
    child: Option<Child>,
}

impl BigtableEmulator {
    pub fn start() -> Self {
        let mut emulator = BigtableEmulator {
            port: free_port(),
            child: None,
        };
        emulator.restart();
        emulator
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Table `table` of this emulator, column family `f`, as a spec names it.
    pub fn table(&self, table: &str) -> mirador_spec::bigtable::BigtableSpec {
        mirador_spec::bigtable::BigtableSpec {
            project: "test-project".into(),
            instance: "test-instance".into(),
            table: table.into(),
            family: "f".into(),
            endpoint: Some(self.endpoint()),
            channels: 1,
            timeout_ms: 1000,
        }
    }

    fn binary() -> PathBuf {
        let path = std::env::var_os("MIRADOR_CBTEMULATOR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(CBTEMULATOR));
        assert!(
            path.is_file(),
            "the Bigtable emulator is missing: no {} (google-cloud-cli's bigtable emulator; \
             set MIRADOR_CBTEMULATOR to its path)",
            path.display()
        );
        path
    }

    /// Starts it again on the same port (empty: it keeps nothing).
    pub fn restart(&mut self) {
        self.stop();
        let mut child = Command::new(Self::binary())
            .args(["-host", "127.0.0.1", "-port", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the Bigtable emulator starts");
        wait_for_child(&mut child, self.port, "the Bigtable emulator");
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT: an emulator that holds every call and keeps its data.
    pub fn freeze(&self, frozen: bool) {
        let child = self.child.as_ref().expect("the emulator runs");
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {}", child.id());
    }
}

impl Drop for BigtableEmulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `make tansu` installs the Kafka broker; `MIRADOR_TANSU` overrides it.
pub fn tansu() -> PathBuf {
    let path = std::env::var_os("MIRADOR_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/mirador/tansu-0.6.0-sqlite/bin/tansu")
        });
    assert!(
        path.is_file(),
        "the Kafka broker is missing: no {} (`make tansu` builds it; or set MIRADOR_TANSU)",
        path.display()
    );
    path
}

/// A Kafka-protocol broker (tansu), killed when dropped. In memory by default; on disk
/// (SQLite in a directory of its own) when it must survive a restart.
pub struct KafkaBroker {
    pub port: u16,
    child: Option<Child>,
    binary: PathBuf,
    /// The directory of the on-disk store, if any.
    disk: Option<tempfile::TempDir>,
}

impl KafkaBroker {
    /// A broker that keeps its topics in memory: fastest, gone when it stops.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// A broker that keeps its topics on disk, so that `restart` finds them again.
    pub fn start_on_disk() -> Self {
        Self::launch(Some(
            tempfile::tempdir().expect("a directory for the broker"),
        ))
    }

    fn launch(disk: Option<tempfile::TempDir>) -> Self {
        let mut broker = KafkaBroker {
            port: free_port(),
            child: None,
            binary: tansu(),
            disk,
        };
        broker.run();
        broker
    }

    fn run(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut command = Command::new(&self.binary);
        command.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ]);
        match &self.disk {
            // A relative path: tansu opens it under its working directory.
            Some(dir) => command
                .current_dir(dir.path())
                .args(["--storage-engine", "sqlite://tansu.db"]),
            None => command.args(["--storage-engine", "memory://tansu/"]),
        };
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        wait_for_child(&mut child, self.port, "the Kafka broker");
        self.child = Some(child);
    }

    /// `kill -9`, then starts it again on the same port: a broker on disk comes back with
    /// its topics, one in memory empty.
    pub fn restart_after(&mut self, down: Duration) {
        self.kill();
        std::thread::sleep(down);
        self.run();
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let status = Command::new(&self.binary)
            .args([
                "topic",
                "create",
                topic,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .stdout(Stdio::null())
            .status()
            .expect("tansu topic create runs");
        assert!(status.success(), "cannot create topic {topic}");
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

const PUBSUB_EMULATOR: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// The Pub/Sub emulator (in memory), killed when dropped.
pub struct PubsubEmulator {
    pub port: u16,
    child: Child,
}

impl PubsubEmulator {
    pub fn start() -> Self {
        let path = std::env::var_os("MIRADOR_PUBSUB_EMULATOR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(PUBSUB_EMULATOR));
        assert!(
            path.is_file(),
            "the Pub/Sub emulator is missing: no {} (google-cloud-cli's pubsub emulator; \
             set MIRADOR_PUBSUB_EMULATOR to its path)",
            path.display()
        );
        let port = free_port();
        let mut child = Command::new(path)
            .args(["--host=127.0.0.1", &format!("--port={port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the Pub/Sub emulator starts");
        wait_for_child(&mut child, port, "the Pub/Sub emulator");
        PubsubEmulator { port, child }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for PubsubEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `make moto` installs the S3-protocol server; `MIRADOR_MOTO` overrides it.
pub fn moto() -> PathBuf {
    let path = std::env::var_os("MIRADOR_MOTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/mirador/venv/bin/moto_server")
        });
    assert!(
        path.is_file(),
        "the S3-protocol server is missing: no {} (`make moto` installs moto[server] into \
         the environment; or set MIRADOR_MOTO)",
        path.display()
    );
    path
}

/// An S3-protocol server (moto, in memory) on loopback, killed when dropped. Clients give
/// it static credentials: it checks none, and nothing looks for real ones.
pub struct S3Server {
    pub port: u16,
    child: Child,
}

/// The static credentials the tests give every S3 client.
pub const S3_ACCESS_KEY: &str = "mirador-test";
pub const S3_SECRET_KEY: &str = "mirador-test-secret";

impl S3Server {
    pub fn start() -> Self {
        let port = free_port();
        let mut child = Command::new(moto())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the S3-protocol server starts");
        wait_for_child(&mut child, port, "the S3-protocol server (moto)");
        S3Server { port, child }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (an S3 `PUT /bucket`), as an operator would before pointing a store
    /// at it.
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "creating bucket {bucket}: {answer}"
        );
    }

    /// `object_store` options of a store in `bucket` on this server.
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint()),
            ("aws_access_key_id", S3_ACCESS_KEY.to_string()),
            ("aws_secret_access_key", S3_SECRET_KEY.to_string()),
            ("aws_region", "us-east-1".to_string()),
            ("aws_allow_http", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message of a topic, from its beginning to its end now: (value, headers).
pub fn read_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(Vec<u8>, HashMap<String, String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut messages = Vec::new();
    let mut ended = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended.len() < partitions as usize {
        assert!(Instant::now() < deadline, "reading {topic} took too long");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                messages.push((message.payload().unwrap_or_default().to_vec(), headers));
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    messages
}
