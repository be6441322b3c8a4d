//! The conformance suite: behaviour every backend must show, written once.
//!
//! A backend's test file runs it with `conformance_suite!(HarnessType);`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wayfinder::{Address, ErrorKind, Instance, RouteEvent, ServiceDescriptor};

use super::{
    addresses_of, descriptor, eventually, init_logging, initial_routes, instance, next_event,
    next_events, Harness,
};

const SHORT_TTL: Duration = Duration::from_secs(1);
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// Expands to one `#[tokio::test]` per conformance check, for harness type `$h`.
#[macro_export]
macro_rules! conformance_suite {
    ($h:ty) => {
        $crate::conformance_suite!(@tests $h;
            register_then_list, get_by_id, watch_replays_then_follows_in_order, shutdown_deregisters,
            deregister_removes_address_and_heartbeat_does_not_restore_it,
            entries_deleted_by_hand_are_written_back_within_two_ttls,
            abandoned_instance_expires_after_ttl, wiped_instance_registers_again,
            concurrent_registrations_lose_nothing, malformed_entries_are_skipped,
            outage_keeps_last_good_routes, invalid_registrations_are_refused,
            watch_cycles_leak_no_tasks, a_new_watch_or_resolver_sees_every_completed_write,
            a_subscription_reads_and_follows_only_its_services,
            deregistering_edits_surging_values_in_place,
            a_published_load_reaches_readers_on_the_heartbeat);
    };
    (@tests $h:ty; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                common::conformance::$name::<$h>().await;
            }
        )*
    };
}

pub async fn register_then_list<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let reg = client
        .register(instance(7001, &["GetUser", "SaveUser"]))
        .await
        .unwrap();
    let routes = h.client().await.list().await.unwrap();
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert_eq!(
        addresses_of(&routes, "Test.IDemoService.GetUser"),
        ["127.0.0.1:7001"]
    );
    assert_eq!(routes[0].route_path(), "api/demo/getuser");
    reg.shutdown().await.unwrap();
}

pub async fn get_by_id<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let reg = client.register(instance(7002, &["GetUser"])).await.unwrap();
    let route = client
        .get("Test.IDemoService.GetUser")
        .await
        .unwrap()
        .expect("route present");
    assert_eq!(route.descriptor, descriptor("GetUser"));
    assert_eq!(
        route.addresses,
        vec![Arc::new(Address::new("127.0.0.1", 7002))]
    );
    assert_eq!(client.get("Test.IDemoService.Missing").await.unwrap(), None);
    let err = client.get("bad id with spaces").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    reg.shutdown().await.unwrap();
}

pub async fn watch_replays_then_follows_in_order<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let writer = h.client().await;
    let first = writer.register(instance(7011, &["A"])).await.unwrap();

    let mut watch = h.client().await.watch().await.unwrap();
    let initial = initial_routes(&mut watch).await;
    assert_eq!(initial.len(), 1);
    assert_eq!(
        addresses_of(&initial, "Test.IDemoService.A"),
        ["127.0.0.1:7011"]
    );

    let second = writer.register(instance(7012, &["A", "B"])).await.unwrap();
    // Both routes change; collect until both are seen, in whichever order the backend wrote them.
    let seen = next_events(&mut watch, 2, EVENT_WAIT).await;
    assert!(seen.iter().any(|e| matches!(e, RouteEvent::Changed(r) if r.id() == "Test.IDemoService.A" && r.addresses.len() == 2)), "{seen:?}");
    assert!(
        seen.iter()
            .any(|e| matches!(e, RouteEvent::Created(r) if r.id() == "Test.IDemoService.B")),
        "{seen:?}"
    );

    second.shutdown().await.unwrap();
    let seen = next_events(&mut watch, 2, EVENT_WAIT).await;
    assert!(seen.iter().any(|e| matches!(e, RouteEvent::Changed(r) if r.id() == "Test.IDemoService.A" && r.addresses.len() == 1)), "{seen:?}");
    assert!(
        seen.iter()
            .any(|e| matches!(e, RouteEvent::Removed(r) if r.id() == "Test.IDemoService.B")),
        "{seen:?}"
    );

    first.shutdown().await.unwrap();
    match next_event(&mut watch, EVENT_WAIT).await {
        RouteEvent::Removed(route) => assert_eq!(route.id(), "Test.IDemoService.A"),
        other => panic!("expected A removed, got {other:?}"),
    }
    assert_eq!(watch.try_next(), None, "no further events");
}

pub async fn shutdown_deregisters<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let keep = client.register(instance(7021, &["A"])).await.unwrap();
    let leave = client.register(instance(7022, &["A", "B"])).await.unwrap();
    leave.shutdown().await.unwrap();
    let routes = client.list().await.unwrap();
    assert_eq!(
        addresses_of(&routes, "Test.IDemoService.A"),
        ["127.0.0.1:7021"]
    );
    assert!(addresses_of(&routes, "Test.IDemoService.B").is_empty());
    keep.shutdown().await.unwrap();
    assert!(client.list().await.unwrap().is_empty());
}

pub async fn deregister_removes_address_and_heartbeat_does_not_restore_it<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let reg = client
        .register(instance(7031, &["A", "B"]).with_ttl(SHORT_TTL))
        .await
        .unwrap();
    let other = client.register(instance(7032, &["A"])).await.unwrap();
    let removed = h
        .client()
        .await
        .deregister(&Address::new("127.0.0.1", 7031))
        .await
        .unwrap();
    assert_eq!(removed, 2);
    let routes = client.list().await.unwrap();
    assert_eq!(
        addresses_of(&routes, "Test.IDemoService.A"),
        ["127.0.0.1:7032"]
    );
    assert!(addresses_of(&routes, "Test.IDemoService.B").is_empty());

    // Several heartbeats (every TTL/3) later the removed entries are still gone.
    let mut watch = client.watch().await.unwrap();
    initial_routes(&mut watch).await;
    tokio::time::sleep(SHORT_TTL * 2).await;
    assert_eq!(
        watch.try_next(),
        None,
        "a heartbeat brought a deregistered entry back"
    );
    reg.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
}

pub async fn entries_deleted_by_hand_are_written_back_within_two_ttls<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let reg = client
        .register(instance(7036, &["A", "B"]).with_ttl(SHORT_TTL))
        .await
        .unwrap();
    h.delete_entries_by_hand().await;
    assert!(
        client.list().await.unwrap().is_empty(),
        "the entries were deleted"
    );
    let deleted = Instant::now();
    let routes = eventually(SHORT_TTL * 3, "the entries written back", || async {
        let routes = client.list().await.ok()?;
        (routes.len() == 2).then_some(routes)
    })
    .await;
    let took = deleted.elapsed();
    assert!(took <= SHORT_TTL * 2, "healing took {took:?}");
    assert_eq!(
        addresses_of(&routes, "Test.IDemoService.B"),
        ["127.0.0.1:7036"]
    );
    reg.shutdown().await.unwrap();
    assert!(client.list().await.unwrap().is_empty());
}

pub async fn abandoned_instance_expires_after_ttl<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let stays = client.register(instance(7041, &["A"])).await.unwrap();
    let crashes = client
        .register(instance(7042, &["A", "B"]).with_ttl(SHORT_TTL))
        .await
        .unwrap();
    let mut watch = h.client().await.watch().await.unwrap();
    assert_eq!(initial_routes(&mut watch).await.len(), 2);

    let stopped = Instant::now();
    crashes.abandon().await;
    let bound = H::expiry_bound(SHORT_TTL);
    let seen = next_events(&mut watch, 2, bound).await;
    let took = stopped.elapsed();
    assert!(took <= bound, "expiry took {took:?}");
    assert!(
        seen.iter()
            .any(|e| matches!(e, RouteEvent::Removed(r) if r.id() == "Test.IDemoService.B")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|e| matches!(e, RouteEvent::Changed(r) if r.addresses == vec![Arc::new(Address::new("127.0.0.1", 7041))])), "{seen:?}");
    stays.shutdown().await.unwrap();
}

pub async fn wiped_instance_registers_again<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let reg = client
        .register(instance(7051, &["A", "B"]).with_ttl(SHORT_TTL))
        .await
        .unwrap();
    h.client().await.clear().await.unwrap();
    assert!(
        client.list().await.unwrap().is_empty(),
        "clear left routes behind"
    );
    let started = Instant::now();
    let routes = eventually(SHORT_TTL * 2, "re-registration after a wipe", || async {
        let routes = client.list().await.unwrap();
        (routes.len() == 2).then_some(routes)
    })
    .await;
    assert!(started.elapsed() <= SHORT_TTL * 2);
    assert_eq!(
        addresses_of(&routes, "Test.IDemoService.B"),
        ["127.0.0.1:7051"]
    );
    reg.shutdown().await.unwrap();
}

pub async fn concurrent_registrations_lose_nothing<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let mut tasks = Vec::new();
    for i in 0..16u16 {
        let client = h.client().await;
        tasks.push(tokio::spawn(async move {
            let own: Vec<String> = (0..5).map(|j| format!("Own{i}x{j}")).collect();
            let mut names: Vec<&str> = vec!["S0", "S1", "S2", "S3", "S4"];
            names.extend(own.iter().map(String::as_str));
            client.register(instance(7100 + i, &names)).await.unwrap()
        }));
    }
    let mut registrations = Vec::new();
    for task in tasks {
        registrations.push(task.await.unwrap());
    }
    let routes = h.client().await.list().await.unwrap();
    assert_eq!(routes.len(), 5 + 16 * 5);
    let expected: BTreeSet<String> = (0..16).map(|i| format!("127.0.0.1:{}", 7100 + i)).collect();
    for shared in ["S0", "S1", "S2", "S3", "S4"] {
        let found: BTreeSet<String> = addresses_of(&routes, &format!("Test.IDemoService.{shared}"))
            .into_iter()
            .collect();
        assert_eq!(found, expected, "route {shared} lost addresses");
    }
    for reg in registrations {
        reg.shutdown().await.unwrap();
    }
}

pub async fn malformed_entries_are_skipped<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let reg = client.register(instance(7061, &["Good"])).await.unwrap();
    let mut watch = h.client().await.watch().await.unwrap();
    initial_routes(&mut watch).await;
    h.put_malformed().await;

    let routes = h.client().await.list().await.unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0].id(), "Test.IDemoService.Good");
    let fresh = initial_routes(&mut h.client().await.watch().await.unwrap()).await;
    assert_eq!(fresh.len(), 1, "{fresh:?}");

    // The existing watch keeps working and reports no bad route.
    let later = client.register(instance(7062, &["Later"])).await.unwrap();
    loop {
        match next_event(&mut watch, EVENT_WAIT).await {
            RouteEvent::Created(route) if route.id() == "Test.IDemoService.Later" => break,
            event => {
                let id = event.route().map(|r| r.id().to_owned()).unwrap_or_default();
                assert!(
                    !id.starts_with("Bad."),
                    "malformed route surfaced: {event:?}"
                );
            }
        }
    }
    reg.shutdown().await.unwrap();
    later.shutdown().await.unwrap();
}

pub async fn outage_keeps_last_good_routes<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let reg = client.register(instance(7071, &["A"])).await.unwrap();
    let mut watch = h.client().await.watch().await.unwrap();
    assert_eq!(initial_routes(&mut watch).await.len(), 1);
    assert!(!watch.status().is_stale());
    assert_eq!(watch.status().reconnects, 0);

    h.break_backend().await;
    let status = eventually(
        Duration::from_secs(10),
        "the watch to report the outage",
        || async {
            let status = watch.status();
            status.is_stale().then_some(status)
        },
    )
    .await;
    assert!(status.last_sync.is_some());
    assert_eq!(watch.try_next(), None, "an outage changed the view");

    h.restore_backend().await;
    eventually(Duration::from_secs(10), "the watch to recover", || async {
        (!watch.status().is_stale()).then_some(())
    })
    .await;
    assert_eq!(watch.try_next(), None, "recovery changed the view");
    assert!(watch.status().reconnects >= 1, "{:?}", watch.status());
    let later = client.register(instance(7072, &["B"])).await.unwrap();
    match next_event(&mut watch, EVENT_WAIT).await {
        RouteEvent::Created(route) => assert_eq!(route.id(), "Test.IDemoService.B"),
        other => panic!("expected B created, got {other:?}"),
    }
    reg.shutdown().await.unwrap();
    later.shutdown().await.unwrap();
}

pub async fn invalid_registrations_are_refused<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let cases = [
        instance(0, &["A"]),
        wayfinder::Instance::new(Address::new("bad host", 80), vec![descriptor("A")]),
        wayfinder::Instance::new(
            Address::new("127.0.0.1", 80),
            vec![wayfinder::ServiceDescriptor::new("has/slash", "api/x")],
        ),
        wayfinder::Instance::new(
            Address::new("127.0.0.1", 80),
            vec![descriptor("A"), descriptor("A")],
        ),
        wayfinder::Instance::new(
            Address::new("127.0.0.1", 80),
            vec![descriptor("Big").with_metadata("blob", "x".repeat(600 * 1024))],
        ),
        instance(80, &["A"]).with_ttl(Duration::from_millis(10)),
    ];
    for case in cases {
        let err = client
            .register(case.clone())
            .await
            .expect_err(&format!("{case:?} was accepted"));
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
    assert!(client.list().await.unwrap().is_empty());
}

pub async fn watch_cycles_leak_no_tasks<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let reg = client.register(instance(7081, &["A"])).await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    // Warm up once so lazily started per-client machinery is counted in the baseline.
    drop(client.watch().await.unwrap());
    let baseline = metrics.num_alive_tasks();
    for _ in 0..50 {
        let mut watch = client.watch().await.unwrap();
        assert_eq!(initial_routes(&mut watch).await.len(), 1);
    }
    // Fifty cycles that each left a task behind would show as fifty more; the slack allows for
    // the registration's keep-alive stream, which opens at its first renewal (TTL/3), and a
    // client connection to a second member that the cycles may have started.
    eventually(H::settle_time(), "tasks to wind down", || async {
        (metrics.num_alive_tasks() <= baseline + 2).then_some(())
    })
    .await;
    reg.shutdown().await.unwrap();
}

/// Read-your-writes: a watch or resolver started after writes completed sees all of them, even
/// when it joins a reader already running for an earlier watch of the same manager.
pub async fn a_new_watch_or_resolver_sees_every_completed_write<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let mut running = client.watch().await.unwrap();
    initial_routes(&mut running).await;
    let mut registrations = Vec::new();
    for port in [7091, 7092, 7093] {
        registrations.push(client.register(instance(port, &["A"])).await.unwrap());
    }
    let started = Instant::now();
    let mut watch = client.watch().await.unwrap();
    let routes = initial_routes(&mut watch).await;
    assert_eq!(
        addresses_of(&routes, "Test.IDemoService.A"),
        ["127.0.0.1:7091", "127.0.0.1:7092", "127.0.0.1:7093"],
        "a new watch starts from a view with every completed write"
    );
    let config = super::without_health_checks();
    let resolver = wayfinder::AddressResolver::with_config(client.clone(), config)
        .await
        .unwrap();
    let entry = resolver.table().by_path("api/demo/a").cloned().unwrap();
    assert_eq!(entry.route().addresses.len(), 3, "so does a new resolver");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "catching up took {:?}",
        started.elapsed()
    );
    registrations.pop().unwrap().shutdown().await.unwrap();
    let mut watch = client.watch().await.unwrap();
    let routes = initial_routes(&mut watch).await;
    assert_eq!(
        addresses_of(&routes, "Test.IDemoService.A"),
        ["127.0.0.1:7091", "127.0.0.1:7092"],
        "and a deregistration"
    );
    drop(running);
}

/// `list_services` and `watch_services` read and follow only the service ids under the given
/// prefixes: changes elsewhere never arrive, changes inside do.
pub async fn a_subscription_reads_and_follows_only_its_services<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let writer = h.client().await;
    let serving = |port: u16, names: &[&str]| {
        let routes = names
            .iter()
            .map(|name| {
                let (service, method) = name.split_once('.').unwrap();
                ServiceDescriptor::new(
                    format!("Test.{service}.{method}"),
                    format!("api/{service}/{method}").to_lowercase(),
                )
            })
            .collect();
        Instance::new(Address::new("127.0.0.1", port), routes)
    };
    let user = writer
        .register(serving(7101, &["IUserService.Get", "IUserService.Save"]))
        .await
        .unwrap();
    let order = writer
        .register(serving(7102, &["IOrderService.Get"]))
        .await
        .unwrap();
    let stock = writer
        .register(serving(7103, &["IStockService.Get"]))
        .await
        .unwrap();
    let services = vec![
        "Test.IUserService".to_owned(),
        "Test.IStockService".to_owned(),
    ];
    let subscribed = [
        "Test.IStockService.Get",
        "Test.IUserService.Get",
        "Test.IUserService.Save",
    ];
    let client = h.client().await;
    let listed = client.list_services(&services).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|r| r.id()).collect();
    assert_eq!(ids, subscribed, "in service id order, and nothing else");

    let mut watch = client.watch_services(&services).await.unwrap();
    let mut initial: Vec<String> = initial_routes(&mut watch)
        .await
        .iter()
        .map(|r| r.id().to_owned())
        .collect();
    initial.sort();
    assert_eq!(initial, subscribed);
    assert!(!watch.status().is_stale() && watch.status().last_sync.is_some());

    // A change outside the subscription, then one inside: only the second arrives.
    let order_too = writer
        .register(serving(7104, &["IOrderService.Get"]))
        .await
        .unwrap();
    let user_too = writer
        .register(serving(7105, &["IUserService.Get"]))
        .await
        .unwrap();
    let seen = next_event(&mut watch, EVENT_WAIT).await;
    assert!(
        matches!(&seen, RouteEvent::Changed(r) if r.id() == "Test.IUserService.Get" && r.addresses.len() == 2),
        "{seen:?}"
    );
    stock.shutdown().await.unwrap();
    let seen = next_event(&mut watch, EVENT_WAIT).await;
    assert!(
        matches!(&seen, RouteEvent::Removed(r) if r.id() == "Test.IStockService.Get"),
        "{seen:?}"
    );
    for registration in [order_too, order] {
        registration.shutdown().await.unwrap();
    }
    user_too.shutdown().await.unwrap();
    let seen = next_event(&mut watch, EVENT_WAIT).await;
    assert!(
        matches!(&seen, RouteEvent::Changed(r) if r.id() == "Test.IUserService.Get" && r.addresses.len() == 1),
        "the order service's removals never arrive: {seen:?}"
    );
    user.shutdown().await.unwrap();
}

/// A whole-route value as Surging writes it, served at 127.0.0.1:7092 and :7093.
const SURGING_SHARED: &[u8] = br#"{"AddressDescriptors":[{"Value":"{\"Ip\":\"127.0.0.1\",\"Port\":7092,\"WsPort\":0,\"MqttPort\":0}"},{"Value":"{\"Ip\":\"127.0.0.1\",\"Port\":7093,\"WsPort\":0,\"MqttPort\":0}"}],"ServiceDescriptor":{"Id":"Test.IDemoService.Shared","RoutePath":"api/demo/shared","Metadatas":{}}}"#;

/// Deregistering an address edits the values Surging shares among instances, on every backend
/// alike: the address goes, the others stay, and a value whose last address goes is deleted.
pub async fn deregistering_edits_surging_values_in_place<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let reg = client.register(instance(7091, &["Other"])).await.unwrap();
    h.put_surging_route("Test.IDemoService.Shared", SURGING_SHARED)
        .await;
    let shared =
        || async { addresses_of(&client.list().await.unwrap(), "Test.IDemoService.Shared") };
    assert_eq!(shared().await, ["127.0.0.1:7092", "127.0.0.1:7093"]);
    let removed = client
        .deregister(&Address::new("127.0.0.1", 7092))
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(shared().await, ["127.0.0.1:7093"]);
    let removed = client
        .deregister(&Address::new("127.0.0.1", 7093))
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(shared().await.is_empty());
    let routes = client.list().await.unwrap();
    assert_eq!(
        addresses_of(&routes, "Test.IDemoService.Other"),
        ["127.0.0.1:7091"]
    );
    reg.shutdown().await.unwrap();
}

/// The load of each listed address of `id`, by port.
fn loads_of(routes: &[wayfinder::ServiceRoute], id: &str) -> Vec<(u16, Option<f64>)> {
    let route = routes.iter().find(|r| r.id() == id);
    route
        .map(|r| {
            r.addresses
                .iter()
                .map(|a| (a.port, a.processor_time))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn a_published_load_reaches_readers_on_the_heartbeat<H: Harness>() {
    init_logging();
    let h = H::new().await;
    let client = h.client().await;
    let load = Arc::new(std::sync::atomic::AtomicU64::new(20f64.to_bits()));
    let reported = load.clone();
    let busy = client
        .register(
            instance(7091, &["A", "B"])
                .with_ttl(SHORT_TTL)
                .with_load(move || {
                    f64::from_bits(reported.load(std::sync::atomic::Ordering::Relaxed))
                }),
        )
        .await
        .unwrap();
    let quiet = client
        .register(instance(7092, &["A"]).with_ttl(SHORT_TTL))
        .await
        .unwrap();
    let routes = client.list().await.unwrap();
    assert_eq!(
        loads_of(&routes, "Test.IDemoService.A"),
        [(7091, Some(20.0)), (7092, None)],
        "registering publishes the load as it is then"
    );
    let mut watch = h.client().await.watch().await.unwrap();
    initial_routes(&mut watch).await;
    load.store(75f64.to_bits(), std::sync::atomic::Ordering::Relaxed);
    let changed = Instant::now();
    // A watcher hears of it: one change per route entry of the instance, within a heartbeat
    // (a third of the TTL) and the time the write takes.
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        match next_event(&mut watch, EVENT_WAIT).await {
            RouteEvent::Changed(route) | RouteEvent::Created(route) => {
                let ours = route.addresses.iter().find(|a| a.port == 7091);
                if ours.and_then(|a| a.processor_time) == Some(75.0) {
                    seen.insert(route.id().to_owned());
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        changed.elapsed() < SHORT_TTL * 2,
        "took {:?}",
        changed.elapsed()
    );
    let routes = client.list().await.unwrap();
    assert_eq!(
        loads_of(&routes, "Test.IDemoService.A"),
        [(7091, Some(75.0)), (7092, None)],
        "the other instance's entry is untouched"
    );
    assert_eq!(
        loads_of(&routes, "Test.IDemoService.B"),
        [(7091, Some(75.0))]
    );
    busy.shutdown().await.unwrap();
    quiet.shutdown().await.unwrap();
}
