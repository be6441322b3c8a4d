//! A client's memory against a real etcd started here (DESIGN.md section 6), in wayfinder's own
//! layout (one key per route per instance), 100k routes x 3 instances:
//!
//! - `distinct`: every address distinct (target: registry view + resolver under 150 MB);
//! - `1000-hosts`: 1,000 instances serve the 100k routes, 300 each (target: under 80 MB);
//! - `subscribed-10`: a resolver subscribed to 10 of the `distinct` routes
//!   (`ResolverConfig::services`; target: under 5 MB more than an empty client).
//!
//! Each measurement runs in a child process of its own (RSS is not given back between them): it
//! connects a manager (the empty client), starts the resolver, and prints the resident set and
//! the bytes allocated beyond the empty client. Unlike `benches/memory.rs`, nothing of the
//! registry's own storage is in the process: the figures are the client's alone.
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
const INSTANCES: usize = 3;
const HOSTS: usize = 1_000;
const SUBSCRIBED: usize = 10;
const SHAPES: [&str; 3] = ["subscribed-10", "distinct", "1000-hosts"];

/// The key prefix a shape's routes are written under.
fn prefix(shape: &str) -> String {
    let stored = if shape == "1000-hosts" {
        shape
    } else {
        "distinct"
    };
    format!("bench/memory/{stored}/")
}

/// Instance `k` of route `i` in a shape's routes.
fn address(shape: &str, i: usize, k: usize) -> Address {
    if shape == "1000-hosts" {
        let host = (i * INSTANCES + k) % HOSTS;
        return Address::new(format!("10.0.{}.{}", host / 250, host % 250 + 1), 9000);
    }
    Address::new(format!("10.{}.{}.{}", k, i / 250 % 250, i % 250 + 1), 9000)
}

async fn fill(server: &EtcdServer, shape: &str) {
    let mut client = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .unwrap();
    let prefix = prefix(shape);
    let mut ops = Vec::with_capacity(128);
    for i in 0..ROUTES {
        for k in 0..INSTANCES {
            let address = address(shape, i, k);
            let key = format!(
                "{prefix}{}/{}",
                descriptor(i).id,
                instance_id(&address).unwrap()
            );
            let route = ServiceRoute::new(descriptor(i), vec![address]);
            ops.push(TxnOp::put(
                key,
                encode_route(&route).unwrap(),
                None::<PutOptions>,
            ));
            if ops.len() == 128 {
                let batch = std::mem::take(&mut ops);
                client.txn(Txn::new().and_then(batch)).await.unwrap();
            }
        }
    }
    if !ops.is_empty() {
        client.txn(Txn::new().and_then(ops)).await.unwrap();
    }
}

/// (RSS, allocated) in MiB.
fn now() -> (f64, f64) {
    (rss_mib().unwrap_or(f64::NAN), live_mib())
}

/// One measurement, in this (child) process.
async fn measure(shape: &str, endpoint: String) {
    let mut config = EtcdConfig::new([endpoint]);
    config.layout = KeyLayout::new(&prefix(shape)).unwrap();
    let manager = Arc::new(EtcdRouteManager::connect(config).await.unwrap());
    let empty = now();
    let mut config = no_health();
    let (routes, target) = if shape == "subscribed-10" {
        // Service ids `Bench.IOrderService{i}.Get_id`: the trailing dot keeps `...Service1.`
        // from covering `...Service10`.
        config.services = (0..SUBSCRIBED)
            .map(|k| format!("Bench.IOrderService{}.", k * (ROUTES / SUBSCRIBED)))
            .collect();
        (SUBSCRIBED, "under 5 MB")
    } else if shape == "distinct" {
        (ROUTES, "under 150 MB")
    } else {
        (ROUTES, "under 80 MB")
    };
    let resolver = AddressResolver::with_config(manager, config).await.unwrap();
    assert_eq!(resolver.stats().routes, routes);
    let at = now();
    println!(
        "  {shape:<14} {routes:>6} routes  {:8.1} MiB RSS  {:8.1} MiB allocated  (target: {target})",
        at.0 - empty.0,
        at.1 - empty.1
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--shape") {
        return measure(&args[at + 1], args[at + 2].clone()).await;
    }
    let server = EtcdServer::start();
    let started = Instant::now();
    fill(&server, "distinct").await;
    fill(&server, "1000-hosts").await;
    println!(
        "{} keys written in {:.1} s",
        2 * ROUTES * INSTANCES,
        started.elapsed().as_secs_f64()
    );
    println!("a client's memory beyond a connected client with no resolver, {INSTANCES} instances per route:");
    for shape in SHAPES {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--shape", shape, &server.endpoint()])
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
    }
}
