//! Real Consul dev agents for tests: started on free loopback ports (HTTP, server, serf; DNS and
//! gRPC off), killed when dropped. The binary comes from `backends/install.sh`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::etcd_server::free_port;

/// The `consul` binary installed by `backends/install.sh`.
pub fn consul_bin() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("backends/.local/bin/consul");
    assert!(
        path.exists(),
        "consul is not installed at {}: run `bash backends/install.sh` (it fetches etcd and \
         Consul from Debian's packages into backends/.local)",
        path.display()
    );
    path
}

/// One `consul agent -dev`.
pub struct ConsulAgent {
    http_port: u16,
    other_ports: [u16; 3],
    /// Extra configuration (HCL), e.g. ACLs or limits.
    hcl: Vec<String>,
    /// Token for the readiness probe, when ACLs are on.
    token: Option<String>,
    child: Option<Child>,
}

impl ConsulAgent {
    /// Starts an agent and waits until it has a leader and its node is registered.
    pub fn start() -> Self {
        Self::start_with(&[], None)
    }

    /// Starts an agent with extra HCL configuration; `token` is used for the readiness probe.
    pub fn start_with(hcl: &[&str], token: Option<&str>) -> Self {
        let mut agent = ConsulAgent {
            http_port: free_port(),
            other_ports: [free_port(), free_port(), free_port()],
            hcl: hcl.iter().map(|h| h.to_string()).collect(),
            token: token.map(str::to_owned),
            child: None,
        };
        agent.spawn();
        agent.wait_ready();
        agent
    }

    fn spawn(&mut self) {
        let [server, lan, wan] = self.other_ports;
        let child = Command::new(consul_bin())
            .args([
                "agent",
                "-dev",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
            ])
            .args(["-node", &format!("wayfinder-test-{}", self.http_port)])
            .args(["-http-port", &self.http_port.to_string()])
            .args(["-server-port", &server.to_string()])
            .args(["-serf-lan-port", &lan.to_string()])
            .args(["-serf-wan-port", &wan.to_string()])
            .args(["-dns-port", "-1", "-grpc-port", "-1", "-log-level", "error"])
            .args(self.hcl.iter().flat_map(|h| ["-hcl", h.as_str()]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start consul");
        self.child = Some(child);
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Ready when a session can be created: Consul refuses sessions until the agent's
            // node is registered and its serfHealth check passes.
            if self
                .request("PUT", "/v1/session/create")
                .is_some_and(|b| b.contains("\"ID\""))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "consul on {} did not become ready",
                self.endpoint()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn request(&self, method: &str, path: &str) -> Option<String> {
        request(self.http_port, self.token.as_deref(), method, path)
    }

    /// `127.0.0.1:port` of the HTTP API.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// Kills the agent with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again on the same ports (a dev agent comes back empty).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready();
    }
}

impl Drop for ConsulAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP/1.0 request without a body to the agent whose HTTP API is on `http_port`; the
/// body, or `None` unless the agent answers 200. Blocking, for readiness probes.
pub fn request(http_port: u16, token: Option<&str>, method: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", http_port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nX-Consul-Token: {}\r\n\r\n",
        token.unwrap_or("")
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status_ok = head.split_whitespace().nth(1) == Some("200");
    status_ok.then(|| body.to_owned())
}
