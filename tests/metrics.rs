//! Metrics through a real `metrics` recorder (the `metrics-util` debugging recorder, installed
//! for this test binary): what a registration, a resolver and backend calls record, by name and
//! label, as the README lists them.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::descriptor;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::metrics as names;
use wayfinder::resolve::{HealthConfig, OutlierConfig};
use wayfinder::{Address, AddressResolver, Instance, ResolverConfig, RouteManager};

/// What the recorder has seen over its snapshots (a debugging snapshot hands over each value and
/// resets it: counters are added up, a gauge is its latest value, histograms count samples).
#[derive(Default)]
struct Seen {
    counters: HashMap<String, u64>,
    gauges: HashMap<String, f64>,
    samples: HashMap<String, usize>,
}

/// A metric's name and labels as one key: `name{a=x,b=y}`.
fn id(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

impl Seen {
    fn take(&mut self, snapshotter: &Snapshotter) {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let labels: Vec<(&str, &str)> =
                key.key().labels().map(|l| (l.key(), l.value())).collect();
            let id = id(key.key().name(), &labels);
            match (key.kind(), value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => {
                    *self.counters.entry(id).or_default() += n
                }
                // Gauges are set whole at each publication: the latest one counts.
                (MetricKind::Gauge, DebugValue::Gauge(x)) => {
                    self.gauges.insert(id, x.into_inner());
                }
                (MetricKind::Histogram, DebugValue::Histogram(xs)) => {
                    *self.samples.entry(id).or_default() += xs.len()
                }
                (kind, value) => panic!("{id}: {kind:?} with {value:?}"),
            }
        }
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let id = id(name, labels);
        *self
            .counters
            .get(&id)
            .unwrap_or_else(|| panic!("no counter {id}"))
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let id = id(name, labels);
        *self
            .gauges
            .get(&id)
            .unwrap_or_else(|| panic!("no gauge {id}"))
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.samples.get(&id(name, labels)).copied().unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_resolutions_and_backend_calls_reach_the_recorder() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let mut seen = Seen::default();
    let registry = MemoryRouteManager::default();
    let mut registrations = Vec::new();
    for port in [7301, 7302] {
        let instance = Instance::new(Address::new("127.0.0.1", port), vec![descriptor("A")]);
        registrations.push(registry.register(instance).await.unwrap());
    }
    seen.take(&snapshotter);
    let memory = |operation| [("backend", "memory"), ("operation", operation)];
    assert_eq!(
        seen.samples(names::BACKEND_REQUEST_DURATION, &memory("register")),
        2
    );
    let first = [("backend", "memory"), ("kind", "first")];
    assert_eq!(seen.counter(names::REGISTRATIONS, &first), 2);

    let config = ResolverConfig {
        health: HealthConfig {
            enabled: false,
            failure_threshold: 100,
            ..HealthConfig::default()
        },
        outlier: OutlierConfig {
            consecutive_failures: 3,
            max_ejection_percent: 50,
            ..OutlierConfig::default()
        },
        ..ResolverConfig::default()
    };
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), config)
        .await
        .unwrap();
    for _ in 0..10 {
        resolver.resolve_path("api/demo/a", None).await.unwrap();
    }
    assert!(resolver
        .resolve_path("api/demo/nothing", None)
        .await
        .is_err());
    // Not in the table: neither found nor (yet) not found.
    assert!(resolver.try_resolve_path("api/demo/other", None).is_none());
    for _ in 0..3 {
        resolver.report_failure(&Address::new("127.0.0.1", 7301));
    }
    resolver.publish_metrics();
    seen.take(&snapshotter);

    let found = [("result", "found")];
    assert_eq!(seen.counter(names::RESOLUTIONS, &found), 10);
    assert_eq!(
        seen.counter(names::RESOLUTIONS, &[("result", "not_found")]),
        1
    );
    assert_eq!(seen.counter(names::EJECTIONS, &[]), 1);
    let endpoints = |seen: &Seen, state| seen.gauge(names::ENDPOINTS, &[("state", state)]);
    assert_eq!(
        (endpoints(&seen, "healthy"), endpoints(&seen, "ejected")),
        (1.0, 1.0)
    );
    let routes = |seen: &Seen, state| seen.gauge(names::ROUTES, &[("state", state)]);
    assert_eq!(
        (routes(&seen, "healthy"), routes(&seen, "degraded")),
        (0.0, 1.0)
    );
    assert_eq!(seen.gauge(names::REGISTRY_STALENESS, &[]), 0.0);
    assert!(seen.samples(names::BACKEND_REQUEST_DURATION, &memory("list")) >= 1);

    // A second resolver adds its routes and endpoints to the totals, and takes them back.
    let second =
        AddressResolver::with_config(Arc::new(registry.clone()), ResolverConfig::default())
            .await
            .unwrap();
    second.publish_metrics();
    seen.take(&snapshotter);
    assert_eq!(
        (routes(&seen, "healthy"), routes(&seen, "degraded")),
        (1.0, 1.0)
    );
    assert_eq!(endpoints(&seen, "healthy"), 3.0);
    drop(second);
    seen.take(&snapshotter);
    assert_eq!(
        (routes(&seen, "healthy"), routes(&seen, "degraded")),
        (0.0, 1.0)
    );

    // Publishing again adds nothing new; more lookups add just those.
    resolver.publish_metrics();
    resolver.resolve_path("api/demo/a", None).await.unwrap();
    resolver.publish_metrics();
    seen.take(&snapshotter);
    assert_eq!(seen.counter(names::RESOLUTIONS, &found), 11);
    assert_eq!(endpoints(&seen, "healthy"), 1.0);

    // The once-a-second publication comes without being asked.
    resolver.resolve_path("api/demo/a", None).await.unwrap();
    common::eventually(Duration::from_secs(3), "the periodic publication", || {
        seen.take(&snapshotter);
        let count = seen.counter(names::RESOLUTIONS, &found);
        async move { (count == 12).then_some(()) }
    })
    .await;

    // A dropped resolver takes its gauges back.
    drop(resolver);
    seen.take(&snapshotter);
    assert_eq!(
        (endpoints(&seen, "healthy"), endpoints(&seen, "ejected")),
        (0.0, 0.0)
    );
    assert_eq!(routes(&seen, "degraded"), 0.0);
    drop(registrations);
}
