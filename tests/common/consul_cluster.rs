//! A real two-agent Consul cluster for tests: one server agent and one client agent joined to it.
//!
//! Unlike [`super::consul_server::ConsulAgent`] (a single `-dev` agent that is its own server),
//! these are plain agents, each with a fresh data directory and its own free loopback ports
//! (HTTP, server RPC, serf LAN and WAN; DNS and gRPC off). Sessions created through the client
//! agent belong to the client's node, so killing the client agent invalidates them (and deletes
//! the keys they hold) while the server, and every other agent, stays up: what a node whose local
//! agent crashed looks like to the rest of the cluster. Both agents are killed when the cluster
//! is dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::consul_server::{consul_bin, request};
use super::etcd_server::free_port;

/// One agent of the cluster: its ports, data directory, role flags and process.
struct Agent {
    role: &'static str,
    http_port: u16,
    server_port: u16,
    serf_lan_port: u16,
    serf_wan_port: u16,
    data_dir: tempfile::TempDir,
    /// Flags that make it a server, or join it to one.
    role_args: Vec<String>,
    child: Option<Child>,
}

impl Agent {
    fn new(role: &'static str, role_args: Vec<String>) -> Agent {
        Agent {
            role,
            http_port: free_port(),
            server_port: free_port(),
            serf_lan_port: free_port(),
            serf_wan_port: free_port(),
            data_dir: tempfile::tempdir().expect("consul data directory"),
            role_args,
            child: None,
        }
    }

    fn spawn(&mut self) {
        let child = Command::new(consul_bin())
            .args(["agent", "-bind", "127.0.0.1", "-client", "127.0.0.1"])
            .arg("-data-dir")
            .arg(self.data_dir.path())
            .args(["-node", &self.node()])
            .args(["-http-port", &self.http_port.to_string()])
            .args(["-server-port", &self.server_port.to_string()])
            .args(["-serf-lan-port", &self.serf_lan_port.to_string()])
            .args(["-serf-wan-port", &self.serf_wan_port.to_string()])
            .args(["-dns-port", "-1", "-grpc-port", "-1", "-log-level", "error"])
            // Two agents on one host: never derive the node id from the host.
            .arg("-disable-host-node-id")
            .args(&self.role_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start consul {} agent: {e}", self.role));
        self.child = Some(child);
    }

    /// Waits until `ready` holds, failing after a minute.
    fn wait_until(&self, what: &str, ready: impl Fn(&Agent) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(self) {
            assert!(
                Instant::now() < deadline,
                "consul {} agent on {} did not {what} within a minute",
                self.role,
                self.endpoint()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn node(&self) -> String {
        format!("wayfinder-{}-{}", self.role, self.http_port)
    }

    fn request(&self, method: &str, path: &str) -> Option<String> {
        request(self.http_port, None, method, path)
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Before the data directory goes.
        self.kill();
    }
}

/// A Consul server agent (`-server -bootstrap-expect=1`) and a client agent joined to it.
pub struct ConsulCluster {
    server: Agent,
    client: Agent,
}

impl ConsulCluster {
    /// Starts both agents; returns once the server has elected itself leader, the client has
    /// joined, and a session can be created through the client agent. Blocking.
    pub fn start() -> ConsulCluster {
        let mut server = Agent::new(
            "server",
            vec![
                "-server".into(),
                "-bootstrap-expect=1".into(),
                // Election and leader-lease timings of a dev agent, not of a production one.
                "-hcl".into(),
                "performance { raft_multiplier = 1 }".into(),
            ],
        );
        server.spawn();
        let mut client = Agent::new("client", Vec::new());
        client.role_args = vec![
            "-retry-join".into(),
            format!("127.0.0.1:{}", server.serf_lan_port),
            "-retry-interval".into(),
            "1s".into(),
        ];
        client.spawn();
        let cluster = ConsulCluster { server, client };
        cluster.server.wait_until("elect a leader", |agent| {
            agent
                .request("GET", "/v1/status/leader")
                .is_some_and(|leader| leader.contains(':'))
        });
        cluster.wait_client_ready();
        cluster
    }

    /// Ready when a session can be created through the client agent: Consul refuses sessions
    /// until the client's node is in the catalog and its serfHealth check passes, which needs
    /// the join and a leader. The probe's session is destroyed again.
    fn wait_client_ready(&self) {
        self.client.wait_until("join and accept sessions", |agent| {
            let Some(created) = agent.request("PUT", "/v1/session/create") else {
                return false;
            };
            let id = created.split('"').nth(3).unwrap_or_default().to_owned();
            let _ = agent.request("PUT", &format!("/v1/session/destroy/{id}"));
            !id.is_empty()
        });
    }

    /// `127.0.0.1:port` of the server agent's HTTP API.
    pub fn server_endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// `127.0.0.1:port` of the client agent's HTTP API.
    pub fn client_endpoint(&self) -> String {
        self.client.endpoint()
    }

    /// The client agent's node name (sessions created through it belong to this node).
    pub fn client_node(&self) -> String {
        self.client.node()
    }

    /// Kills the client agent with SIGKILL: it neither leaves the cluster nor tells anyone. The
    /// servers notice through serf within seconds and invalidate its node's sessions.
    pub fn kill_client(&mut self) {
        self.client.kill();
    }

    /// Starts the client agent again (same ports, node and data directory; killed first if still
    /// running) and waits until it has rejoined and accepts sessions. Blocking.
    pub fn restart_client(&mut self) {
        self.client.kill();
        self.client.spawn();
        self.wait_client_ready();
    }
}
