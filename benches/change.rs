//! One registry change -> resolvable, at 10, 10k and 100k routes (DESIGN.md section 6: O(changed);
//! at 100k routes within 2x the 10-route figure), and a resolution at each size beside it.
//!
//! An in-process registry holds the routes in wayfinder's own layout (a key per route per
//! instance, 3 instances per route); a resolver with health checks off follows it. Each sample
//! writes one new instance key of an existing route and spins on `try_resolve_path` until the
//! resolver serves the new address. Prints p50 and p99 per size.
//!
//! Run with `cargo bench --bench change`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{descriptor, no_health, percentile};
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::route::{encode_route, instance_id, DEFAULT_PREFIX};
use wayfinder::{Address, AddressResolver, ServiceRoute};

const SIZES: [usize; 3] = [10, 10_000, 100_000];
const SAMPLES: usize = 200;
const INSTANCES: usize = 3;

fn put(registry: &MemoryRouteManager, i: usize, address: Address) {
    let descriptor = descriptor(i);
    let key = format!(
        "{DEFAULT_PREFIX}{}/{}",
        descriptor.id,
        instance_id(&address).unwrap()
    );
    let value = encode_route(&ServiceRoute::new(descriptor, vec![address])).unwrap();
    registry.insert_raw(&key, value);
}

fn host(n: usize) -> Address {
    Address::new(
        format!("10.{}.{}.{}", n / 62500, n / 250 % 250, n % 250 + 1),
        9000,
    )
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("one change -> resolvable ({SAMPLES} samples), and one resolution:");
    let mut p50_of_10 = None;
    for size in SIZES {
        let registry = MemoryRouteManager::default();
        for i in 0..size {
            for k in 0..INSTANCES {
                put(&registry, i, host(i * INSTANCES + k));
            }
        }
        let resolver = Arc::new(
            AddressResolver::with_config(Arc::new(registry.clone()), no_health())
                .await
                .unwrap(),
        );
        let mut samples = Vec::with_capacity(SAMPLES);
        for sample in 0..SAMPLES {
            let i = sample * 7919 % size;
            let path = descriptor(i).route_path;
            let address = host(size * INSTANCES + sample);
            let started = Instant::now();
            put(&registry, i, address.clone());
            loop {
                let entry = resolver.table().by_path(&path).cloned();
                if entry.is_some_and(|e| e.route().addresses.iter().any(|a| **a == address)) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            samples.push(started.elapsed());
        }
        let path = descriptor(size / 2).route_path;
        let rounds = 1_000_000u32;
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(resolver.try_resolve_path(std::hint::black_box(&path), None));
        }
        let resolve = started.elapsed() / rounds;
        let p50 = percentile(&mut samples, 0.5);
        let base = *p50_of_10.get_or_insert(p50);
        println!(
            "  {size:>7} routes: p50 {:7.1} us ({:.2}x the 10-route figure)  p99 {:7.1} us   resolve {:.1} ns",
            micros(p50),
            p50.as_secs_f64() / base.as_secs_f64(),
            micros(percentile(&mut samples, 0.99)),
            resolve.as_secs_f64() * 1e9
        );
        drop(resolver);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
