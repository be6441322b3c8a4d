//! Helpers shared by the backend benchmarks: statistics, formatting, the benchmark's routes.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use wayfinder::resolve::HealthConfig;
use wayfinder::{Address, Instance, ResolverConfig, RouteManager, ServiceDescriptor};

/// Routes in the cold-load benchmarks.
pub const ROUTES: usize = 10_000;
/// Repetitions of each timed step.
pub const RUNS: usize = 5;

/// The median sample.
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The `p` quantile (0..=1) of the samples.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1]
}

/// `12.34 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The benchmark's route `i`.
pub fn descriptor(i: usize) -> ServiceDescriptor {
    ServiceDescriptor::new(
        format!("Bench.IOrderService{i}.Get_id"),
        format!("api/order{i}/get"),
    )
    .with_metadata("HttpMethod", "GET")
}

/// A resolver without health checks (the benchmarks measure the registry path).
pub fn no_health() -> ResolverConfig {
    ResolverConfig {
        health: HealthConfig {
            enabled: false,
            ..HealthConfig::default()
        },
        ..ResolverConfig::default()
    }
}

/// 50 instances registering the same 20 routes at once through `manager`: how long it takes,
/// and how many of the 1,000 addresses are there after (the rest were lost).
pub async fn herd(manager: Arc<dyn RouteManager>) -> (Duration, usize) {
    let shared: Vec<ServiceDescriptor> = (0..20).map(descriptor).collect();
    let t = Instant::now();
    let tasks: Vec<_> = (0..50u16)
        .map(|i| {
            let (manager, routes) = (manager.clone(), shared.clone());
            tokio::spawn(async move {
                manager
                    .register(Instance::new(Address::new("10.3.0.1", 9000 + i), routes))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut registrations = Vec::new();
    for task in tasks {
        registrations.push(task.await.unwrap());
    }
    let took = t.elapsed();
    let present: usize = manager
        .list()
        .await
        .unwrap()
        .iter()
        .map(|r| r.addresses.len())
        .sum();
    for registration in registrations {
        registration.shutdown().await.unwrap();
    }
    (took, present)
}

/// Prints the herd figures of both layouts, the `surging` one beside the `instances` one.
pub fn print_herd(instances: (Duration, usize), surging: (Duration, usize)) {
    println!("50 instances x 20 shared routes registering at once:");
    for (layout, (took, present)) in [("instances", instances), ("surging", surging)] {
        println!(
            "  layout={layout:<9}  {}; addresses present {present} of 1000, lost {}",
            ms(took),
            1000 - present
        );
    }
    println!(
        "  surging / instances = {:.1}x",
        surging.0.as_secs_f64() / instances.0.as_secs_f64()
    );
}
