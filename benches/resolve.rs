//! Resolution benchmarks (DESIGN.md section 6).
//!
//! * exact-path resolve, 8 healthy addresses, every selector, at 10, 10k and 100k routes;
//! * templated-path resolve at 10k routes;
//! * a resolver start over 10k routes (listing, table, endpoints);
//! * decoding 10k registry values.
//!
//! The reference is pingora-load-balancing 0.9 `LoadBalancer::select` over 8 backends; the target
//! is at most 0.3x of it (DESIGN.md section 6). `benches/pingora` measures both in one process.
//!
//! Run with `cargo bench --bench resolve`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::resolve::select::{selector_by_name, SELECTOR_NAMES};
use wayfinder::resolve::HealthConfig;
use wayfinder::route::{decode_route, encode_route, DEFAULT_PREFIX};
use wayfinder::{Address, AddressResolver, ResolverConfig, ServiceDescriptor, ServiceRoute};

const SIZES: [usize; 3] = [10, 10_000, 100_000];
const DISTINCT_HOSTS: usize = 64;

/// Route `i`: `api/svc{i}/get` (or `api/svc{i}/get/{id}` when templated) on 8 of 64 hosts.
fn route(i: usize, templated: bool) -> ServiceRoute {
    let path = if templated {
        format!("api/svc{i}/get/{{id}}")
    } else {
        format!("api/svc{i}/get")
    };
    let addresses = (0..8)
        .map(|k| {
            let host = (i * 8 + k) % DISTINCT_HOSTS;
            Address::new(format!("10.0.{}.{}", host / 256, host % 256), 9000)
        })
        .collect();
    ServiceRoute::new(
        ServiceDescriptor::new(format!("Bench.ISvc{i}Service.Get"), path),
        addresses,
    )
}

fn routes(count: usize, templated: bool) -> Vec<ServiceRoute> {
    (0..count).map(|i| route(i, templated)).collect()
}

/// A memory registry holding `routes` as whole-route values (as Surging writes them).
fn registry(routes: &[ServiceRoute]) -> MemoryRouteManager {
    let registry = MemoryRouteManager::default();
    for route in routes {
        let key = format!("{DEFAULT_PREFIX}{}", route.id());
        registry.insert_raw(&key, encode_route(route).unwrap());
    }
    registry
}

async fn resolver(registry: &MemoryRouteManager, selector: &str) -> AddressResolver {
    let config = ResolverConfig {
        selector: selector_by_name(selector).unwrap(),
        health: HealthConfig {
            enabled: false,
            ..HealthConfig::default()
        },
        ..ResolverConfig::default()
    };
    AddressResolver::with_config(Arc::new(registry.clone()), config)
        .await
        .unwrap()
}

/// Polls a future that never waits (resolution of a known path) to completion.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("resolution of a known path waited"),
    }
}

fn exact_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("resolve_exact_path");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    for size in SIZES {
        let routes = routes(size, false);
        let registry = registry(&routes);
        let path = routes[size / 2].route_path().to_owned();
        for selector in SELECTOR_NAMES {
            let resolver = runtime.block_on(resolver(&registry, selector));
            let key = b"user-42".as_slice();
            group.bench_with_input(BenchmarkId::new(*selector, size), &path, |b, path| {
                b.iter(|| {
                    let resolved =
                        ready(resolver.resolve_path(black_box(path), Some(key))).unwrap();
                    black_box(resolved.address().port)
                })
            });
            if *selector == "round_robin" {
                let id = BenchmarkId::new("round_robin_sync", size);
                group.bench_with_input(id, &path, |b, path| {
                    b.iter(|| {
                        let resolved = resolver.try_resolve_path(black_box(path), Some(key));
                        black_box(resolved.unwrap().unwrap().address().port)
                    })
                });
            }
        }
    }
    group.finish();
}

fn templated_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let routes = routes(10_000, true);
    let registry = registry(&routes);
    let resolver = runtime.block_on(resolver(&registry, "round_robin"));
    let mut group = c.benchmark_group("resolve_templated_path");
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("round_robin/10000", |b| {
        b.iter(|| {
            let resolved =
                ready(resolver.resolve_path(black_box("api/svc5000/get/42"), None)).unwrap();
            black_box(resolved.address().port)
        })
    });
    group.finish();
}

/// A resolver start over 10k routes of an in-process registry: listing, table and endpoints.
fn table_build(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = registry(&routes(10_000, false));
    let mut group = c.benchmark_group("table_build");
    group.sample_size(20);
    group.bench_function("10000_routes", |b| {
        b.iter(|| black_box(runtime.block_on(resolver(&registry, "round_robin"))))
    });
    group.finish();
}

/// Decoding 10k registry values of one address each (the backends' cold-load work per key).
fn decode_values(c: &mut Criterion) {
    let values: Vec<Vec<u8>> = (0..10_000)
        .map(|i| {
            let address = Address::new(format!("10.0.{}.{}", i / 250, i % 250 + 1), 9000);
            let descriptor = ServiceDescriptor::new(
                format!("Bench.IOrderService{i}.Get_id"),
                format!("api/order{i}/get"),
            )
            .with_metadata("HttpMethod", "GET");
            encode_route(&ServiceRoute::new(descriptor, vec![address])).unwrap()
        })
        .collect();
    let mut group = c.benchmark_group("decode");
    group.sample_size(20);
    group.bench_function("10000_values", |b| {
        b.iter(|| {
            for value in &values {
                black_box(decode_route(value).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    exact_path,
    templated_path,
    table_build,
    decode_values
);
criterion_main!(benches);
