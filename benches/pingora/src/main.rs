//! One resolution against pingora-load-balancing 0.9's `LoadBalancer::select`, in one process.
//!
//! Both pick round robin over the same 8 backends. wayfinder resolves an exact route path in a
//! table of 10, 10k and 100k routes (8 of 64 hosts each, health checks off) through
//! `try_resolve_path`, the synchronous form of `resolve_path`; the target is at most 0.3x
//! pingora's figure at every size (DESIGN.md section 6). For scale, the same resolution with the
//! load-aware selectors follows (power of two choices, and peak EWMA, which also times the call
//! and feeds its latency back when the resolution is dropped), at 10k routes.
//!
//! Needs `cmake` (pingora builds zlib-ng). Run with
//! `cargo run --release --manifest-path benches/pingora/Cargo.toml`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use pingora_load_balancing::selection::RoundRobin as PingoraRoundRobin;
use pingora_load_balancing::LoadBalancer;
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::resolve::select::{PeakEwma, PowerOfTwoChoices, RoundRobin, Selector};
use wayfinder::resolve::HealthConfig;
use wayfinder::route::{encode_route, DEFAULT_PREFIX};
use wayfinder::{Address, AddressResolver, ResolverConfig, ServiceDescriptor, ServiceRoute};

const SIZES: [usize; 3] = [10, 10_000, 100_000];
const HOSTS: usize = 64;
const ROUNDS: u32 = 2_000_000;
const BATCHES: usize = 15;

fn host(n: usize) -> String {
    format!("10.0.{}.{}", n / 256, n % 256 + 1)
}

/// The median over `BATCHES` batches of `ROUNDS` calls, in nanoseconds per call.
fn median_ns(mut call: impl FnMut()) -> f64 {
    let mut batches: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..ROUNDS {
                call();
            }
            started.elapsed().as_secs_f64() * 1e9 / f64::from(ROUNDS)
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[BATCHES / 2]
}

async fn resolver(size: usize, selector: Arc<dyn Selector>) -> (AddressResolver, String) {
    let registry = MemoryRouteManager::default();
    for i in 0..size {
        let addresses = (0..8)
            .map(|k| Address::new(host((i * 8 + k) % HOSTS), 9000))
            .collect();
        let descriptor =
            ServiceDescriptor::new(format!("Bench.ISvc{i}Service.Get"), format!("api/svc{i}/get"));
        let route = ServiceRoute::new(descriptor, addresses);
        registry.insert_raw(
            &format!("{DEFAULT_PREFIX}{}", route.id()),
            encode_route(&route).unwrap(),
        );
    }
    let config = ResolverConfig {
        selector,
        health: HealthConfig {
            enabled: false,
            ..HealthConfig::default()
        },
        ..ResolverConfig::default()
    };
    let resolver = AddressResolver::with_config(Arc::new(registry), config)
        .await
        .unwrap();
    (resolver, format!("api/svc{}/get", size / 2))
}

#[tokio::main]
async fn main() {
    let backends: Vec<String> = (0..8).map(|k| format!("{}:9000", host(k))).collect();
    let pingora: LoadBalancer<PingoraRoundRobin> =
        LoadBalancer::try_from_iter(backends.iter().map(String::as_str)).unwrap();
    let baseline = median_ns(|| {
        let backend = pingora.select(black_box(b"user-42"), 256).unwrap();
        black_box(backend.addr);
    });
    println!("pingora-load-balancing select, round robin over 8 backends: {baseline:6.1} ns");
    for size in SIZES {
        let (resolver, path) = resolver(size, Arc::new(RoundRobin)).await;
        let ours = median_ns(|| resolve_once(&resolver, &path));
        println!(
            "wayfinder try_resolve_path, round robin, {size:>6} routes:    {ours:6.1} ns  = {:.2}x pingora (target 0.30x)",
            ours / baseline
        );
    }
    let load_aware: [(&str, Arc<dyn Selector>); 2] = [
        ("p2c", Arc::new(PowerOfTwoChoices)),
        ("peak_ewma", Arc::new(PeakEwma::default())),
    ];
    for (name, selector) in load_aware {
        let (resolver, path) = resolver(10_000, selector).await;
        let ours = median_ns(|| resolve_once(&resolver, &path));
        println!(
            "wayfinder try_resolve_path, {name:<11}, 10000 routes: {ours:6.1} ns  = {:.2}x pingora's round robin",
            ours / baseline
        );
    }
}

/// One resolution, its address read and the resolution dropped (which ends its call).
fn resolve_once(resolver: &AddressResolver, path: &str) {
    let resolved = resolver.try_resolve_path(black_box(path), None);
    black_box(resolved.unwrap().unwrap().address().port);
}
