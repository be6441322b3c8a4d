//! The HTTP agent's resolve round trip against a raw HTTP round trip, same machine, same run.
//!
//! Both servers are hyper HTTP/1.1 on loopback in this process; the client sends requests one
//! after another on one keep-alive connection. The raw server answers every request with a fixed
//! JSON body of the agent's answer's size; the agent answers `GET /v1/resolve/<path>` from a
//! resolver over 10k routes (round robin, health checks off). The figure is the median of 15
//! batches of 5,000 requests; the target is the agent within 1.5x the raw round trip.
//!
//! Run with `cargo bench --bench agent --features agent`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use wayfinder::agent::Agent;
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::resolve::HealthConfig;
use wayfinder::route::{encode_route, DEFAULT_PREFIX};
use wayfinder::{Address, AddressResolver, ResolverConfig, ServiceDescriptor, ServiceRoute};

const ROUTES: usize = 10_000;
const REQUESTS: usize = 5_000;
const BATCHES: usize = 15;

/// A body the size of the agent's answer.
const RAW_BODY: &str = r#"{"address":"10.0.19.137:9000","fail_open":false,"host":"10.0.19.137","port":9000,"service_id":"Bench.ISvc5000Service.Get"}"#;

/// A hyper server answering every request with [`RAW_BODY`].
async fn raw_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request: Request<Incoming>| async {
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(RAW_BODY.as_bytes())));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// The agent over a resolver of [`ROUTES`] routes of 8 addresses each.
async fn agent_server() -> String {
    let registry = MemoryRouteManager::default();
    for i in 0..ROUTES {
        let addresses = (0..8)
            .map(|k| Address::new(format!("10.0.{}.{}", (i * 8 + k) % 64, k + 1), 9000))
            .collect();
        let descriptor = ServiceDescriptor::new(
            format!("Bench.ISvc{i}Service.Get"),
            format!("api/svc{i}/get"),
        );
        let route = ServiceRoute::new(descriptor, addresses);
        registry.insert_raw(
            &format!("{DEFAULT_PREFIX}{}", route.id()),
            encode_route(&route).unwrap(),
        );
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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(Agent::new(Arc::new(resolver)).serve(listener));
    address
}

/// One keep-alive connection to `address`.
async fn connection(address: &str) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// The median over [`BATCHES`] batches of [`REQUESTS`] sequential round trips, in µs each.
async fn median_round_trip_us(address: &str, path: &str) -> f64 {
    let mut sender = connection(address).await;
    let mut batches = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let started = Instant::now();
        for _ in 0..REQUESTS {
            sender.ready().await.unwrap();
            let request = Request::get(path)
                .header(hyper::header::HOST, address)
                .body(Empty::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert!(response.status().is_success());
            let body = response.into_body().collect().await.unwrap().to_bytes();
            std::hint::black_box(body);
        }
        batches.push(started.elapsed().as_secs_f64() * 1e6 / REQUESTS as f64);
    }
    batches.sort_by(f64::total_cmp);
    batches[BATCHES / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let raw = raw_server().await;
    let agent = agent_server().await;
    let path = format!("/v1/resolve/api/svc{}/get", ROUTES / 2);
    // Warm both up, then measure them in turn, twice, and keep each one's better figure.
    median_round_trip_us(&raw, "/").await;
    median_round_trip_us(&agent, &path).await;
    let mut raw_us = f64::MAX;
    let mut agent_us = f64::MAX;
    for _ in 0..2 {
        raw_us = raw_us.min(median_round_trip_us(&raw, "/").await);
        agent_us = agent_us.min(median_round_trip_us(&agent, &path).await);
    }
    println!("raw hyper HTTP/1.1 round trip, static JSON:          {raw_us:7.1} µs");
    println!(
        "agent GET /v1/resolve, {ROUTES} routes, round robin: {agent_us:7.1} µs  = {:.2}x raw (target 1.50x)",
        agent_us / raw_us
    );
}
