//! Empty protection in the resolver: a route about to lose its last address keeps it for a grace
//! period; a registry that restarts empty costs no lookups. Memory backend, real sockets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::lookups::Lookups;
use common::{descriptor, eventually, init_logging, not_found_within, without_health_checks};
use tokio::net::TcpListener;
use wayfinder::backends::memory::{MemoryConfig, MemoryRouteManager};
use wayfinder::resolve::HealthConfig;
use wayfinder::{Address, AddressResolver, Instance, ResolverConfig, RouteManager, RouteSource};

fn grace(grace: Duration) -> ResolverConfig {
    ResolverConfig {
        empty_grace: Some(grace),
        ..without_health_checks()
    }
}

async fn register(registry: &MemoryRouteManager, port: u16) -> wayfinder::Registration {
    let instance = Instance::new(Address::new("127.0.0.1", port), vec![descriptor("A")])
        .with_ttl(Duration::from_secs(1));
    registry.register(instance).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_address_is_held_for_the_grace_then_released() {
    init_logging();
    let registry = MemoryRouteManager::default();
    let reg = register(&registry, 7501).await;
    let resolver =
        AddressResolver::with_config(Arc::new(registry.clone()), grace(Duration::from_secs(2)))
            .await
            .unwrap();
    reg.shutdown().await.unwrap();
    assert!(
        registry.list().await.unwrap().is_empty(),
        "the registry removed it"
    );
    eventually(Duration::from_secs(2), "the route protected", || async {
        (resolver.stats().protected_routes == 1).then_some(())
    })
    .await;
    let held = resolver.resolve_path("api/demo/a", None).await.unwrap();
    assert_eq!(
        held.address().port,
        7501,
        "the last address is still served"
    );
    not_found_within(&resolver, "api/demo/a", Duration::from_secs(3)).await;
    assert_eq!(resolver.stats().protected_routes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_other_addresses_drops_a_removed_one_at_once() {
    init_logging();
    let registry = MemoryRouteManager::default();
    let gone = register(&registry, 7511).await;
    let _stays = register(&registry, 7512).await;
    let resolver =
        AddressResolver::with_config(Arc::new(registry.clone()), grace(Duration::from_secs(60)))
            .await
            .unwrap();
    gone.shutdown().await.unwrap();
    eventually(Duration::from_secs(2), "one address left", || async {
        let entry = resolver.table().by_path("api/demo/a").cloned()?;
        (entry.route().addresses.len() == 1).then_some(())
    })
    .await;
    for _ in 0..10 {
        let resolved = resolver.resolve_path("api/demo/a", None).await.unwrap();
        assert_eq!(resolved.address().port, 7512);
    }
    assert_eq!(resolver.stats().protected_routes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_address_leaves_early_when_health_checks_fail() {
    init_logging();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    let registry = MemoryRouteManager::default();
    let reg = register(&registry, port).await;
    let config = ResolverConfig {
        empty_grace: Some(Duration::from_secs(60)),
        health: HealthConfig {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
            failure_threshold: 2,
            ..HealthConfig::default()
        },
        ..ResolverConfig::default()
    };
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), config)
        .await
        .unwrap();
    reg.shutdown().await.unwrap();
    eventually(Duration::from_secs(2), "the route protected", || async {
        (resolver.stats().protected_routes == 1).then_some(())
    })
    .await;
    assert!(resolver.resolve_path("api/demo/a", None).await.is_ok());
    accept.abort();
    let _ = accept.await;
    // Discovery and health agree: gone long before the 60 s grace.
    not_found_within(&resolver, "api/demo/a", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_listed_again_ends_its_protection() {
    init_logging();
    let registry = MemoryRouteManager::default();
    let first = register(&registry, 7521).await;
    let resolver =
        AddressResolver::with_config(Arc::new(registry.clone()), grace(Duration::from_secs(60)))
            .await
            .unwrap();
    first.shutdown().await.unwrap();
    eventually(Duration::from_secs(2), "the route protected", || async {
        (resolver.stats().protected_routes == 1).then_some(())
    })
    .await;
    let _second = register(&registry, 7522).await;
    eventually(Duration::from_secs(2), "only the new address", || async {
        let entry = resolver.table().by_path("api/demo/a").cloned()?;
        let ports: Vec<u16> = entry.route().addresses.iter().map(|a| a.port).collect();
        (ports == [7522]).then_some(())
    })
    .await;
    assert_eq!(resolver.stats().protected_routes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_grace_removes_the_last_address_at_once() {
    init_logging();
    let registry = MemoryRouteManager::default();
    let reg = register(&registry, 7531).await;
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), grace(Duration::ZERO))
        .await
        .unwrap();
    reg.shutdown().await.unwrap();
    not_found_within(&resolver, "api/demo/a", Duration::from_secs(2)).await;
    assert_eq!(resolver.stats().protected_routes, 0);
}

/// A registry restarted empty refills as its instances renew: one with a short TTL comes back
/// first, the other only at its next renewal (TTL/3 of 6 s). Until then the route is listed with
/// one address; after a reset that does not drop the other one, which is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_restarted_empty_costs_no_lookups() {
    init_logging();
    let registry = MemoryRouteManager::new(MemoryConfig {
        ttl: Duration::from_secs(10),
        ..MemoryConfig::default()
    });
    let quick = Instance::new(Address::new("127.0.0.1", 7541), vec![descriptor("A")])
        .with_ttl(Duration::from_secs(1));
    let slow = Instance::new(Address::new("127.0.0.1", 7542), vec![descriptor("A")])
        .with_ttl(Duration::from_secs(6));
    let _quick = registry.register(quick).await.unwrap();
    let _slow = registry.register(slow).await.unwrap();
    // Default grace: twice the registry's TTL (20 s).
    let resolver = Arc::new(
        AddressResolver::with_config(Arc::new(registry.clone()), without_health_checks())
            .await
            .unwrap(),
    );
    let lookups = Lookups::start(resolver.clone(), &["api/demo/a"]);
    registry.restart_empty();
    assert!(registry.list().await.unwrap().is_empty());
    eventually(
        Duration::from_secs(2),
        "the quick instance back",
        || async {
            let routes = registry.list().await.ok()?;
            (routes.first()?.addresses.len() == 1).then_some(())
        },
    )
    .await;
    let served = resolver.table().by_path("api/demo/a").cloned().unwrap();
    let mut ports: Vec<u16> = served.route().addresses.iter().map(|a| a.port).collect();
    ports.sort();
    assert_eq!(ports, [7541, 7542], "the instance not back yet is held");
    assert_eq!(resolver.stats().protected_routes, 1);
    eventually(Duration::from_secs(5), "the slow instance back", || async {
        let routes = registry.list().await.ok()?;
        (routes.first()?.addresses.len() == 2).then_some(())
    })
    .await;
    eventually(Duration::from_secs(2), "protection over", || async {
        (resolver.stats().protected_routes == 0).then_some(())
    })
    .await;
    let count = lookups.finish("memory registry restarted empty").await;
    assert!(count.total > 100, "the client kept resolving ({count:?})");
    assert_eq!(
        count.failures, 0,
        "no lookup failed while the registry refilled"
    );
}
