//! The address resolver: table, health monitor on real sockets, fail-open, static stability.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{descriptor, eventually, init_logging, instance};
use tokio::net::TcpSocket;
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::resolve::{HealthConfig, ResolverConfig};
use wayfinder::{
    Address, AddressResolver, ErrorKind, Instance, Registration, RouteManager, RouteSource,
    RouteWatch, ServiceDescriptor, ServiceRoute,
};

/// A listener on 127.0.0.1 that accepts and counts connections until dropped.
struct CountingListener {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingListener {
    async fn bind(port: u16) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(([127, 0, 0, 1], port).into()).unwrap();
        let listener = socket.listen(1024).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                drop(stream);
            }
        });
        CountingListener {
            port,
            accepted,
            task,
        }
    }

    fn address(&self) -> Address {
        Address::new("127.0.0.1", self.port)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    fn close(self) -> u16 {
        self.task.abort();
        self.port
    }
}

fn fast_health() -> HealthConfig {
    HealthConfig {
        timeout: Duration::from_millis(300),
        interval: Duration::from_millis(100),
        jitter: 0.1,
        failure_threshold: 3,
        success_threshold: 2,
        ..HealthConfig::default()
    }
}

fn config(health: HealthConfig) -> ResolverConfig {
    ResolverConfig {
        health,
        ..ResolverConfig::default()
    }
}

fn no_health() -> ResolverConfig {
    config(HealthConfig {
        enabled: false,
        failure_threshold: 1,
        success_threshold: 1,
        ..HealthConfig::default()
    })
}

async fn register(
    registry: &MemoryRouteManager,
    address: Address,
    routes: Vec<ServiceDescriptor>,
) -> Registration {
    registry
        .register(Instance::new(address, routes))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_listener_goes_unhealthy_after_failures_and_back_after_successes() {
    init_logging();
    let registry = MemoryRouteManager::default();
    let listener = CountingListener::bind(0).await;
    let address = listener.address();
    let _reg = register(&registry, address.clone(), vec![descriptor("A")]).await;
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), config(fast_health()))
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "a first probe", || async {
        (listener.accepted() > 0).then_some(())
    })
    .await;
    assert_eq!(resolver.is_healthy(&address), Some(true));

    let port = listener.close();
    let probes_at_close = resolver.stats().probes;
    eventually(Duration::from_secs(5), "unhealthy", || async {
        (resolver.is_healthy(&address) == Some(false)).then_some(())
    })
    .await;
    let probes = resolver.stats().probes - probes_at_close;
    assert!(probes >= 3, "flipped after {probes} probes, threshold is 3");

    let listener = CountingListener::bind(port).await;
    let probes_at_open = resolver.stats().probes;
    eventually(Duration::from_secs(5), "healthy again", || async {
        (resolver.is_healthy(&address) == Some(true)).then_some(())
    })
    .await;
    let probes = resolver.stats().probes - probes_at_open;
    assert!(
        probes >= 2,
        "recovered after {probes} probes, threshold is 2"
    );
    // A probe's connection completes in the kernel before the listener's accept loop counts it.
    eventually(Duration::from_secs(5), "the probes accepted", || async {
        (listener.accepted() >= 2).then_some(())
    })
    .await;
    assert_eq!(resolver.stats().health_flips, 2);
}

#[tokio::test]
async fn passive_reports_follow_the_thresholds() {
    let registry = MemoryRouteManager::default();
    let _reg = register(
        &registry,
        Address::new("127.0.0.1", 1),
        vec![descriptor("A")],
    )
    .await;
    let health = HealthConfig {
        enabled: false,
        ..fast_health()
    };
    let resolver = AddressResolver::with_config(Arc::new(registry), config(health))
        .await
        .unwrap();
    let address = Address::new("127.0.0.1", 1);
    resolver.report_failure(&address);
    resolver.report_failure(&address);
    assert_eq!(
        resolver.is_healthy(&address),
        Some(true),
        "two failures are below the threshold"
    );
    resolver.report_success(&address);
    for _ in 0..3 {
        resolver.report_failure(&address);
    }
    assert_eq!(
        resolver.is_healthy(&address),
        Some(false),
        "three consecutive failures flip it"
    );
    resolver.report_success(&address);
    assert_eq!(resolver.is_healthy(&address), Some(false));
    resolver.report_success(&address);
    assert_eq!(resolver.is_healthy(&address), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_routes_on_three_addresses_probe_each_address_once_per_interval() {
    init_logging();
    let registry = MemoryRouteManager::default();
    let listeners = [
        CountingListener::bind(0).await,
        CountingListener::bind(0).await,
        CountingListener::bind(0).await,
    ];
    let routes: Vec<ServiceDescriptor> = (0..1000).map(|i| descriptor(&format!("M{i}"))).collect();
    let mut registrations = Vec::new();
    for listener in &listeners {
        registrations.push(register(&registry, listener.address(), routes.clone()).await);
    }
    let interval = Duration::from_millis(200);
    let health = HealthConfig {
        interval,
        ..fast_health()
    };
    let resolver = AddressResolver::with_config(Arc::new(registry), config(health))
        .await
        .unwrap();
    assert_eq!(resolver.stats().routes, 1000);
    assert_eq!(resolver.stats().endpoints, 3);

    let before: Vec<usize> = listeners.iter().map(CountingListener::accepted).collect();
    let window = Duration::from_millis(2000);
    tokio::time::sleep(window).await;
    let intervals = window.as_secs_f64() / interval.as_secs_f64();
    for (listener, before) in listeners.iter().zip(before) {
        let probes = listener.accepted() - before;
        assert!(
            (intervals * 0.7) as usize <= probes && probes <= (intervals * 1.3) as usize + 1,
            "{probes} probes in {intervals} intervals"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_address_does_not_delay_the_others() {
    init_logging();
    // A listener that never accepts, with its queue full: further connects hang until timeout.
    let blackhole = TcpSocket::new_v4().unwrap();
    blackhole.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let blackhole = blackhole.listen(0).unwrap();
    let blackhole_port = blackhole.local_addr().unwrap().port();
    let _queued = std::net::TcpStream::connect(("127.0.0.1", blackhole_port)).unwrap();
    let timeout = Duration::from_millis(500);
    let hung = Instant::now();
    assert!(!wayfinder::resolve::probe(&Address::new("127.0.0.1", blackhole_port), timeout).await);
    assert!(hung.elapsed() >= timeout, "the blackhole answered");

    let registry = MemoryRouteManager::default();
    let alive = CountingListener::bind(0).await;
    let _a = register(&registry, alive.address(), vec![descriptor("A")]).await;
    let _b = register(
        &registry,
        Address::new("127.0.0.1", blackhole_port),
        vec![descriptor("A")],
    )
    .await;
    let interval = Duration::from_millis(100);
    let health = HealthConfig {
        interval,
        timeout,
        failure_threshold: 2,
        max_concurrency: 2,
        ..fast_health()
    };
    let resolver = AddressResolver::with_config(Arc::new(registry), config(health))
        .await
        .unwrap();

    let start = alive.accepted();
    let window = Duration::from_millis(1500);
    tokio::time::sleep(window).await;
    let probes = alive.accepted() - start;
    // Had the blackhole's timeouts held up the live address, it would see about window / timeout.
    assert!(
        probes >= 10,
        "only {probes} probes of the live address in {window:?}"
    );
    assert_eq!(
        resolver.is_healthy(&Address::new("127.0.0.1", blackhole_port)),
        Some(false)
    );
    drop(blackhole);
}

#[tokio::test]
async fn paths_resolve_case_insensitively_and_templates_after_exact_paths() {
    let registry = MemoryRouteManager::default();
    let routes = vec![
        ServiceDescriptor::new("Svc.IUserService.GetUserName", "api/user/getusername"),
        ServiceDescriptor::new(
            "Svc.IUserService.GetUserName_id",
            "api/user/getusername/{id}",
        ),
        ServiceDescriptor::new("Svc.IUserService.GetBoth_id_name", "api/user/{id}/{name}"),
        ServiceDescriptor::new("Svc.IUserService.GetOne_name", "api/user/{name}/profile"),
        ServiceDescriptor::new("Svc.IUserService.Latest", "api/user/latest/profile"),
    ];
    let _reg = register(&registry, Address::new("127.0.0.1", 1), routes).await;
    let resolver = AddressResolver::with_config(Arc::new(registry), no_health())
        .await
        .unwrap();
    let id_of = |path: &'static str| {
        let table = resolver.table();
        table.by_path(path).map(|e| e.route().id().to_owned())
    };
    assert_eq!(
        id_of("api/user/getusername").as_deref(),
        Some("Svc.IUserService.GetUserName")
    );
    assert_eq!(
        id_of("/Api/User/GetUserName").as_deref(),
        Some("Svc.IUserService.GetUserName")
    );
    assert_eq!(
        id_of("api/user/getusername/42").as_deref(),
        Some("Svc.IUserService.GetUserName_id")
    );
    assert_eq!(
        id_of("api/user/latest/profile").as_deref(),
        Some("Svc.IUserService.Latest"),
        "exact before template"
    );
    assert_eq!(
        id_of("api/user/bob/profile").as_deref(),
        Some("Svc.IUserService.GetOne_name"),
        "one parameter before two"
    );
    assert_eq!(
        id_of("api/user/7/bob").as_deref(),
        Some("Svc.IUserService.GetBoth_id_name")
    );
    assert_eq!(id_of("api/user/getusername/42/extra"), None);

    let resolved = resolver
        .resolve_path("API/USER/GETUSERNAME/7", None)
        .await
        .unwrap();
    assert_eq!(resolved.address(), &Address::new("127.0.0.1", 1));
    let resolved = resolver
        .resolve_id("Svc.IUserService.Latest", None)
        .await
        .unwrap();
    assert_eq!(resolved.address().port, 1);
}

/// Counts `list` calls of the backend it wraps: a reader needs only `RouteSource`.
#[derive(Debug)]
struct CountingLists {
    inner: MemoryRouteManager,
    lists: AtomicUsize,
}

#[async_trait]
impl RouteSource for CountingLists {
    fn backend(&self) -> &'static str {
        "memory"
    }
    async fn list(&self) -> wayfinder::Result<Vec<ServiceRoute>> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.inner.list().await
    }
    async fn watch(&self) -> wayfinder::Result<RouteWatch> {
        self.inner.watch().await
    }
}

#[tokio::test]
async fn unknown_paths_are_not_found_and_remembered() {
    let registry = MemoryRouteManager::default();
    let counting = Arc::new(CountingLists {
        inner: registry.clone(),
        lists: AtomicUsize::new(0),
    });
    let mut config = no_health();
    config.negative_ttl = Duration::from_secs(60);
    let resolver = AddressResolver::with_config(counting.clone(), config)
        .await
        .unwrap();
    for _ in 0..100 {
        let err = resolver
            .resolve_path("api/nothing/here", None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
    assert_eq!(
        counting.lists.load(Ordering::Relaxed),
        1,
        "one backend lookup for 100 misses"
    );
    assert_eq!(resolver.stats().not_found, 100);
    assert_eq!(resolver.stats().resolves, 100);

    let _reg = registry.register(instance(7402, &["A"])).await.unwrap();
    eventually(Duration::from_secs(5), "the route in the table", || async {
        resolver.table().by_path("api/demo/a").map(|_| ())
    })
    .await;
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..25 {
                    assert!(resolver.try_resolve_path("api/demo/a", None).is_some());
                }
            });
        }
    });
    let stats = resolver.stats();
    assert_eq!(stats.resolves, 200, "lookups on every thread are counted");
    assert_eq!(stats.not_found, 100);
}

#[tokio::test]
async fn the_resolver_follows_registrations_and_keeps_routes_through_an_outage() {
    init_logging();
    let registry = MemoryRouteManager::default();
    let mut config = no_health();
    config.negative_ttl = Duration::from_millis(1);
    // Empty protection off: the last address leaves as soon as it is deregistered.
    config.empty_grace = Some(Duration::ZERO);
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), config)
        .await
        .unwrap();
    let reg = registry.register(instance(7401, &["A"])).await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the new route in the table",
        || async {
            resolver
                .table()
                .by_path("api/demo/a")
                .map(|e| e.route().addresses.len())
        },
    )
    .await;

    assert_eq!(resolver.stats().watch_reconnects, 0);
    registry.set_outage(true);
    eventually(Duration::from_secs(5), "a stale status", || async {
        resolver.stats().stale.then_some(())
    })
    .await;
    let resolved = resolver.resolve_path("api/demo/a", None).await.unwrap();
    assert_eq!(
        resolved.address().port,
        7401,
        "the last good route is served"
    );
    registry.set_outage(false);
    eventually(Duration::from_secs(5), "a current status", || async {
        (!resolver.stats().stale).then_some(())
    })
    .await;
    assert_eq!(resolver.stats().watch_reconnects, 1);

    reg.shutdown().await.unwrap();
    common::not_found_within(&resolver, "api/demo/a", Duration::from_secs(5)).await;
}

#[tokio::test]
async fn selection_fails_open_when_every_address_is_unhealthy() {
    let registry = MemoryRouteManager::default();
    let _a = register(
        &registry,
        Address::new("127.0.0.1", 1),
        vec![descriptor("A")],
    )
    .await;
    let _b = register(
        &registry,
        Address::new("127.0.0.1", 2),
        vec![descriptor("A")],
    )
    .await;
    let resolver = AddressResolver::with_config(Arc::new(registry), no_health())
        .await
        .unwrap();
    resolver.report_failure(&Address::new("127.0.0.1", 1));
    let all = resolver.resolve_all("api/demo/a").await.unwrap();
    assert_eq!(all, vec![Arc::new(Address::new("127.0.0.1", 2))]);
    for _ in 0..4 {
        let resolved = resolver.resolve_path("api/demo/a", None).await.unwrap();
        assert_eq!(resolved.address().port, 2);
        assert!(!resolved.is_fail_open());
    }
    resolver.report_failure(&Address::new("127.0.0.1", 2));
    let mut ports = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let resolved = resolver.resolve_path("api/demo/a", None).await.unwrap();
        assert!(resolved.is_fail_open());
        ports.insert(resolved.address().port);
    }
    assert_eq!(
        ports.into_iter().collect::<Vec<_>>(),
        vec![1, 2],
        "fail-open uses every address"
    );
    assert_eq!(resolver.stats().fail_open, 4);
    assert_eq!(resolver.resolve_all("api/demo/a").await.unwrap().len(), 2);
}

#[tokio::test]
async fn resolutions_carry_the_address_details_the_route_publishes_now() {
    let registry = MemoryRouteManager::default();
    let mut address = Address::new("127.0.0.1", 7501);
    address.ws_port = Some(1);
    let _first = register(&registry, address.clone(), vec![descriptor("A")]).await;
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), no_health())
        .await
        .unwrap();
    assert_eq!(
        resolver
            .resolve_path("api/demo/a", None)
            .await
            .unwrap()
            .address()
            .ws_port,
        Some(1)
    );

    // The same instance publishes again with another WebSocket port.
    address.ws_port = Some(2);
    let _second = register(&registry, address, vec![descriptor("A")]).await;
    eventually(Duration::from_secs(5), "the new details", || async {
        let resolved = resolver.resolve_path("api/demo/a", None).await.unwrap();
        (resolved.address().ws_port == Some(2)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn try_resolve_answers_from_the_table_alone() {
    let registry = MemoryRouteManager::default();
    let counting = Arc::new(CountingLists {
        inner: registry.clone(),
        lists: AtomicUsize::new(0),
    });
    let _reg = register(
        &registry,
        Address::new("127.0.0.1", 7601),
        vec![descriptor("A")],
    )
    .await;
    let resolver = AddressResolver::with_config(counting.clone(), no_health())
        .await
        .unwrap();
    let resolved = resolver
        .try_resolve_path("Api/Demo/A", None)
        .expect("in the table")
        .unwrap();
    assert_eq!(resolved.address().port, 7601);
    let by_id = resolver
        .try_resolve_id("Test.IDemoService.A", None)
        .expect("in the table")
        .unwrap();
    assert_eq!(by_id.route().route_path(), "api/demo/a");
    assert!(resolver
        .try_resolve_path("api/demo/missing", None)
        .is_none());
    assert_eq!(
        counting.lists.load(Ordering::Relaxed),
        0,
        "the backend was never asked"
    );
}

#[tokio::test]
async fn a_subscribed_resolver_holds_only_its_services_and_says_what_is_not_subscribed() {
    let registry = MemoryRouteManager::default();
    let routes = vec![
        ServiceDescriptor::new("App.IUserService.Get", "api/user/get"),
        ServiceDescriptor::new("App.IOrderService.Get", "api/order/get"),
        ServiceDescriptor::new("App.IStockService.Get", "api/stock/get"),
    ];
    let _registration = registry
        .register(Instance::new(Address::new("127.0.0.1", 9301), routes))
        .await
        .unwrap();
    let mut config = no_health();
    config.services = vec!["App.IUserService".into(), "App.IStockService".into()];
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), config)
        .await
        .unwrap();
    assert_eq!(
        resolver.stats().routes,
        2,
        "only the subscribed routes are held"
    );
    let resolved = resolver.resolve_path("api/user/get", None).await.unwrap();
    assert_eq!(resolved.address().port, 9301);
    assert!(resolver
        .resolve_id("App.IStockService.Get", None)
        .await
        .is_ok());

    let path = resolver
        .resolve_path("api/order/get", None)
        .await
        .unwrap_err();
    assert_eq!(path.kind(), ErrorKind::NotFound);
    assert!(path.to_string().contains("not subscribed"), "{path}");
    let id = resolver
        .resolve_id("App.IOrderService.Get", None)
        .await
        .unwrap_err();
    assert_eq!(id.kind(), ErrorKind::NotFound);
    assert!(id.to_string().contains("is not subscribed"), "{id}");

    // A route registered later inside the subscription arrives; one outside does not.
    let later = vec![
        ServiceDescriptor::new("App.IUserService.Save", "api/user/save"),
        ServiceDescriptor::new("App.IOrderService.Save", "api/order/save"),
    ];
    let _later = registry
        .register(Instance::new(Address::new("127.0.0.1", 9302), later))
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the later route to arrive", || {
        let found = resolver.try_resolve_path("api/user/save", None).is_some();
        async move { found.then_some(()) }
    })
    .await;
    assert!(resolver.try_resolve_path("api/order/save", None).is_none());
    assert_eq!(resolver.stats().routes, 3);
}
