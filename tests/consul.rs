//! The conformance suite against real Consul dev agents (from backends/install.sh).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::consul_server::ConsulAgent;
use common::proxy::CutProxy;
use common::Harness;
use wayfinder::{connect, RouteManager};

/// An agent per test, reached through a proxy that can cut it off (a restarted dev agent comes
/// back empty, which is a different scenario from an outage).
struct ConsulHarness {
    agent: ConsulAgent,
    proxy: CutProxy,
    prefix: String,
}

impl ConsulHarness {
    fn url(&self) -> String {
        format!(
            "consul://{}?prefix={}&ttl=10s&wait=5s&timeout=2s",
            self.proxy.endpoint(),
            self.prefix
        )
    }

    async fn put_raw(&self, key: &str, value: Vec<u8>) {
        // Straight to the agent's KV HTTP API, as curl would.
        let url = format!(
            "http://{}/v1/kv/{}{key}",
            self.agent.endpoint(),
            self.prefix
        );
        let response = reqwest::Client::new()
            .put(url)
            .body(value)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "put {key}: {}",
            response.status()
        );
    }
}

impl Harness for ConsulHarness {
    async fn new() -> Self {
        let agent = tokio::task::spawn_blocking(ConsulAgent::start)
            .await
            .unwrap();
        let proxy = CutProxy::start(agent.endpoint()).await;
        ConsulHarness {
            agent,
            proxy,
            prefix: format!("wayfinder-test/{:016x}/", fastrand::u64(..)),
        }
    }

    async fn client(&self) -> Arc<dyn RouteManager> {
        connect(&self.url()).await.unwrap()
    }

    async fn put_malformed(&self) {
        self.put_raw("Bad.Json/127.0.0.1_1", b"{not json".to_vec())
            .await;
        self.put_raw(
            "Bad.Mismatch/127.0.0.1_1",
            br#"{"AddressDescriptors":[{"Value":"{\"Ip\":\"127.0.0.1\",\"Port\":1}"}],"ServiceDescriptor":{"Id":"Someone.Else","RoutePath":"x"}}"#.to_vec(),
        )
        .await;
        self.put_raw(
            "Bad.Port/127.0.0.1_1",
            br#"{"AddressDescriptors":[{"Value":"{\"Ip\":\"127.0.0.1\",\"Port\":0}"}],"ServiceDescriptor":{"Id":"Bad.Port","RoutePath":"x"}}"#.to_vec(),
        )
        .await;
    }

    async fn break_backend(&self) {
        self.proxy.cut();
    }

    async fn restore_backend(&self) {
        self.proxy.restore();
    }

    fn settle_time() -> Duration {
        // An aborted blocking query's connection ends when its wait (5 s here) runs out and
        // the idle connection is dropped (2 s).
        Duration::from_secs(12)
    }

    fn expiry_bound(ttl: Duration) -> Duration {
        // Sessions live at least 10 s, and Consul may take up to twice the TTL to invalidate.
        ttl.max(Duration::from_secs(10)) * 2 + Duration::from_secs(2)
    }
}

conformance_suite!(ConsulHarness);
