//! A real etcd server for a test: Debian's `etcd` binary on loopback ports
//! of its own, with its data in a temporary directory, killed (by its PID)
//! and removed when dropped.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd.
pub struct Etcd {
    child: Child,
    dir: PathBuf,
    client_port: u16,
}

impl Etcd {
    /// Starts one etcd (a cluster of one) and waits until it serves, or
    /// `None` after a skip (see [`crate::skip`]) when etcd is not installed.
    #[track_caller]
    pub fn start() -> Option<Etcd> {
        let bin = crate::skip::find_tool("etcd").or_else(|| {
            let p = PathBuf::from("/usr/bin/etcd");
            p.exists().then_some(p)
        });
        let Some(bin) = bin else {
            crate::skip::skip("etcd is not installed (scripts/setup.sh installs etcd-server)");
            return None;
        };
        let (client_port, peer_port) = (crate::listen_port("127.0.0.1"), crate::listen_port("127.0.0.1"));
        let dir = std::env::temp_dir().join(format!("tidepool-etcd-{}-{client_port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd data directory");
        let (client, peer) = (format!("http://127.0.0.1:{client_port}"), format!("http://127.0.0.1:{peer_port}"));
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log");
        let child = Command::new(bin)
            .arg("--name=t")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            // No metrics or other listeners: loopback client and peer ports only.
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        let e = Etcd { child, dir, client_port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", client_port)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start:\n{}", e.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(e)
    }

    /// Its client URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
