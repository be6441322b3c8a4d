//! The HTTP agent over real HTTP on loopback: each endpoint's answers, bad requests that never
//! stop it, a stale view on `/healthz`, the `wayfinder agent` binary, and 1,000 concurrent
//! resolves.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::descriptor;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wayfinder::agent::Agent;
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::resolve::select::ConsistentHash;
use wayfinder::resolve::HealthConfig;
use wayfinder::{Address, AddressResolver, Instance, Registration, ResolverConfig, RouteManager};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

struct Running {
    base: String,
    client: HttpClient,
    registry: MemoryRouteManager,
    _registrations: Vec<Registration>,
    server: tokio::task::JoinHandle<wayfinder::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An agent over a memory registry where `api/demo/a` is served on ports 7401-7403 (passive
/// health: one reported failure marks an address unhealthy; no active checks).
async fn agent(metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>) -> Running {
    let registry = MemoryRouteManager::default();
    let mut registrations = Vec::new();
    for port in 7401..=7403 {
        let instance = Instance::new(Address::new("127.0.0.1", port), vec![descriptor("A")]);
        registrations.push(registry.register(instance).await.unwrap());
    }
    let config = ResolverConfig {
        selector: Arc::new(ConsistentHash::default()),
        health: HealthConfig {
            enabled: false,
            failure_threshold: 1,
            ..HealthConfig::default()
        },
        ..ResolverConfig::default()
    };
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), config)
        .await
        .unwrap();
    let mut agent = Agent::new(Arc::new(resolver));
    if let Some(render) = metrics {
        agent = agent.with_metrics(move || render());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    Running {
        base,
        client: Client::builder(TokioExecutor::new()).build_http(),
        registry,
        _registrations: registrations,
        server: tokio::spawn(agent.serve(listener)),
    }
}

impl Running {
    async fn call(&self, method: Method, path: &str, body: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, text) = self.call(Method::GET, path, "").await;
        (status, serde_json::from_str(&text).unwrap())
    }

    async fn post(&self, path: &str, body: &str) -> (StatusCode, Value) {
        let (status, text) = self.call(Method::POST, path, body).await;
        (status, serde_json::from_str(&text).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_answers_one_pick_and_unknown_paths_are_404() {
    let running = agent(None).await;
    let (status, pick) = running.get("/v1/resolve/api/demo/a").await;
    assert_eq!(status, StatusCode::OK, "{pick}");
    assert_eq!(pick["service_id"], "Test.IDemoService.A");
    assert_eq!(pick["host"], "127.0.0.1");
    assert_eq!(pick["fail_open"], false);
    let port = pick["port"].as_u64().unwrap();
    assert!((7401..=7403).contains(&port), "{pick}");
    assert_eq!(pick["address"], format!("127.0.0.1:{port}"));
    // Case and an escaped slash decode as the resolver matches paths.
    let (status, _) = running.get("/v1/resolve/API%2Fdemo/A").await;
    assert_eq!(status, StatusCode::OK);
    // A key always lands on the same address (consistent hashing).
    let (_, first) = running.get("/v1/resolve/api/demo/a?key=user-42").await;
    for _ in 0..20 {
        let (_, again) = running.get("/v1/resolve/api/demo/a?key=user-42").await;
        assert_eq!(again["address"], first["address"]);
    }
    let (status, missing) = running.get("/v1/resolve/api/demo/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        missing["error"].as_str().unwrap().contains("nothing"),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_change_the_health_that_routes_show() {
    let running = agent(None).await;
    let (status, table) = running.get("/v1/routes").await;
    assert_eq!(status, StatusCode::OK);
    let route = &table["routes"][0];
    assert_eq!(route["path"], "api/demo/a");
    assert_eq!(route["state"], "healthy");
    assert_eq!(route["addresses"].as_array().unwrap().len(), 3);

    let (status, reported) = running
        .post(
            "/v1/report",
            r#"{"address": "127.0.0.1:7402", "ok": false}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reported}");
    assert_eq!(reported["healthy"], false);
    let (_, table) = running.get("/v1/routes").await;
    let route = &table["routes"][0];
    assert_eq!(route["state"], "degraded");
    let unhealthy: Vec<&Value> = route["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["healthy"] == false)
        .collect();
    assert_eq!(unhealthy.len(), 1);
    assert_eq!(unhealthy[0]["address"], "127.0.0.1:7402");
    for _ in 0..30 {
        let (_, pick) = running.get("/v1/resolve/api/demo/a").await;
        assert_ne!(pick["port"], 7402, "an unhealthy address was picked");
    }
    let (status, _) = running
        .post("/v1/report", r#"{"address": "127.0.0.1:7402", "ok": true}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_the_agent_keeps_serving() {
    let running = agent(None).await;
    let cases: [(Method, &str, &str, StatusCode); 6] = [
        (
            Method::POST,
            "/v1/report",
            "not json",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/report",
            r#"{"address": "nohost", "ok": true}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/report",
            r#"{"address": "10.9.9.9:1", "ok": true}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            "/v1/routes",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (Method::GET, "/v2/anything", "", StatusCode::NOT_FOUND),
        (Method::GET, "/metrics", "", StatusCode::NOT_FOUND),
    ];
    for (method, path, body, expected) in cases {
        let (status, text) = running.call(method.clone(), path, body).await;
        assert_eq!(status, expected, "{method} {path}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert!(error["error"].is_string(), "{method} {path}: {text}");
    }
    // Bytes that are not HTTP at all, and a body far beyond the limit.
    let address = running.base.trim_start_matches("http://").to_owned();
    let mut raw = tokio::net::TcpStream::connect(&address).await.unwrap();
    raw.write_all(b"\x16\x03\x01 definitely not http\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), raw.read_to_end(&mut answer)).await;
    let reply = String::from_utf8_lossy(&answer);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let huge = format!(r#"{{"address": "{}", "ok": true}}"#, "x".repeat(100_000));
    let (status, _) = running.call(Method::POST, "/v1/report", &huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = running.call(Method::PUT, "/v1/report", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = running.get("/v1/resolve/api/demo/a").await;
    assert_eq!(status, StatusCode::OK, "the agent still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_503_with_the_staleness_during_an_outage() {
    let running = agent(None).await;
    let (status, health) = running.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "fresh");
    running.registry.set_outage(true);
    let stale = common::eventually(Duration::from_secs(15), "a 503 from /healthz", || async {
        let (status, health) = running.get("/healthz").await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(health)
    })
    .await;
    assert_eq!(stale["status"], "stale");
    assert!(stale["staleness_seconds"].is_number(), "{stale}");
    // The view is kept: resolution goes on.
    let (status, _) = running.get("/v1/resolve/api/demo/a").await;
    assert_eq!(status, StatusCode::OK);
    running.registry.set_outage(false);
    common::eventually(Duration::from_secs(15), "a 200 from /healthz", || async {
        (running.get("/healthz").await.0 == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_resolves_all_succeed() {
    let running = Arc::new(agent(None).await);
    let mut calls = Vec::new();
    for i in 0..1_000 {
        let running = running.clone();
        calls.push(tokio::spawn(async move {
            let (status, pick) = running
                .get(&format!("/v1/resolve/api/demo/a?key=k{i}"))
                .await;
            (status, pick["port"].as_u64())
        }));
    }
    let mut ports = std::collections::BTreeMap::new();
    for call in calls {
        let (status, port) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        *ports.entry(port.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(ports.values().sum::<usize>(), 1_000);
    assert_eq!(ports.len(), 3, "keys spread over every address: {ports:?}");
}

/// `wayfinder agent`, the binary: it serves the same API with Prometheus metrics, from the
/// registry in its configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_agent_serves_resolves_and_prometheus_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.json");
    let backend = format!("file://{}", routes.display());
    let registry = wayfinder::connect(&backend).await.unwrap();
    let instance = Instance::new(Address::new("127.0.0.1", 7411), vec![descriptor("A")]);
    let registration = registry.register(instance).await.unwrap();
    let (mut child, line, _stdout) =
        common::cli::start(&["--backend", &backend, "agent", "--listen", "127.0.0.1:0"]).await;
    let line = line.expect("the agent says where it listens");
    let address = line
        .strip_prefix("agent listening on ")
        .expect(&line)
        .to_owned();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let get = |path: &str| {
        let request = Request::get(format!("http://{address}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client = client.clone();
        async move {
            let response = client.request(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let (status, pick) = get("/v1/resolve/api/demo/a").await;
    assert_eq!(status, StatusCode::OK, "{pick}");
    assert!(pick.contains("\"address\":\"127.0.0.1:7411\""), "{pick}");
    let (status, health) = get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let (status, text) = get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("wayfinder_resolutions_total{result=\"found\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("wayfinder_backend_request_duration_seconds_bucket{backend=\"file\""),
        "{text}"
    );
    child.kill().await.unwrap();
    registration.shutdown().await.unwrap();
}
