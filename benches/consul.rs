//! Consul backend benchmarks against a real dev agent started here, each beside its raw baseline
//! in the same run (DESIGN.md section 6):
//!
//! * cold load of 10k routes: `list()` and a whole resolver start, vs one raw `?recurse` GET;
//! * propagation put -> resolver table, p50 / p99, vs a raw blocking query on the same puts;
//! * registration of 1,000 routes of one instance;
//! * 50 instances registering the same 20 routes at once, in each layout (addresses lost must
//!   be 0).
//!
//! Run with `cargo bench --bench consul` after `bash backends/install.sh`.

#[path = "../tests/common/etcd_server.rs"]
#[allow(dead_code)] // shared with the tests; only free_port is used here
mod etcd_server;

#[path = "../tests/common/consul_server.rs"]
#[allow(dead_code)]
mod consul_server;

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{descriptor, herd, median, ms, no_health, percentile, print_herd, ROUTES, RUNS};

use base64::Engine;
use consul_server::ConsulAgent;
use wayfinder::backends::consul::{ConsulConfig, ConsulRouteManager};
use wayfinder::route::{encode_route, KeyLayout, LayoutStyle};
use wayfinder::{
    Address, AddressResolver, Instance, RouteManager, RouteSource, ServiceDescriptor, ServiceRoute,
};

const PROPAGATIONS: usize = 200;

fn config(agent: &ConsulAgent, prefix: &str) -> ConsulConfig {
    let mut config = ConsulConfig::new([agent.endpoint()]);
    config.layout = KeyLayout::new(prefix).unwrap();
    config.wait = Duration::from_secs(30);
    config.timeout = Duration::from_secs(10);
    config
}

async fn fill(http: &reqwest::Client, agent: &ConsulAgent, prefix: &str) {
    let ops: Vec<serde_json::Value> = (0..ROUTES)
        .map(|i| {
            let host = format!("10.0.{}.{}", i / 250, i % 250 + 1);
            let route = ServiceRoute::new(descriptor(i), vec![Address::new(host.clone(), 9000)]);
            let value = base64::engine::general_purpose::STANDARD.encode(encode_route(&route).unwrap());
            serde_json::json!({"KV": {"Verb": "set", "Key": format!("{prefix}{}/{host}_9000", route.id()), "Value": value}})
        })
        .collect();
    for batch in ops.chunks(64) {
        let url = format!("http://{}/v1/txn", agent.endpoint());
        let response = http.put(url).json(&batch).send().await.unwrap();
        assert!(response.status().is_success());
    }
}

async fn cold_load(agent: &ConsulAgent, http: &reqwest::Client) {
    let prefix = "bench/cold/";
    fill(http, agent, prefix).await;
    let manager = ConsulRouteManager::new(config(agent, prefix)).unwrap();
    let (mut raw, mut listed, mut started) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        let url = format!("http://{}/v1/kv/{prefix}?recurse=true", agent.endpoint());
        let body = http.get(url).send().await.unwrap().bytes().await.unwrap();
        raw.push(t.elapsed());
        assert!(body.len() > ROUTES * 100);

        let t = Instant::now();
        assert_eq!(manager.list().await.unwrap().len(), ROUTES);
        listed.push(t.elapsed());

        let fresh = Arc::new(ConsulRouteManager::new(config(agent, prefix)).unwrap());
        let t = Instant::now();
        let resolver = AddressResolver::with_config(fresh, no_health())
            .await
            .unwrap();
        started.push(t.elapsed());
        assert_eq!(resolver.stats().routes, ROUTES);
    }
    let (raw, listed, started) = (median(raw), median(listed), median(started));
    println!("cold load of {ROUTES} routes (median of {RUNS}):");
    println!("  raw ?recurse GET                {}", ms(raw));
    println!(
        "  wayfinder list()                {}  = {:.2}x raw",
        ms(listed),
        listed.as_secs_f64() / raw.as_secs_f64()
    );
    println!(
        "  wayfinder resolver start        {}  = {:.2}x raw",
        ms(started),
        started.as_secs_f64() / raw.as_secs_f64()
    );
}

async fn propagation(agent: &ConsulAgent, http: &reqwest::Client) {
    let prefix = "bench/propagation/";
    let manager = Arc::new(ConsulRouteManager::new(config(agent, prefix)).unwrap());
    let resolver = Arc::new(
        AddressResolver::with_config(manager, no_health())
            .await
            .unwrap(),
    );
    // The raw baseline: one blocking query loop on the same prefix, stamping each new index.
    let (stamps, mut stamped) = tokio::sync::mpsc::unbounded_channel();
    let (raw_http, endpoint) = (http.clone(), agent.endpoint());
    tokio::spawn(async move {
        let mut index = 0u64;
        loop {
            let url =
                format!("http://{endpoint}/v1/kv/{prefix}?recurse=true&index={index}&wait=30s");
            let Ok(response) = raw_http.get(url).send().await else {
                return;
            };
            let at = Instant::now();
            let next = response
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let _ = response.bytes().await;
            if index != 0 && next > index {
                let _ = stamps.send(at);
            }
            index = next.max(1);
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // let the raw loop reach its first wait

    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for i in 0..PROPAGATIONS {
        let route = ServiceRoute::new(descriptor(i), vec![Address::new("10.1.0.1", 9000)]);
        let key = format!("{prefix}{}/10.1.0.1_9000", route.id());
        let id = route.id().to_owned();
        let watcher = resolver.clone();
        let seen = tokio::task::spawn_blocking(move || {
            while watcher.try_resolve_id(&id, None).is_none() {
                std::thread::sleep(Duration::from_micros(20));
            }
            Instant::now()
        });
        let started = Instant::now();
        let url = format!("http://{}/v1/kv/{key}", agent.endpoint());
        http.put(url)
            .body(encode_route(&route).unwrap())
            .send()
            .await
            .unwrap();
        raw.push(stamped.recv().await.unwrap() - started);
        ours.push(seen.await.unwrap() - started);
    }
    let (raw50, raw99) = (percentile(&mut raw, 0.5), percentile(&mut raw, 0.99));
    let (our50, our99) = (percentile(&mut ours, 0.5), percentile(&mut ours, 0.99));
    println!("propagation put -> visible, {PROPAGATIONS} puts:");
    println!(
        "  raw blocking query              p50 {}  p99 {}",
        ms(raw50),
        ms(raw99)
    );
    println!(
        "  wayfinder resolver table        p50 {}  p99 {}  = {:.2}x / {:.2}x raw",
        ms(our50),
        ms(our99),
        our50.as_secs_f64() / raw50.as_secs_f64(),
        our99.as_secs_f64() / raw99.as_secs_f64()
    );
}

async fn registration(agent: &ConsulAgent) {
    let manager = ConsulRouteManager::new(config(agent, "bench/register/")).unwrap();
    let routes: Vec<ServiceDescriptor> = (0..1000).map(descriptor).collect();
    let mut samples = Vec::new();
    for run in 0..RUNS {
        let instance = Instance::new(Address::new("10.2.0.1", 9000 + run as u16), routes.clone());
        let t = Instant::now();
        let registration = manager.register(instance).await.unwrap();
        samples.push(t.elapsed());
        registration.shutdown().await.unwrap();
    }
    println!(
        "registration of 1,000 routes of one instance: {} (median of {RUNS})",
        ms(median(samples))
    );

    let instances = ConsulRouteManager::new(config(agent, "bench/herd/")).unwrap();
    let mut surging = config(agent, "bench/herd-surging/");
    surging.layout = surging.layout.with_style(LayoutStyle::Surging);
    let surging = ConsulRouteManager::new(surging).unwrap();
    print_herd(
        herd(Arc::new(instances)).await,
        herd(Arc::new(surging)).await,
    );
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let agent = ConsulAgent::start();
    let http = reqwest::Client::new();
    runtime.block_on(async {
        cold_load(&agent, &http).await;
        propagation(&agent, &http).await;
        registration(&agent).await;
    });
}
