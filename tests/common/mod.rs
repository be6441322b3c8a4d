//! Shared test support: the backend harness trait, helpers, and the conformance suite.
#![allow(dead_code)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod conformance;
pub mod consul_cluster;
pub mod consul_server;
pub mod etcd_server;
pub mod lookups;
pub mod proxy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wayfinder::{
    Address, Instance, RouteEvent, RouteManager, RouteWatch, ServiceDescriptor, ServiceRoute,
};

/// One isolated registry of some backend, and ways to reach around the API into it.
#[allow(async_fn_in_trait)]
pub trait Harness: Sized {
    /// A fresh registry that no other test uses.
    async fn new() -> Self;
    /// A new client (manager) of this registry; separate clients model separate processes.
    async fn client(&self) -> Arc<dyn RouteManager>;
    /// Writes malformed entries under service ids that start with `Bad.`, bypassing the API.
    async fn put_malformed(&self);
    /// Writes a whole route value for `service_id` as Surging itself does (one value per service
    /// id, no liveness), bypassing the API.
    async fn put_surging_route(&self, service_id: &str, value: &[u8]);
    /// Deletes every route entry under the test's prefix bypassing the API (`etcdctl del
    /// --prefix`, `consul kv delete -recurse`, an edited file), leaving liveness records alone.
    async fn delete_entries_by_hand(&self);
    /// Makes the registry unreadable (an outage, a corrupt file).
    async fn break_backend(&self);
    /// Undoes `break_backend`, restoring what was there.
    async fn restore_backend(&self);
    /// How long after its heartbeats stop an instance registered with `ttl` may still be listed.
    fn expiry_bound(ttl: Duration) -> Duration {
        ttl + Duration::from_secs(2)
    }
    /// How long background work of a dropped watch may take to end (an in-flight request).
    fn settle_time() -> Duration {
        Duration::from_secs(5)
    }
}

/// Installs a log subscriber once, so warnings show in failing tests' output.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "wayfinder=debug".into()),
        )
        .try_init();
}

/// A descriptor for `api/<name>` with a Surging-style id.
pub fn descriptor(name: &str) -> ServiceDescriptor {
    ServiceDescriptor::new(
        format!("Test.IDemoService.{name}"),
        format!("api/demo/{}", name.to_lowercase()),
    )
}

/// An instance on 127.0.0.1:`port` serving `names`.
pub fn instance(port: u16, names: &[&str]) -> Instance {
    Instance::new(
        Address::new("127.0.0.1", port),
        names.iter().map(|n| descriptor(n)).collect(),
    )
}

/// Waits for the next event, failing the test after `within`.
pub async fn next_event(watch: &mut RouteWatch, within: Duration) -> RouteEvent {
    match tokio::time::timeout(within, watch.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("watch ended unexpectedly"),
        Err(_) => panic!("no watch event within {within:?}"),
    }
}

/// The next `count` events, each within `within` of the one before.
pub async fn next_events(
    watch: &mut RouteWatch,
    count: usize,
    within: Duration,
) -> Vec<RouteEvent> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        events.push(next_event(watch, within).await);
    }
    events
}

/// Reads events until `Synced`; returns the `Created` routes before it.
pub async fn initial_routes(watch: &mut RouteWatch) -> Vec<ServiceRoute> {
    let mut routes = Vec::new();
    loop {
        match next_event(watch, Duration::from_secs(10)).await {
            RouteEvent::Created(route) => routes.push(std::sync::Arc::unwrap_or_clone(route)),
            RouteEvent::Synced => return routes,
            other => panic!("unexpected event before Synced: {other:?}"),
        }
    }
}

/// Polls `check` until it returns `Some`, failing with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sorted `host:port` list of one route in `routes`, empty when absent.
pub fn addresses_of(routes: &[ServiceRoute], id: &str) -> Vec<String> {
    let mut found: Vec<String> = routes
        .iter()
        .filter(|r| r.id() == id)
        .flat_map(|r| r.addresses.iter().map(ToString::to_string))
        .collect();
    found.sort();
    found
}

/// Waits until `path` answers `NotFound` from `resolver`.
pub async fn not_found_within(resolver: &wayfinder::AddressResolver, path: &str, within: Duration) {
    let kind = eventually(within, "the path gone", || async {
        resolver
            .resolve_path(path, None)
            .await
            .err()
            .map(|e| e.kind())
    })
    .await;
    assert_eq!(kind, wayfinder::ErrorKind::NotFound);
}

/// A resolver configuration without active health checks (for tests about the registry path).
pub fn without_health_checks() -> wayfinder::ResolverConfig {
    wayfinder::ResolverConfig {
        health: wayfinder::resolve::HealthConfig {
            enabled: false,
            ..wayfinder::resolve::HealthConfig::default()
        },
        ..wayfinder::ResolverConfig::default()
    }
}

/// The built example `name`, beside the test binaries' directory (`cargo test` builds the
/// examples before it runs the tests). Fails if it is missing or older than the sources.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let how = "run the whole suite (`cargo test --all-features`), which builds the examples first";
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {how}", binary.display()));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let newest_source = ["src", "examples"]
        .iter()
        .filter_map(|dir| newest_mtime(&root.join(dir)))
        .max();
    assert!(
        newest_source.is_none_or(|source| source <= built),
        "{} is older than the sources: {how}",
        binary.display()
    );
    binary
}

fn newest_mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|entry| newest_mtime(&entry.ok()?.path()))
        .max()
}

/// Removes every `WAYFINDER_*` variable the test runner inherited from a child's environment,
/// so only what a test sets configures the child.
pub fn clear_wayfinder_env(command: &mut tokio::process::Command) -> &mut tokio::process::Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WAYFINDER_") {
            command.env_remove(name);
        }
    }
    command
}

/// Sends SIGTERM to a running child process.
pub async fn send_sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("running").to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}
