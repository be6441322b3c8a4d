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
    agent: Arc<std::sync::Mutex<ConsulAgent>>,
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

    fn agent_endpoint(&self) -> String {
        self.agent.lock().unwrap().endpoint()
    }

    async fn put_raw(&self, key: &str, value: Vec<u8>) {
        // Straight to the agent's KV HTTP API, as curl would.
        let url = format!(
            "http://{}/v1/kv/{}{key}",
            self.agent_endpoint(),
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
            agent: Arc::new(std::sync::Mutex::new(agent)),
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

    async fn put_surging_route(&self, service_id: &str, value: &[u8]) {
        self.put_raw(service_id, value.to_vec()).await;
    }

    async fn delete_entries_by_hand(&self) {
        // As `consul kv delete -recurse` does: the keys go, the sessions stay.
        let url = format!(
            "http://{}/v1/kv/{}?recurse=true",
            self.agent_endpoint(),
            self.prefix
        );
        let response = reqwest::Client::new().delete(url).send().await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
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

use std::time::Instant;

use common::consul_cluster::ConsulCluster;
use common::lookups::Lookups;
use common::{eventually, init_logging, initial_routes, instance, next_event};
use wayfinder::{AddressResolver, RouteEvent};

/// A session destroyed through the HTTP API: its keys go, and the instance registers again
/// within 2 x TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroyed_session_is_replaced_within_two_ttls() {
    init_logging();
    let h = ConsulHarness::new().await;
    let client = h.client().await;
    let _reg = client.register(instance(7801, &["A"])).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!(
        "http://{}/v1/kv/{}?recurse=true",
        h.agent_endpoint(),
        h.prefix
    );
    let pairs: Vec<serde_json::Value> = http.get(&url).send().await.unwrap().json().await.unwrap();
    let session = pairs[0]["Session"]
        .as_str()
        .expect("the key is held by a session")
        .to_owned();
    let destroy = format!("http://{}/v1/session/destroy/{session}", h.agent_endpoint());
    assert!(http
        .put(destroy)
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    let destroyed = Instant::now();
    let ttl = Duration::from_secs(10);
    eventually(ttl * 2, "re-registration", || async {
        let routes = client.list().await.ok()?;
        (routes.len() == 1).then_some(())
    })
    .await;
    assert!(destroyed.elapsed() <= ttl * 2);
}

/// An instance process killed with SIGKILL: its session lapses (Consul may take up to 2 x TTL)
/// and the watch reports its routes removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_instance_is_reported_removed() {
    init_logging();
    let h = ConsulHarness::new().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.json");
    std::fs::write(
        &routes,
        br#"[{"Id":"Svc.IWorkService.Run","RoutePath":"api/work/run"}]"#,
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wayfinder"))
        .args([
            "--backend",
            &h.url(),
            "register",
            "--address",
            "127.0.0.1:7811",
            "--ttl",
            "10",
            "--routes",
        ])
        .arg(&routes)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut watch = h.client().await.watch().await.unwrap();
    if initial_routes(&mut watch).await.is_empty() {
        assert!(matches!(
            next_event(&mut watch, Duration::from_secs(10)).await,
            RouteEvent::Created(_)
        ));
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let bound = ConsulHarness::expiry_bound(Duration::from_secs(10));
    match next_event(&mut watch, bound).await {
        RouteEvent::Removed(route) => assert_eq!(route.id(), "Svc.IWorkService.Run"),
        other => panic!("unexpected {other:?}"),
    }
}

/// The agent killed and restarted (a dev agent comes back empty): clients serve the last good
/// routes meanwhile, every live instance registers itself again, and a client resolving through
/// the whole window (outage, then a registry that comes back empty and refills) sees no failed
/// lookup: the index going backwards is a reset, and empty protection holds what it removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_empty_agent_gets_every_live_instance_back() {
    init_logging();
    let h = ConsulHarness::new().await;
    let writer = h.client().await;
    let _a = writer.register(instance(7821, &["A"])).await.unwrap();
    let _b = writer.register(instance(7822, &["B"])).await.unwrap();
    let config = common::without_health_checks();
    let resolver = AddressResolver::with_config(h.client().await, config)
        .await
        .unwrap();
    assert_eq!(resolver.stats().routes, 2);
    let resolver = Arc::new(resolver);
    let lookups = Lookups::start(resolver.clone(), &["api/demo/a", "api/demo/b"]);

    let agent = h.agent.clone();
    tokio::task::spawn_blocking(move || agent.lock().unwrap().kill())
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "a stale view", || async {
        resolver.stats().stale.then_some(())
    })
    .await;
    assert_eq!(
        resolver
            .resolve_path("api/demo/a", None)
            .await
            .unwrap()
            .address()
            .port,
        7821
    );

    let agent = h.agent.clone();
    tokio::task::spawn_blocking(move || agent.lock().unwrap().restart())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "both instances registered again",
        || async {
            let table = resolver.table();
            (table.by_path("api/demo/a").is_some()
                && table.by_path("api/demo/b").is_some()
                && !resolver.stats().stale)
                .then_some(())
        },
    )
    .await;
    assert_eq!(writer.list().await.unwrap().len(), 2);
    eventually(Duration::from_secs(30), "protection over", || async {
        (resolver.stats().protected_routes == 0).then_some(())
    })
    .await;
    let count = lookups.finish("consul agent restarted empty").await;
    assert!(count.total > 100, "{count:?}");
    assert_eq!(count.failures, 0, "{count:?}");
}

/// ACLs on (default deny): a writer registers; a read-only token can resolve but not register;
/// a wrong token gets a clear error; no token shows up in Debug output or error messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_tokens_are_enforced_and_never_shown() {
    init_logging();
    const ROOT: &str = "wayfinder-root-token-1f2e3d";
    let agent = tokio::task::spawn_blocking(|| {
        ConsulAgent::start_with(
            &[r#"acl { enabled = true, default_policy = "deny", tokens { master = "wayfinder-root-token-1f2e3d" } }"#],
            Some(ROOT),
        )
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let api = |path: &str| format!("http://{}{path}", agent.endpoint());
    let mut secrets = Vec::new();
    for (name, rules) in [
        (
            "writer",
            r#"key_prefix "app/" { policy = "write" } session_prefix "" { policy = "write" } node_prefix "" { policy = "read" }"#,
        ),
        ("reader", r#"key_prefix "app/" { policy = "read" }"#),
    ] {
        let policy = serde_json::json!({"Name": format!("wayfinder-{name}"), "Rules": rules});
        let response = http
            .put(api("/v1/acl/policy"))
            .header("X-Consul-Token", ROOT)
            .json(&policy)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "policy {name}: {}",
            response.text().await.unwrap()
        );
        let token = serde_json::json!({"Policies": [{"Name": format!("wayfinder-{name}")}]});
        let created: serde_json::Value = http
            .put(api("/v1/acl/token"))
            .header("X-Consul-Token", ROOT)
            .json(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        secrets.push(created["SecretID"].as_str().unwrap().to_owned());
    }
    let url = |token: &str| {
        format!(
            "consul://{}?prefix=app/&ttl=10s&wait=5s&timeout=2s&token={token}",
            agent.endpoint()
        )
    };

    let writer = connect(&url(&secrets[0])).await.unwrap();
    let _reg = writer.register(instance(7831, &["A"])).await.unwrap();
    assert_eq!(writer.list().await.unwrap().len(), 1);
    assert!(
        !format!("{writer:?}").contains(&secrets[0]),
        "the token shows in Debug"
    );

    let reader = connect(&url(&secrets[1])).await.unwrap();
    let config = common::without_health_checks();
    let resolver = AddressResolver::with_config(reader.clone(), config)
        .await
        .unwrap();
    assert_eq!(
        resolver
            .resolve_path("api/demo/a", None)
            .await
            .unwrap()
            .address()
            .port,
        7831
    );
    let refused = reader.register(instance(7832, &["B"])).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        wayfinder::ErrorKind::PermissionDenied,
        "{refused}"
    );
    assert!(
        !refused.to_string().contains(&secrets[1]),
        "the token shows in an error: {refused}"
    );

    let wrong = connect(&url("not-a-real-token")).await.unwrap();
    let denied = wrong.list().await.unwrap_err();
    assert_eq!(
        denied.kind(),
        wayfinder::ErrorKind::PermissionDenied,
        "{denied}"
    );
    assert!(
        !denied.to_string().contains("not-a-real-token"),
        "the token shows in an error: {denied}"
    );
}

/// The session holding `prefix`'s one key, read straight from the agent at `agent`'s KV API;
/// `None` while there is no key.
async fn holding_session(http: &reqwest::Client, agent: &str, prefix: &str) -> Option<String> {
    let url = format!("http://{agent}/v1/kv/{prefix}?recurse=true");
    let response = http.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let pairs: Vec<serde_json::Value> = response.json().await.ok()?;
    pairs.first()?["Session"].as_str().map(str::to_owned)
}

/// An instance registered through its node's client agent (the server agent second), and that
/// client agent killed: Consul invalidates the client node's sessions and deletes their keys,
/// and the instance registers again through the server agent. The instance never stopped
/// serving, so a long-lived resolver (on a manager of its own, through the server) should fail
/// no lookup meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_agent_dying_under_a_healthy_instance() {
    init_logging();
    let mut cluster = tokio::task::spawn_blocking(ConsulCluster::start)
        .await
        .unwrap();
    let prefix = format!("wayfinder-test/{:016x}/", fastrand::u64(..));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            drop(connection);
        }
    });

    let writer = connect(&format!(
        "consul://{},{}?prefix={prefix}&ttl=10s",
        cluster.client_endpoint(),
        cluster.server_endpoint()
    ))
    .await
    .unwrap();
    let reg = writer.register(instance(port, &["A"])).await.unwrap();
    let reader = connect(&format!(
        "consul://{}?prefix={prefix}",
        cluster.server_endpoint()
    ))
    .await
    .unwrap();
    let resolver = Arc::new(
        AddressResolver::with_config(reader, common::without_health_checks())
            .await
            .unwrap(),
    );
    let resolved = resolver.resolve_path("api/demo/a", None).await.unwrap();
    assert_eq!(resolved.address().port, port);

    let http = reqwest::Client::new();
    let server = cluster.server_endpoint();
    let first_session = holding_session(&http, &server, &prefix)
        .await
        .expect("the key is held by a session");
    let lookups = Lookups::start(resolver.clone(), &["api/demo/a"]);
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.kill_client());
    eventually(
        Duration::from_secs(30),
        "the instance registered again through the server agent",
        || async {
            holding_session(&http, &server, &prefix)
                .await
                .filter(|session| *session != first_session)
        },
    )
    .await;
    let registered_again = killed.elapsed();
    eventually(Duration::from_secs(5), "protection over", || async {
        (resolver.stats().protected_routes == 0).then_some(())
    })
    .await;

    let counts = lookups
        .finish("consul client agent killed under a healthy instance")
        .await;
    eprintln!(
        "client agent killed; registered again through the server after {registered_again:?}; \
         lookups: {counts:?}"
    );
    serving.abort();
    reg.shutdown().await.unwrap();
    assert_eq!(
        counts.failures, 0,
        "lookups failed for {:?} while the instance was registering again: {counts:?}",
        counts.failing_for
    );
}
