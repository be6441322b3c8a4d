//! The resolver's snapshot: written as the routes change, served when the registry cannot be
//! read at start, replaced by the first good read; foreign or corrupt snapshots are ignored.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{descriptor, eventually, init_logging, without_health_checks};
use wayfinder::backends::memory::{MemoryConfig, MemoryRouteManager};
use wayfinder::route::KeyLayout;
use wayfinder::{
    Address, AddressResolver, ErrorKind, Instance, ResolverConfig, RouteManager, RouteSource,
};

fn with_snapshot(path: &Path) -> ResolverConfig {
    ResolverConfig {
        snapshot: Some(path.to_path_buf()),
        start_timeout: Duration::from_millis(300),
        ..without_health_checks()
    }
}

fn registry(prefix: &str) -> MemoryRouteManager {
    MemoryRouteManager::new(MemoryConfig {
        layout: KeyLayout::new(prefix).unwrap(),
        ..MemoryConfig::default()
    })
}

async fn register(registry: &MemoryRouteManager, port: u16) -> wayfinder::Registration {
    let instance = Instance::new(Address::new("127.0.0.1", port), vec![descriptor("A")]);
    registry.register(instance).await.unwrap()
}

/// Waits until the snapshot file lists `port` for `api/demo/a`.
async fn snapshot_lists(path: &Path, port: u16) {
    eventually(Duration::from_secs(5), "the snapshot written", || async {
        let text = tokio::fs::read_to_string(path).await.ok()?;
        text.contains(&format!("\\\"Port\\\":{port}")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_started_during_an_outage_serves_the_snapshot_until_the_registry_answers() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.snapshot.json");
    let registry = registry("snap/a/");
    let first = register(&registry, 7601).await;
    let writer = AddressResolver::with_config(Arc::new(registry.clone()), with_snapshot(&path))
        .await
        .unwrap();
    snapshot_lists(&path, 7601).await;
    drop(writer);
    // The registry moves on while no resolver writes the snapshot.
    first.shutdown().await.unwrap();
    let _second = register(&registry, 7602).await;

    registry.set_outage(true);
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), with_snapshot(&path))
        .await
        .expect("the snapshot serves while the registry cannot be read");
    let stats = resolver.stats();
    assert!(stats.from_snapshot && stats.stale, "{stats:?}");
    let served = resolver.resolve_path("api/demo/a", None).await.unwrap();
    assert_eq!(served.address().port, 7601, "the snapshot's address");

    registry.set_outage(false);
    eventually(Duration::from_secs(10), "the registry's routes", || async {
        let resolved = resolver.resolve_path("api/demo/a", None).await.ok()?;
        (resolved.address().port == 7602).then_some(())
    })
    .await;
    let entry = resolver.table().by_path("api/demo/a").cloned().unwrap();
    assert_eq!(
        entry.route().addresses.len(),
        1,
        "the first good read replaced the snapshot outright"
    );
    let stats = resolver.stats();
    assert!(!stats.from_snapshot && !stats.stale, "{stats:?}");
    snapshot_lists(&path, 7602).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_or_corrupt_snapshot_is_ignored() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.snapshot.json");
    let other = registry("snap/other/");
    let _reg = register(&other, 7611).await;
    let writer = AddressResolver::with_config(Arc::new(other.clone()), with_snapshot(&path))
        .await
        .unwrap();
    snapshot_lists(&path, 7611).await;
    drop(writer);

    let mine = registry("snap/mine/");
    mine.set_outage(true);
    let foreign = AddressResolver::with_config(Arc::new(mine.clone()), with_snapshot(&path)).await;
    assert_eq!(
        foreign.err().map(|e| e.kind()),
        Some(ErrorKind::Unavailable),
        "another registry's snapshot is not served"
    );

    let text = std::fs::read(&path).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    other.set_outage(true);
    let corrupt = AddressResolver::with_config(Arc::new(other.clone()), with_snapshot(&path)).await;
    assert_eq!(
        corrupt.err().map(|e| e.kind()),
        Some(ErrorKind::Unavailable)
    );

    let without =
        AddressResolver::with_config(Arc::new(other.clone()), without_health_checks()).await;
    assert_eq!(
        without.err().map(|e| e.kind()),
        Some(ErrorKind::Unavailable)
    );
    other.set_outage(false);
    let listed = other.list().await.unwrap();
    assert_eq!(listed.len(), 1);
}
