//! Memory of a client subscribed to 10 of 100k routes (DESIGN.md section 6: under 5 MB more
//! than an empty client), against a real etcd started here.
//!
//! etcd holds 100k routes in wayfinder's own layout (one key per route per instance). In one
//! process, the bench measures the bytes allocated and the resident set after connecting a
//! manager (the empty client), after starting a resolver subscribed to 10 services of one route
//! each (`ResolverConfig::services`), and, for contrast, after starting one over every route.
//!
//! Run with `cargo bench --features etcd --bench subscription` after `bash backends/install.sh`.

#[path = "../tests/common/etcd_server.rs"]
#[allow(dead_code)] // shared with the tests; the cluster helpers are theirs
mod etcd_server;

mod common;
#[path = "common/counting.rs"]
mod counting;

use std::sync::Arc;
use std::time::Instant;

use common::{descriptor, no_health};
use counting::{live_mib, rss_mib};
use etcd_client::{PutOptions, Txn, TxnOp};
use etcd_server::EtcdServer;
use wayfinder::backends::etcd::{EtcdConfig, EtcdRouteManager};
use wayfinder::route::{encode_route, instance_id, KeyLayout};
use wayfinder::{Address, AddressResolver, ServiceRoute};

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

const ROUTES: usize = 100_000;
const SUBSCRIBED: usize = 10;
const PREFIX: &str = "bench/subscription/";

async fn fill(server: &EtcdServer) {
    let mut client = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .unwrap();
    let ops: Vec<TxnOp> = (0..ROUTES)
        .map(|i| {
            let address = Address::new(
                format!("10.{}.{}.{}", i / 62500, i / 250 % 250, i % 250 + 1),
                9000,
            );
            let key = format!(
                "{PREFIX}{}/{}",
                descriptor(i).id,
                instance_id(&address).unwrap()
            );
            let route = ServiceRoute::new(descriptor(i), vec![address]);
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

async fn connect(server: &EtcdServer) -> Arc<EtcdRouteManager> {
    let mut config = EtcdConfig::new([server.endpoint()]);
    config.layout = KeyLayout::new(PREFIX).unwrap();
    Arc::new(EtcdRouteManager::connect(config).await.unwrap())
}

/// (RSS, allocated) in MiB.
fn now() -> (f64, f64) {
    (rss_mib().unwrap_or(f64::NAN), live_mib())
}

fn report(what: &str, base: (f64, f64), at: (f64, f64)) {
    println!(
        "  {what:<38} {:8.1} MiB RSS  {:8.1} MiB allocated",
        at.0 - base.0,
        at.1 - base.1
    );
}

#[tokio::main]
async fn main() {
    let server = EtcdServer::start();
    let started = Instant::now();
    fill(&server).await;
    println!(
        "{ROUTES} routes written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let manager = connect(&server).await;
    let empty = now();
    // Service ids `Bench.IOrderService{i}.Get_id`: the trailing dot keeps `...Service1.` from
    // covering `...Service10`.
    let services: Vec<String> = (0..SUBSCRIBED)
        .map(|k| format!("Bench.IOrderService{}.", k * (ROUTES / SUBSCRIBED)))
        .collect();
    let mut config = no_health();
    config.services = services;
    let subscribed = AddressResolver::with_config(manager.clone(), config)
        .await
        .unwrap();
    assert_eq!(subscribed.stats().routes, SUBSCRIBED);
    let with_subscribed = now();
    println!(
        "memory beyond a connected client with no resolver (target: under 5 MB for 10 routes):"
    );
    report("resolver subscribed to 10 routes", empty, with_subscribed);
    drop(subscribed);

    let everything = AddressResolver::with_config(connect(&server).await, no_health())
        .await
        .unwrap();
    assert_eq!(everything.stats().routes, ROUTES);
    report("resolver over all 100k routes", empty, now());
}
