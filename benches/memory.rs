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
//! registry also keeps the raw keys and values, which with etcd or Consul live in the server:
//! what a map of them costs is measured apart (the same keys and values in a `BTreeMap`, as the
//! registry stores them) and taken off the total. For a client's memory alone, against a real
//! etcd, see `benches/subscription.rs`.
//!
//! Run with `cargo bench --bench memory`.

mod common;
#[path = "common/counting.rs"]
mod counting;

use std::collections::BTreeMap;
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

/// The shape's raw keys and values, in key order.
fn raw(shape: &str, mut each: impl FnMut(String, Vec<u8>)) {
    for i in 0..ROUTES {
        let descriptor = descriptor(i);
        let addresses: Vec<Address> = (0..ADDRESSES).map(|k| address(shape, i, k)).collect();
        if shape == "surging" {
            let route = ServiceRoute::new(descriptor, addresses);
            each(
                format!("{DEFAULT_PREFIX}{}", route.id()),
                encode_route(&route).unwrap(),
            );
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
            each(key, value);
        }
    }
}

/// What a map of the shape's raw keys and values alone costs (MiB allocated), as the registry
/// keeps them beside its decoded routes (a value and an optional lease per key).
fn raw_map_mib(shape: &str) -> f64 {
    let before = live_mib();
    let mut map: BTreeMap<String, (Vec<u8>, Option<u64>)> = BTreeMap::new();
    raw(shape, |key, value| {
        map.insert(key, (value, None));
    });
    let held = live_mib() - before;
    drop(map);
    held
}

/// One shape, in this (child) process; `raw_mib`: what the raw map costs (measured apart).
async fn measure(shape: &str, raw_mib: f64) {
    let Some(start) = rss_mib() else {
        println!("no /proc/self/status here: nothing to measure");
        return;
    };
    let registry = MemoryRouteManager::default();
    raw(shape, |key, value| registry.insert_raw(&key, value));
    let (filled, filled_live) = (rss_mib().unwrap(), live_mib());
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), no_health())
        .await
        .unwrap();
    assert_eq!(resolver.stats().routes, ROUTES);
    let (resolving, resolving_live) = (rss_mib().unwrap(), live_mib());
    let target = match shape {
        "instances-distinct" => "under 150",
        "instances-1000-hosts" => "under 80",
        _ => "no target",
    };
    println!("{shape}: {ROUTES} routes x {ADDRESSES} addresses (MiB):  RSS  allocated");
    println!("  at start                              {start:8.1}");
    println!("  registry filled                       {filled:8.1}   {filled_live:8.1}");
    println!("  resolver running                      {resolving:8.1}   {resolving_live:8.1}");
    println!("  a map of the raw keys and values       {raw_mib:7.1}  (held by the server with etcd/Consul)");
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
        return measure(&args[at + 1], args[at + 2].parse().unwrap()).await;
    }
    for shape in SHAPES {
        // Measured here, so the shape's own process starts clean.
        let raw_mib = raw_map_mib(shape);
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--shape", shape, &raw_mib.to_string()])
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
    }
}
