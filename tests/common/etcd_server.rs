//! Real etcd servers for tests: started on free loopback ports with fresh data directories,
//! killed when dropped. The binaries come from `backends/install.sh`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory holding the installed server binaries.
fn server_bin(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("backends/.local/bin")
        .join(name);
    assert!(
        path.exists(),
        "{name} is not installed at {}: run `bash backends/install.sh` (it fetches etcd and Consul \
         from Debian's packages into backends/.local)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member.
pub struct EtcdServer {
    name: String,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    data_dir: tempfile::TempDir,
    child: Option<Child>,
}

impl EtcdServer {
    /// A single-member cluster, started and ready.
    pub fn start() -> Self {
        let (client_port, peer_port) = (free_port(), free_port());
        let name = format!("m{client_port}");
        let initial_cluster = format!("{name}=http://127.0.0.1:{peer_port}");
        let mut server = EtcdServer::new(name, client_port, peer_port, initial_cluster);
        server.spawn();
        server.wait_ready();
        server
    }

    fn new(name: String, client_port: u16, peer_port: u16, initial_cluster: String) -> Self {
        EtcdServer {
            name,
            client_port,
            peer_port,
            initial_cluster,
            data_dir: tempfile::tempdir().unwrap(),
            child: None,
        }
    }

    fn spawn(&mut self) {
        let client_url = format!("http://127.0.0.1:{}", self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(server_bin("etcd"))
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "wayfinder-test",
            ])
            .args(["--max-request-bytes", "8388608", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    /// Waits until the member answers on its client port.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new(server_bin("etcdctl"))
                .args([
                    "--endpoints",
                    &self.endpoint(),
                    "--command-timeout",
                    "1s",
                    "endpoint",
                    "health",
                ])
                .output()
                .expect("run etcdctl");
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd on {} did not become ready",
                self.endpoint()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:port` of the client listener.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// A wayfinder URL for this server with `prefix` and `ttl`.
    pub fn url(&self, prefix: &str, ttl: &str) -> String {
        format!(
            "etcd://{}?prefix={prefix}&ttl={ttl}&timeout=2s",
            self.endpoint()
        )
    }

    /// Kills the server with SIGKILL (the data directory stays).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready();
    }

    /// Runs etcdctl against this server.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(server_bin("etcdctl"))
            .args(["--endpoints", &self.endpoint()])
            .args(args)
            .output()
            .expect("run etcdctl")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-member cluster on loopback.
pub struct EtcdCluster {
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts three members and waits for all of them.
    pub fn start() -> Self {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .map(|(client, peer)| format!("m{client}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<EtcdServer> = ports
            .iter()
            .map(|(client, peer)| {
                EtcdServer::new(
                    format!("m{client}"),
                    *client,
                    *peer,
                    initial_cluster.clone(),
                )
            })
            .collect();
        for member in &mut members {
            member.spawn();
        }
        for member in &members {
            member.wait_ready();
        }
        EtcdCluster { members }
    }

    /// All client endpoints, comma-separated, for a URL.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(EtcdServer::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }
}
