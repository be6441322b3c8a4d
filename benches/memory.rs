//! Memory held for 100k routes of 3 addresses each (DESIGN.md section 6), in three shapes:
//!
//! - `instances-distinct`: wayfinder's own layout, a key per route per instance
//!   (`<prefix><id>/<instance-id>`), every address distinct (target: under 150 MB);
//! - `instances-1000-hosts`: the same layout with 1,000 instances serving the 100k routes, 300
//!   each, the usual shape (target: under 80 MB);
//! - `surging`: Surging's layout, one whole-route value per service id with its 3 addresses.
//!
//! Each shape runs in a child process of its own (RSS is not given back between shapes). It fills
//! an in-process registry, starts a resolver on it (watch, hub and route table, as a client of
//! any backend holds them), and prints the resident set and the bytes allocated. The in-process
//! registry also keeps the raw values, which with etcd or Consul live in the server; their size
//! is printed and taken off the total (its own bookkeeping of them stays in). For a client's
//! memory alone, against a real etcd, see `benches/subscription.rs`.
//!
//! Run with `cargo bench --bench memory`.

mod common;
#[path = "common/counting.rs"]
mod counting;

use std::sync::Arc;

use common::{descriptor, no_health};
use counting::{live_mib, rss_mib};
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::route::{encode_route, instance_id, DEFAULT_PREFIX};
use wayfinder::{Address, AddressResolver, ServiceRoute};

const ROUTES: usize = 100_000;
const ADDRESSES: usize = 3;
const HOSTS: usize = 1_000;
const SHAPES: [&str; 3] = ["instances-distinct", "instances-1000-hosts", "surging"];

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// Address `k` of route `i` in a shape.
fn address(shape: &str, i: usize, k: usize) -> Address {
    match shape {
        "instances-1000-hosts" => {
            let host = (i * ADDRESSES + k) % HOSTS;
            Address::new(format!("10.0.{}.{}", host / 250, host % 250 + 1), 9000)
        }
        _ => Address::new(format!("10.{}.{}.{}", k, i / 250 % 250, i % 250 + 1), 9000),
    }
}

/// Writes the shape's keys; returns the bytes of the raw values written.
fn fill(registry: &MemoryRouteManager, shape: &str) -> usize {
    let mut raw_bytes = 0;
    for i in 0..ROUTES {
        let descriptor = descriptor(i);
        let addresses: Vec<Address> = (0..ADDRESSES).map(|k| address(shape, i, k)).collect();
        if shape == "surging" {
            let route = ServiceRoute::new(descriptor, addresses);
            let value = encode_route(&route).unwrap();
            raw_bytes += value.len();
            registry.insert_raw(&format!("{DEFAULT_PREFIX}{}", route.id()), value);
            continue;
        }
        for address in addresses {
            let key = format!(
                "{DEFAULT_PREFIX}{}/{}",
                descriptor.id,
                instance_id(&address).unwrap()
            );
            let value =
                encode_route(&ServiceRoute::new(descriptor.clone(), vec![address])).unwrap();
            raw_bytes += key.len() + value.len();
            registry.insert_raw(&key, value);
        }
    }
    raw_bytes
}

async fn measure(shape: &str) {
    let Some(start) = rss_mib() else {
        println!("no /proc/self/status here: nothing to measure");
        return;
    };
    let registry = MemoryRouteManager::default();
    let raw_bytes = fill(&registry, shape);
    let (filled, filled_live) = (rss_mib().unwrap(), live_mib());
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), no_health())
        .await
        .unwrap();
    assert_eq!(resolver.stats().routes, ROUTES);
    let (resolving, resolving_live) = (rss_mib().unwrap(), live_mib());
    let raw_mib = raw_bytes as f64 / (1024.0 * 1024.0);
    let target = match shape {
        "instances-distinct" => "under 150",
        "instances-1000-hosts" => "under 80",
        _ => "no target",
    };
    println!("{shape}: {ROUTES} routes x {ADDRESSES} addresses (MiB):  RSS  allocated");
    println!("  at start                              {start:8.1}");
    println!("  registry filled                       {filled:8.1}   {filled_live:8.1}");
    println!("  resolver running                      {resolving:8.1}   {resolving_live:8.1}");
    println!("  raw keys and values the registry keeps {raw_mib:7.1}  (held by the server with etcd/Consul)");
    println!(
        "  total without them                    {:8.1}   {:8.1}  (target: {target})",
        resolving - raw_mib,
        resolving_live - raw_mib
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--shape") {
        return measure(&args[at + 1]).await;
    }
    for shape in SHAPES {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--shape", shape])
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
    }
}
