//! Real services started by the tests themselves, on loopback, stopped by their pid.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CBTEMULATOR: &str = "/usr/lib/google-cloud-sdk/platform/bigtable-emulator/cbtemulator";

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        let child = Command::new(Self::binary())
            .args(["-host", "127.0.0.1", "-port", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the Bigtable emulator starts");
        self.child = Some(child);
        wait_for_port(self.port, "the Bigtable emulator");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for BigtableEmulator {
    fn drop(&mut self) {
        self.stop();
    }
}
