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

/// A free TCP port on 127.0.0.1 for a test server, below Linux's ephemeral range (32768 up):
/// a port the system handed out and took back could be taken by an outgoing connection before
/// the server binds it. Never the same port twice in one test process.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = fastrand::u16(20_000..32_000);
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
}

/// One etcd member.
pub struct EtcdServer {
    name: String,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    data_dir: tempfile::TempDir,
    extra_args: Vec<String>,
    /// `--cacert/--cert/--key` for etcdctl when the client port speaks TLS.
    etcdctl_tls: Vec<String>,
    /// `--user` for etcdctl once authentication is on.
    etcdctl_user: Vec<String>,
    log: tempfile::NamedTempFile,
    child: Option<Child>,
}

impl EtcdServer {
    /// A single-member cluster, started and ready.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A single-member cluster whose client port requires TLS with client certificates
    /// (PEM files: CA, server certificate and key, client certificate and key).
    pub fn start_tls(ca: &str, server: (&str, &str), client: (&str, &str)) -> Self {
        let (client_port, peer_port) = (free_port(), free_port());
        let name = format!("m{client_port}");
        let initial_cluster = format!("{name}=http://127.0.0.1:{peer_port}");
        let mut server_ = EtcdServer::new(name, client_port, peer_port, initial_cluster);
        server_.extra_args = [
            "--cert-file",
            server.0,
            "--key-file",
            server.1,
            "--trusted-ca-file",
            ca,
            "--client-cert-auth",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        server_.etcdctl_tls = [
            "--insecure-transport=false",
            "--cacert",
            ca,
            "--cert",
            client.0,
            "--key",
            client.1,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        server_.spawn();
        server_.wait_ready();
        server_
    }

    fn scheme(&self) -> &'static str {
        if self.etcdctl_tls.is_empty() {
            "http"
        } else {
            "https"
        }
    }

    /// A single-member cluster started with extra command-line flags.
    pub fn start_with(extra_args: &[&str]) -> Self {
        let (client_port, peer_port) = (free_port(), free_port());
        let name = format!("m{client_port}");
        let initial_cluster = format!("{name}=http://127.0.0.1:{peer_port}");
        let mut server = EtcdServer::new(name, client_port, peer_port, initial_cluster);
        server.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
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
            extra_args: Vec::new(),
            etcdctl_tls: Vec::new(),
            etcdctl_user: Vec::new(),
            log: tempfile::NamedTempFile::new().unwrap(),
            child: None,
        }
    }

    fn spawn(&mut self) {
        let client_url = format!("{}://127.0.0.1:{}", self.scheme(), self.client_port);
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
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(self.log.reopen().unwrap())
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
                    &self.etcdctl_endpoint(),
                    "--command-timeout",
                    "1s",
                ])
                .args(&self.etcdctl_tls)
                .args(&self.etcdctl_user)
                .args(["endpoint", "health"])
                .output()
                .expect("run etcdctl");
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd on {} did not become ready: {}\netcd's log ends: {}",
                self.endpoint(),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.log.path())
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:port` of the client listener.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The client URL with its scheme, for etcdctl.
    fn etcdctl_endpoint(&self) -> String {
        format!("{}://{}", self.scheme(), self.endpoint())
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

    /// Whether the server process is running (it was not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// This member's id and the id of the leader it follows (0 when it knows none), from
    /// `etcdctl endpoint status`; `None` when the member does not answer.
    pub fn raft_status(&self) -> Option<(u64, u64)> {
        let out = self.etcdctl(&[
            "--command-timeout",
            "1s",
            "endpoint",
            "status",
            "-w",
            "json",
        ]);
        if !out.status.success() {
            return None;
        }
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let status = &doc[0]["Status"];
        Some((
            status["header"]["member_id"].as_u64()?,
            status["leader"].as_u64()?,
        ))
    }

    /// Starts the server again on the same ports with an empty data directory, as a store that
    /// was lost and rebuilt: every key, lease and revision is gone.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.data_dir.path());
        std::fs::create_dir_all(self.data_dir.path()).unwrap();
        self.spawn();
        self.wait_ready();
    }

    /// Starts the server again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready();
    }

    /// Makes etcdctl (here and in `wait_ready`) authenticate as `user:password`, for a server
    /// with authentication on.
    pub fn use_etcdctl_user(&mut self, user_and_password: &str) {
        self.etcdctl_user = vec!["--user".to_owned(), user_and_password.to_owned()];
    }

    /// Runs etcdctl against this server and insists that it succeeds.
    pub fn etcdctl_ok(&self, args: &[&str]) {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs etcdctl against this server.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(server_bin("etcdctl"))
            .args(["--endpoints", &self.etcdctl_endpoint()])
            .args(&self.etcdctl_tls)
            .args(&self.etcdctl_user)
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

    /// The index of the member that is the leader, as the running members see it: waits (up to
    /// 20 s) until a running member reports itself as the leader.
    pub fn leader_index(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leader = self.members.iter().position(|member| {
                member.is_running()
                    && member
                        .raft_status()
                        .is_some_and(|(id, leader)| id == leader)
            });
            if let Some(index) = leader {
                return index;
            }
            assert!(
                Instant::now() < deadline,
                "no etcd member became the leader"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client endpoints with member `first` first, comma-separated, for a URL.
    pub fn endpoints_starting_with(&self, first: usize) -> String {
        let count = self.members.len();
        (0..count)
            .map(|step| self.members[(first + step) % count].endpoint())
            .collect::<Vec<_>>()
            .join(",")
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
