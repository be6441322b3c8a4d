//! etcd backend benchmarks against a real etcd started here, each beside its raw baseline in the
//! same run (DESIGN.md section 6):
//!
//! * cold load of 10k routes: `list()` and a whole resolver start, vs one raw etcd-client range
//!   read and `etcdctl get --prefix` of the same keys;
//! * propagation put -> resolver table, p50 / p99, vs a raw etcd-client watch on the same puts;
//! * registration of 1,000 routes of one instance;
//! * 50 instances registering the same 20 routes at once, in each layout (addresses lost must
//!   be 0).
//!
//! Run with `cargo bench --features etcd --bench etcd` after `bash backends/install.sh`.

#[path = "../tests/common/etcd_server.rs"]
#[allow(dead_code)] // shared with the tests; the cluster helpers are theirs
mod etcd_server;

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{descriptor, herd, median, ms, no_health, percentile, print_herd, ROUTES, RUNS};

use etcd_client::{EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use etcd_server::EtcdServer;
use wayfinder::backends::etcd::{EtcdConfig, EtcdRouteManager};
use wayfinder::route::{encode_route, KeyLayout, LayoutStyle};
use wayfinder::{
    Address, AddressResolver, Instance, RouteManager, RouteSource, ServiceDescriptor, ServiceRoute,
};

const PROPAGATIONS: usize = 300;

fn manager_config(server: &EtcdServer, prefix: &str) -> EtcdConfig {
    let mut config = EtcdConfig::new([server.endpoint()]);
    config.layout = KeyLayout::new(prefix).unwrap();
    config
}

async fn fill(client: &mut etcd_client::Client, prefix: &str) {
    let ops: Vec<TxnOp> = (0..ROUTES)
        .map(|i| {
            let address = Address::new(format!("10.0.{}.{}", i / 250, i % 250 + 1), 9000);
            let route = ServiceRoute::new(descriptor(i), vec![address]);
            let key = format!(
                "{prefix}{}/10.0.{}.{}_9000",
                route.id(),
                i / 250,
                i % 250 + 1
            );
            TxnOp::put(key, encode_route(&route).unwrap(), None::<PutOptions>)
        })
        .collect();
    for batch in ops.chunks(128) {
        client
            .txn(Txn::new().and_then(batch.to_vec()))
            .await
            .unwrap();
    }
}

async fn cold_load(server: &EtcdServer) {
    let prefix = "bench/cold/";
    let mut client = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .unwrap();
    fill(&mut client, prefix).await;
    let manager = EtcdRouteManager::connect(manager_config(server, prefix))
        .await
        .unwrap();

    let mut raw = Vec::new();
    let mut listed = Vec::new();
    let mut resolver_start = Vec::new();
    let mut etcdctl = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let response = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        raw.push(t.elapsed());
        assert_eq!(response.kvs().len(), ROUTES);

        let t = Instant::now();
        assert_eq!(manager.list().await.unwrap().len(), ROUTES);
        listed.push(t.elapsed());

        let fresh = Arc::new(
            EtcdRouteManager::connect(manager_config(server, prefix))
                .await
                .unwrap(),
        );
        let t = Instant::now();
        let config = no_health();
        let resolver = AddressResolver::with_config(fresh, config).await.unwrap();
        resolver_start.push(t.elapsed());
        assert_eq!(resolver.stats().routes, ROUTES);

        let t = Instant::now();
        let out = server.etcdctl(&["get", prefix, "--prefix", "-w", "protobuf"]);
        etcdctl.push(t.elapsed());
        assert!(out.status.success());
    }
    let (raw, listed, resolver_start, etcdctl) = (
        median(raw),
        median(listed),
        median(resolver_start),
        median(etcdctl),
    );
    println!("cold load of {ROUTES} routes (median of {RUNS}):");
    println!("  raw etcd-client range read      {}", ms(raw));
    println!("  etcdctl get --prefix (process)  {}", ms(etcdctl));
    println!(
        "  wayfinder list()                {}  = {:.2}x raw range",
        ms(listed),
        listed.as_secs_f64() / raw.as_secs_f64()
    );
    println!(
        "  wayfinder resolver start        {}  = {:.2}x raw range, {:.2}x etcdctl",
        ms(resolver_start),
        resolver_start.as_secs_f64() / raw.as_secs_f64(),
        resolver_start.as_secs_f64() / etcdctl.as_secs_f64()
    );
}

async fn propagation(server: &EtcdServer) {
    let prefix = "bench/propagation/";
    let mut client = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .unwrap();
    let manager = Arc::new(
        EtcdRouteManager::connect(manager_config(server, prefix))
            .await
            .unwrap(),
    );
    let config = no_health();
    let resolver = Arc::new(AddressResolver::with_config(manager, config).await.unwrap());
    let mut raw_watch = client
        .watch(prefix, Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(raw_watch.message().await.unwrap().unwrap().created());
    // The raw watch stamps each put event as it arrives, in a task of its own.
    let (stamps, mut stamped) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(response)) = raw_watch.message().await {
            let at = Instant::now();
            if response
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Put)
            {
                let _ = stamps.send(at);
            }
        }
    });

    let mut raw = Vec::with_capacity(PROPAGATIONS);
    let mut ours = Vec::with_capacity(PROPAGATIONS);
    for i in 0..PROPAGATIONS {
        let route = ServiceRoute::new(descriptor(i), vec![Address::new("10.1.0.1", 9000)]);
        let key = format!("{prefix}{}/10.1.0.1_9000", route.id());
        let value = encode_route(&route).unwrap();
        let id = route.id().to_owned();
        // The resolver is watched from an OS thread of its own, polling every few microseconds,
        // so the measurement does not take a worker away from the tasks it measures.
        let watcher = resolver.clone();
        let seen = tokio::task::spawn_blocking(move || {
            while watcher.try_resolve_id(&id, None).is_none() {
                std::thread::sleep(Duration::from_micros(20));
            }
            Instant::now()
        });
        let started = Instant::now();
        client.put(key, value, None).await.unwrap();
        raw.push(stamped.recv().await.unwrap() - started);
        ours.push(seen.await.unwrap() - started);
    }
    let (raw50, raw99) = (percentile(&mut raw, 0.5), percentile(&mut raw, 0.99));
    let (our50, our99) = (percentile(&mut ours, 0.5), percentile(&mut ours, 0.99));
    println!("propagation put -> visible, {PROPAGATIONS} puts:");
    println!(
        "  raw etcd-client watch           p50 {}  p99 {}",
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

async fn registration(server: &EtcdServer) {
    let manager = EtcdRouteManager::connect(manager_config(server, "bench/register/"))
        .await
        .unwrap();
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

    let instances = EtcdRouteManager::connect(manager_config(server, "bench/herd/"))
        .await
        .unwrap();
    let mut surging = manager_config(server, "bench/herd-surging/");
    surging.layout = surging.layout.with_style(LayoutStyle::Surging);
    let surging = EtcdRouteManager::connect(surging).await.unwrap();
    print_herd(
        herd(Arc::new(instances)).await,
        herd(Arc::new(surging)).await,
    );
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = EtcdServer::start();
    runtime.block_on(async {
        cold_load(&server).await;
        propagation(&server).await;
        registration(&server).await;
    });
}
