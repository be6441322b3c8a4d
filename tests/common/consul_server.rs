//! Real Consul dev agents for tests: started on free loopback ports (HTTP, server, serf; DNS and
//! gRPC off), killed when dropped. The binary comes from `backends/install.sh`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::etcd_server::free_port;

fn consul_bin() -> PathBuf {
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
    child: Child,
}

impl ConsulAgent {
    /// Starts an agent and waits until it has a leader.
    pub fn start() -> Self {
        let http_port = free_port();
        let child = Command::new(consul_bin())
            .args([
                "agent",
                "-dev",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
            ])
            .args(["-node", &format!("wayfinder-test-{http_port}")])
            .args(["-http-port", &http_port.to_string()])
            .args(["-server-port", &free_port().to_string()])
            .args(["-serf-lan-port", &free_port().to_string()])
            .args(["-serf-wan-port", &free_port().to_string()])
            .args(["-dns-port", "-1", "-grpc-port", "-1", "-log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start consul");
        let agent = ConsulAgent { http_port, child };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // A leader, and this agent's own node in the catalog (sessions need it).
            let leader = self
                .get("/v1/status/leader")
                .is_some_and(|b| b.contains(':'));
            let node = format!("/v1/catalog/node/wayfinder-test-{}", self.http_port);
            if leader && self.get(&node).is_some_and(|b| b.contains("\"Node\"")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "consul on {} did not elect a leader",
                self.endpoint()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A plain HTTP/1.0 GET; the body, or `None` when the agent does not answer.
    fn get(&self, path: &str) -> Option<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.0 200")
            .then(|| body.to_owned())
            .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_owned()))
    }

    /// `127.0.0.1:port` of the HTTP API.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }
}

impl Drop for ConsulAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
