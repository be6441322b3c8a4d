//! Helpers shared by the backend benchmarks: statistics, formatting, the benchmark's routes.
#![allow(dead_code)]

use std::time::Duration;

use wayfinder::resolve::HealthConfig;
use wayfinder::{ResolverConfig, ServiceDescriptor};

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
