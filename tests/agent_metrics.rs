//! The agent's `/metrics` through a real Prometheus recorder, over real HTTP. A test binary of
//! its own: the recorder is process-wide, and other tests' figures would mix in.

mod common;

use std::sync::Arc;

use common::descriptor;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use wayfinder::agent::Agent;
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::resolve::HealthConfig;
use wayfinder::{Address, AddressResolver, Instance, ResolverConfig, RouteManager};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_as_prometheus_text() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let registry = MemoryRouteManager::default();
    let mut registrations = Vec::new();
    for port in 7421..=7423 {
        let instance = Instance::new(Address::new("127.0.0.1", port), vec![descriptor("A")]);
        registrations.push(registry.register(instance).await.unwrap());
    }
    let config = ResolverConfig {
        health: HealthConfig {
            enabled: false,
            ..HealthConfig::default()
        },
        ..ResolverConfig::default()
    };
    let resolver = AddressResolver::with_config(Arc::new(registry), config)
        .await
        .unwrap();
    let agent = Agent::new(Arc::new(resolver)).with_metrics(move || handle.render());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(agent.serve(listener));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let get = |path: &str| {
        let request = Request::get(format!("{base}{path}"))
            .body(Empty::new())
            .unwrap();
        let client = client.clone();
        async move {
            let response = client.request(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    for _ in 0..5 {
        assert_eq!(get("/v1/resolve/api/demo/a").await.0, StatusCode::OK);
    }
    assert_eq!(
        get("/v1/resolve/api/demo/nothing").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, text) = get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<&str> = text.lines().collect();
    for expected in [
        "wayfinder_resolutions_total{result=\"found\"} 5",
        "wayfinder_resolutions_total{result=\"not_found\"} 1",
        "wayfinder_endpoints{state=\"healthy\"} 3",
        "wayfinder_routes{state=\"healthy\"} 1",
        "wayfinder_registry_staleness_seconds 0",
        "wayfinder_registrations_total{backend=\"memory\",kind=\"first\"} 3",
    ] {
        assert!(lines.contains(&expected), "{expected} in\n{text}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("wayfinder_backend_request_duration_seconds")),
        "{text}"
    );
    server.abort();
    drop(registrations);
}
