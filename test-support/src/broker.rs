//! A Kafka-compatible broker for one test: in memory, on a free loopback port, killed
//! when the test ends. Two brokers: tansu (transactions, for the transactional path) and
//! nisshi (a group coordinator that reassigns a lost member's partitions with three or
//! more members, no transactions: for the multi-node tests).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub address: String,
    child: Child,
}

/// Which broker a test runs on.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Tansu,
    Nisshi,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tansu => "tansu",
            Kind::Nisshi => "nisshi",
        }
    }

    /// Where the binary is: `WELLSPRING_TANSU` / `WELLSPRING_NISSHI`, else where
    /// `scripts/install-tansu` / `scripts/install-nisshi` put it (running the script when
    /// it is not there yet).
    fn binary(self) -> PathBuf {
        let name = self.name();
        if let Ok(path) = std::env::var(format!("WELLSPRING_{}", name.to_uppercase())) {
            return PathBuf::from(path);
        }
        let root = crate::repository_root();
        let installed = root.join(".tools/bin").join(name);
        if !installed.exists() {
            let status = Command::new(root.join(format!("scripts/install-{name}")))
                .stdout(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("scripts/install-{name} did not run: {e}"));
            assert!(
                status.success() && installed.exists(),
                "no Kafka-compatible broker: scripts/install-{name} failed; or set \
                 WELLSPRING_{} to a {name} binary",
                name.to_uppercase()
            );
        }
        installed
    }
}

impl Broker {
    /// Starts tansu (transactions supported) and returns once it accepts connections.
    pub fn start() -> Broker {
        Broker::launch(Kind::Tansu)
    }

    /// Starts nisshi, the broker for tests with three or more members in a group (no
    /// transactions: nodes on it run with `--no-transactions`).
    pub fn start_for_groups() -> Broker {
        Broker::launch(Kind::Nisshi)
    }

    fn launch(kind: Kind) -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let storage = format!("memory://{}/", kind.name());
        let child = Command::new(kind.binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                &storage,
                "--silent",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} did not start: {e}", kind.name()));
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} never listened on {address}",
                kind.name()
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
