//! Client resilience in the resolver: the panic threshold, outlier ejection from reported
//! outcomes (with its budget and trial), and retry alternates. On the in-process registry, with
//! active health checks off, so reported outcomes alone decide.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{descriptor, eventually, init_logging};
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::resolve::select::ConsistentHash;
use wayfinder::resolve::{HealthConfig, OutlierConfig, ResolverConfig, SlowStartConfig};
use wayfinder::{Address, AddressResolver, Instance, Registration, RouteManager};

const PATH: &str = "api/demo/a";

/// A resolver over one route served on ports `1..=count`, without active checks; passive
/// health flips only after 100 failures, so ejection is what the tests see.
async fn route_on(count: u16, config: ResolverConfig) -> (AddressResolver, Vec<Registration>) {
    let registry = MemoryRouteManager::default();
    let mut registrations = Vec::new();
    for port in 1..=count {
        let instance = Instance::new(Address::new("127.0.0.1", port), vec![descriptor("A")]);
        registrations.push(registry.register(instance).await.unwrap());
    }
    let config = ResolverConfig {
        health: HealthConfig {
            enabled: false,
            failure_threshold: 100,
            ..HealthConfig::default()
        },
        ..config
    };
    let resolver = AddressResolver::with_config(Arc::new(registry), config)
        .await
        .unwrap();
    (resolver, registrations)
}

fn fast_outliers() -> OutlierConfig {
    OutlierConfig {
        consecutive_failures: 5,
        interval: Duration::from_millis(50),
        base_ejection: Duration::from_millis(300),
        max_ejection: Duration::from_secs(3),
        ..OutlierConfig::default()
    }
}

/// The ports of `picks` resolutions.
async fn picks(resolver: &AddressResolver, picks: usize) -> BTreeMap<u16, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..picks {
        let resolved = resolver.resolve_path(PATH, None).await.unwrap();
        *seen.entry(resolved.address().port).or_default() += 1;
    }
    seen
}

fn port(n: u16) -> Address {
    Address::new("127.0.0.1", n)
}

#[tokio::test]
async fn below_the_panic_threshold_every_address_is_used() {
    init_logging();
    let unhealthy = |threshold: f64| ResolverConfig {
        panic_threshold: threshold,
        health: HealthConfig {
            enabled: false,
            failure_threshold: 1,
            ..HealthConfig::default()
        },
        ..ResolverConfig::default()
    };
    for (threshold, want_panic) in [(0.5, true), (0.25, false)] {
        let registry = MemoryRouteManager::default();
        let mut registrations = Vec::new();
        for p in 1..=4 {
            let instance = Instance::new(port(p), vec![descriptor("A")]);
            registrations.push(registry.register(instance).await.unwrap());
        }
        let resolver = AddressResolver::with_config(Arc::new(registry), unhealthy(threshold))
            .await
            .unwrap();
        for p in 1..=3 {
            resolver.report_failure(&port(p));
        }
        // One of four usable: 25%, below 50% and not below 25%.
        let seen = picks(&resolver, 40).await;
        if want_panic {
            assert_eq!(seen.len(), 4, "panic mode picks among all: {seen:?}");
            assert_eq!(resolver.stats().fail_open, 40);
        } else {
            assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [4], "{seen:?}");
            assert_eq!(resolver.stats().fail_open, 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_address_is_ejected_then_tried_and_ejected_for_longer() {
    init_logging();
    let config = ResolverConfig {
        outlier: fast_outliers(),
        ..ResolverConfig::default()
    };
    let (resolver, _registrations) = route_on(10, config).await;
    for _ in 0..4 {
        resolver.report_failure(&port(1));
    }
    assert_eq!(
        resolver.is_ejected(&port(1)),
        Some(false),
        "four are below five"
    );
    resolver.report_failure(&port(1));
    assert_eq!(resolver.is_ejected(&port(1)), Some(true));
    assert!(
        !picks(&resolver, 100).await.contains_key(&1),
        "ejected: never picked"
    );

    // After the ejection, a trial: a failure ejects it again at once.
    eventually(
        Duration::from_secs(2),
        "the first ejection over",
        || async { (resolver.is_ejected(&port(1)) == Some(false)).then_some(()) },
    )
    .await;
    assert!(
        picks(&resolver, 100).await.contains_key(&1),
        "on trial: picked"
    );
    let resolved = loop {
        let resolved = resolver.resolve_path(PATH, None).await.unwrap();
        if resolved.address().port == 1 {
            break resolved;
        }
    };
    resolved.failed();
    assert_eq!(
        resolver.is_ejected(&port(1)),
        Some(true),
        "a failed trial ejects"
    );
    assert_eq!(resolver.stats().ejections, 2);

    // The second ejection lasts twice as long; then a passed trial clears it.
    let started = std::time::Instant::now();
    eventually(
        Duration::from_secs(3),
        "the second ejection over",
        || async { (resolver.is_ejected(&port(1)) == Some(false)).then_some(()) },
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(550));
    resolver.report_success(&port(1));
    for _ in 0..4 {
        resolver.report_failure(&port(1));
    }
    assert_eq!(resolver.is_ejected(&port(1)), Some(false), "trial passed");
}

#[tokio::test]
async fn a_route_never_has_more_than_its_ejection_budget_out() {
    init_logging();
    let config = ResolverConfig {
        outlier: fast_outliers(),
        ..ResolverConfig::default()
    };
    let (resolver, _registrations) = route_on(10, config).await;
    for p in 1..=3 {
        for _ in 0..5 {
            resolver.report_failure(&port(p));
        }
        assert_eq!(resolver.is_ejected(&port(p)), Some(true));
    }
    // 10% of ten addresses: one stays out, the other two serve.
    let seen = picks(&resolver, 200).await;
    assert_eq!(seen.len(), 9, "{seen:?}");
    assert!(!seen.contains_key(&1));
    assert_eq!(resolver.stats().fail_open, 0);
}

#[tokio::test]
async fn a_high_failure_percentage_ejects_at_the_next_interval() {
    init_logging();
    let config = ResolverConfig {
        outlier: OutlierConfig {
            consecutive_failures: 0,
            failure_percentage: 40,
            minimum_requests: 20,
            ..fast_outliers()
        },
        ..ResolverConfig::default()
    };
    let (resolver, _registrations) = route_on(10, config).await;
    for i in 0..40 {
        if i % 2 == 0 {
            resolver.report_failure(&port(2));
        } else {
            resolver.report_success(&port(2));
        }
    }
    eventually(Duration::from_secs(2), "ejection by percentage", || async {
        (resolver.is_ejected(&port(2)) == Some(true)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn alternates_are_distinct_usable_and_follow_the_selector() {
    init_logging();
    let (resolver, _registrations) = route_on(4, ResolverConfig::default()).await;
    for _ in 0..5 {
        resolver.report_failure(&port(3));
    }
    for _ in 0..8 {
        let resolved = resolver.resolve_path(PATH, None).await.unwrap();
        let chosen = resolved.address().port;
        let alternates: Vec<u16> = resolved.alternates(None).map(|a| a.port).collect();
        let distinct: BTreeSet<u16> = alternates.iter().copied().collect();
        assert_eq!(distinct.len(), alternates.len());
        assert!(!distinct.contains(&chosen) && !distinct.contains(&3));
        assert_eq!(alternates.len(), 2, "four, less the chosen and the ejected");
        // Round robin: the next turns, in order.
        let next: Vec<u16> = (1..4)
            .map(|step| (chosen - 1 + step) % 4 + 1)
            .filter(|p| *p != 3)
            .collect();
        assert_eq!(alternates, next);
    }

    // Consistent hashing: the first alternate is where the key goes when its address leaves.
    let hashing = ResolverConfig {
        selector: Arc::new(ConsistentHash::default()),
        outlier: OutlierConfig {
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        },
        ..ResolverConfig::default()
    };
    for key in [&b"user-1"[..], b"user-2", b"user-3"] {
        let (resolver, _registrations) = route_on(4, hashing.clone()).await;
        let resolved = resolver.resolve_path(PATH, Some(key)).await.unwrap();
        let chosen = resolved.address().clone();
        let first = resolved.alternates(Some(key)).next().unwrap().port;
        for _ in 0..5 {
            resolver.report_failure(&chosen);
        }
        let moved = resolver.resolve_path(PATH, Some(key)).await.unwrap();
        assert_eq!(moved.address().port, first, "key {key:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_returns_once_watchers_have_the_deregistration() {
    init_logging();
    let registry = Arc::new(MemoryRouteManager::default());
    let serving = registry
        .register(Instance::new(port(1), vec![descriptor("A")]))
        .await
        .unwrap();
    let _other = registry
        .register(Instance::new(port(2), vec![descriptor("A")]))
        .await
        .unwrap();
    let resolver = AddressResolver::new(registry.clone()).await.unwrap();
    let started = std::time::Instant::now();
    serving.drain(Duration::from_secs(5)).await.unwrap();
    let took = started.elapsed();
    // By the time the drain returns, a resolver watching the registry has dropped the address.
    for _ in 0..20 {
        let resolved = resolver.resolve_path(PATH, None).await.unwrap();
        assert_eq!(resolved.address().port, 2);
    }
    assert!(
        took >= wayfinder::DRAIN_SETTLE && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_new_to_the_client_ramps_up_over_the_slow_start_window() {
    init_logging();
    let registry = Arc::new(MemoryRouteManager::default());
    let _old = registry
        .register(Instance::new(port(1), vec![descriptor("A")]))
        .await
        .unwrap();
    let window = Duration::from_secs(2);
    let config = ResolverConfig {
        slow_start: SlowStartConfig {
            window,
            min_weight_percent: 10,
        },
        health: HealthConfig {
            enabled: false,
            ..HealthConfig::default()
        },
        ..ResolverConfig::default()
    };
    let resolver = AddressResolver::with_config(registry.clone(), config)
        .await
        .unwrap();
    // Port 1 was there when the client started: it takes its full share. Port 2 joins now.
    let _new = registry
        .register(Instance::new(port(2), vec![descriptor("A")]))
        .await
        .unwrap();
    let joined = std::time::Instant::now();
    eventually(Duration::from_secs(2), "the new address seen", || async {
        (resolver.resolve_all(PATH).await.ok()?.len() == 2).then_some(())
    })
    .await;
    let share = |seen: BTreeMap<u16, usize>| {
        seen.get(&2).copied().unwrap_or(0) as f64 / seen.values().sum::<usize>() as f64
    };
    let early = share(picks(&resolver, 1000).await);
    assert!(early < 0.25, "a cold address took {early:.2} of the picks");
    let late = eventually(window * 2, "the full share", || async {
        let late = share(picks(&resolver, 1000).await);
        (late > 0.4).then_some(late)
    })
    .await;
    assert!(
        joined.elapsed() >= window / 2,
        "full share after {:?}",
        joined.elapsed()
    );
    println!("slow start: share {early:.2} at first, {late:.2} after the window");
}
