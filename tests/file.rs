//! The conformance suite against the shared-file backend, plus file-specific checks.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::lookups::Lookups;
use common::{eventually, init_logging, initial_routes, instance, Harness};
use serde_json::{json, Value};
use wayfinder::backends::file::{FileConfig, FileRouteManager};
use wayfinder::{AddressResolver, Instance, RouteEvent, RouteManager, RouteWatch, SyncStatus};

struct FileHarness {
    dir: tempfile::TempDir,
    saved: Mutex<Option<Vec<u8>>>,
}

impl FileHarness {
    fn path(&self) -> PathBuf {
        self.dir.path().join("routes.json")
    }

    /// Replaces the file atomically, as a careful tool would.
    fn write_atomically(&self, bytes: &[u8]) {
        let temp = self.dir.path().join("routes.json.harness-tmp");
        std::fs::write(&temp, bytes).unwrap();
        std::fs::rename(&temp, self.path()).unwrap();
    }
}

impl Harness for FileHarness {
    async fn new() -> Self {
        FileHarness {
            dir: tempfile::tempdir().unwrap(),
            saved: Mutex::new(None),
        }
    }

    async fn client(&self) -> Arc<dyn RouteManager> {
        let mut config = FileConfig::new(self.path());
        config.poll_interval = Duration::from_millis(200);
        Arc::new(FileRouteManager::new(config).unwrap())
    }

    async fn put_malformed(&self) {
        let mut doc: Value = serde_json::from_slice(&std::fs::read(self.path()).unwrap()).unwrap();
        let routes = doc["Routes"].as_object_mut().unwrap();
        routes.insert("Bad.Json".into(), json!("{not a route"));
        routes.insert(
            "Bad.Mismatch".into(),
            json!({"AddressDescriptors":[{"Value":"{\"Ip\":\"127.0.0.1\",\"Port\":1}"}],
                   "ServiceDescriptor":{"Id":"Someone.Else","RoutePath":"x"}}),
        );
        routes.insert(
            "Bad.Port".into(),
            json!({"AddressDescriptors":[{"Value":"{\"Ip\":\"127.0.0.1\",\"Port\":0}"}],
                   "ServiceDescriptor":{"Id":"Bad.Port","RoutePath":"x"}}),
        );
        routes.insert(
            "Bad.NoId".into(),
            json!({"AddressDescriptors":[{"Value":"{\"Ip\":\"127.0.0.1\",\"Port\":1}"}],
                   "ServiceDescriptor":{"RoutePath":"x"}}),
        );
        self.write_atomically(&serde_json::to_vec(&doc).unwrap());
    }

    async fn put_surging_route(&self, service_id: &str, value: &[u8]) {
        let mut doc: Value = serde_json::from_slice(&std::fs::read(self.path()).unwrap()).unwrap();
        let route: Value = serde_json::from_slice(value).unwrap();
        doc["Routes"]
            .as_object_mut()
            .unwrap()
            .insert(service_id.to_owned(), route);
        self.write_atomically(&serde_json::to_vec(&doc).unwrap());
    }

    async fn delete_entries_by_hand(&self) {
        // An edit that takes every route out and leaves the heartbeat records.
        let mut doc: Value = serde_json::from_slice(&std::fs::read(self.path()).unwrap()).unwrap();
        doc["Routes"] = json!({});
        self.write_atomically(&serde_json::to_vec(&doc).unwrap());
    }

    async fn break_backend(&self) {
        let bytes = std::fs::read(self.path()).unwrap();
        *self.saved.lock().unwrap() = Some(bytes);
        // A torn, non-atomic write: truncate and leave half a document.
        std::fs::write(self.path(), b"{\"Routes\": {\"Test.IDemo").unwrap();
    }

    async fn restore_backend(&self) {
        let saved = self
            .saved
            .lock()
            .unwrap()
            .take()
            .expect("break_backend first");
        self.write_atomically(&saved);
    }
}

conformance_suite!(FileHarness);

/// Surging's own shared file: a BOM and a bare array of routes in the older form.
#[tokio::test]
async fn reads_surging_shared_file() {
    let h = FileHarness::new().await;
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(
        br#"[{"AddressDescriptors":[{"Type":"Surging.Core.CPlatform.Address.IpAddressModel","Value":"{\"Ip\":\"127.0.0.1\",\"Port\":98,\"Token\":\"88904f103a3740529e960d9d230ce852\",\"DisableAuth\":false}"}],"ServiceDescriptor":{"Id":"Surging.IModuleServices.Common.IRoteMangeService.GetServiceById_serviceId","RoutePath":"api/rotemange/getservicebyid","Metadatas":{"EnableAuthorization":false}}}]"#,
    );
    std::fs::write(h.path(), &bytes).unwrap();
    let client = h.client().await;
    let routes = client.list().await.unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].route_path(), "api/rotemange/getservicebyid");
    assert_eq!(routes[0].addresses[0].to_string(), "127.0.0.1:98");

    // A registration converts the file and keeps the static route.
    let reg = client.register(instance(7301, &["A"])).await.unwrap();
    let routes = client.list().await.unwrap();
    assert_eq!(routes.len(), 2);
    reg.shutdown().await.unwrap();
    let routes = client.list().await.unwrap();
    assert_eq!(routes.len(), 1, "the static Surging route survives");
}

/// In the `surging` layout the file stays Surging's own (a BOM and a JSON array, one route per
/// service id, every address with its `Type`), the liveness records go beside it, and a
/// crashed instance's address is pruned by the next write of a live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_surging_layout_keeps_surgings_own_file() {
    init_logging();
    let h = FileHarness::new().await;
    let url = format!(
        "file://{}?layout=surging&ttl=1s&poll=200ms",
        h.path().display()
    );
    let (a, b) = (
        wayfinder::connect(&url).await.unwrap(),
        wayfinder::connect(&url).await.unwrap(),
    );
    let reg_a = a.register(instance(7311, &["A", "B"])).await.unwrap();
    let reg_b = b.register(instance(7312, &["A"])).await.unwrap();
    // As Surging reads it: BOM, array, one route per id.
    let surging_reads = || {
        let bytes = std::fs::read(h.path()).unwrap();
        let json = bytes
            .strip_prefix(b"\xEF\xBB\xBF")
            .expect("Surging's file starts with a BOM");
        let routes: Vec<Value> = serde_json::from_slice(json).unwrap();
        let mut by_id = std::collections::BTreeMap::new();
        for route in routes {
            let id = route["ServiceDescriptor"]["Id"]
                .as_str()
                .unwrap()
                .to_owned();
            let mut ports: Vec<u64> = route["AddressDescriptors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|entry| {
                    assert_eq!(
                        entry["Type"],
                        "Surging.Core.CPlatform.Address.IpAddressModel"
                    );
                    let address: Value =
                        serde_json::from_str(entry["Value"].as_str().unwrap()).unwrap();
                    address["Port"].as_u64().unwrap()
                })
                .collect();
            ports.sort_unstable();
            assert!(by_id.insert(id, ports).is_none(), "one route per id");
        }
        by_id
    };
    let view = surging_reads();
    assert_eq!(view["Test.IDemoService.A"], [7311, 7312]);
    assert_eq!(view["Test.IDemoService.B"], [7311]);
    let records = std::fs::read(h.dir.path().join("routes.json.instances.json")).unwrap();
    assert!(String::from_utf8(records)
        .unwrap()
        .contains("127.0.0.1_7311"));
    // A reader in the default layout reads it too.
    let routes = h.client().await.list().await.unwrap();
    assert_eq!(routes.len(), 2);

    // Surging's own writer overwrites the file with its routes alone: the registrations put
    // theirs back.
    let mut surging = b"\xEF\xBB\xBF".to_vec();
    surging.extend_from_slice(br#"[{"AddressDescriptors":[{"Type":"Surging.Core.CPlatform.Address.IpAddressModel","Value":"{\"Ip\":\"127.0.0.1\",\"Port\":7399,\"WsPort\":0,\"MqttPort\":0}"}],"ServiceDescriptor":{"Id":"Test.IDemoService.A","RoutePath":"api/demo/a","Metadatas":{}}}]"#);
    h.write_atomically(&surging);
    eventually(
        Duration::from_secs(3),
        "the overwritten addresses back",
        || async {
            let view = surging_reads();
            (view.get("Test.IDemoService.A") == Some(&vec![7311, 7312, 7399])
                && view.get("Test.IDemoService.B") == Some(&vec![7311]))
            .then_some(())
        },
    )
    .await;

    // A crashed instance: the live one's next heartbeat prunes it.
    reg_a.abandon().await;
    eventually(
        Duration::from_secs(4),
        "the crashed instance pruned",
        || async {
            let view = surging_reads();
            (view.get("Test.IDemoService.A") == Some(&vec![7312, 7399])
                && !view.contains_key("Test.IDemoService.B"))
            .then_some(())
        },
    )
    .await;
    reg_b.shutdown().await.unwrap();
    assert_eq!(
        surging_reads()["Test.IDemoService.A"],
        [7399],
        "the address Surging wrote stays"
    );
}

/// A file that does not parse is never overwritten by a writer: nothing in it is lost.
#[tokio::test]
async fn writers_leave_a_corrupt_file_alone() {
    let h = FileHarness::new().await;
    std::fs::write(h.path(), b"{ this is being edited").unwrap();
    let err = h
        .client()
        .await
        .register(instance(7311, &["A"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), wayfinder::ErrorKind::Malformed, "{err}");
    assert_eq!(std::fs::read(h.path()).unwrap(), b"{ this is being edited");
}

/// A missing file is an empty registry, and a watch sees the file appear.
#[tokio::test]
async fn missing_file_is_empty_then_watched() {
    let h = FileHarness::new().await;
    let client = h.client().await;
    assert!(client.list().await.unwrap().is_empty());
    let mut watch = client.watch().await.unwrap();
    assert!(initial_routes(&mut watch).await.is_empty());
    let reg = h
        .client()
        .await
        .register(instance(7321, &["A"]))
        .await
        .unwrap();
    match common::next_event(&mut watch, Duration::from_secs(5)).await {
        wayfinder::RouteEvent::Created(route) => assert_eq!(route.id(), "Test.IDemoService.A"),
        other => panic!("unexpected {other:?}"),
    }
    reg.shutdown().await.unwrap();
}

/// A newer registration of the same address is not undone by the older one shutting down.
#[tokio::test]
async fn an_old_registration_shutting_down_leaves_a_newer_one_alone() {
    let h = FileHarness::new().await;
    let old = h
        .client()
        .await
        .register(instance(7331, &["A"]))
        .await
        .unwrap();
    let new = h
        .client()
        .await
        .register(instance(7331, &["A", "B"]))
        .await
        .unwrap();
    old.shutdown().await.unwrap();
    let routes = h.client().await.list().await.unwrap();
    assert_eq!(
        routes.len(),
        2,
        "the newer registration's routes stay: {routes:?}"
    );
    new.shutdown().await.unwrap();
    assert!(h.client().await.list().await.unwrap().is_empty());
}

/// An instance whose heartbeats (every TTL / 3) fall outside these tests: a writer renewing while
/// the file is missing writes a file of its own, which is another scenario than an editor's save.
fn long_lived(port: u16, names: &[&str]) -> Instance {
    let mut instance = instance(port, names);
    instance.ttl = Some(Duration::from_secs(120));
    instance
}

/// A route written by hand: no liveness record, so it is static.
fn static_route(name: &str, port: u16) -> Value {
    json!({
        "AddressDescriptors": [{"Value": format!("{{\"Ip\":\"127.0.0.1\",\"Port\":{port}}}")}],
        "ServiceDescriptor": {
            "Id": format!("Test.IDemoService.{name}"),
            "RoutePath": format!("api/demo/{}", name.to_lowercase()),
        },
    })
}

/// Waits until the watch reports itself stale for a reason containing `reason`.
async fn stale_because(watch: &RouteWatch, reason: &str) -> SyncStatus {
    eventually(
        Duration::from_secs(5),
        &format!("a stale status mentioning {reason:?}"),
        || async {
            let status = watch.status();
            status
                .error
                .as_deref()
                .is_some_and(|e| e.contains(reason))
                .then_some(status)
        },
    )
    .await
}

/// Waits until the watch is current again.
async fn current(watch: &RouteWatch) {
    eventually(Duration::from_secs(5), "a current status", || async {
        (!watch.status().is_stale()).then_some(())
    })
    .await;
}

/// The events waiting in `watch`, as `(name, service id)`, sorted.
fn pending(watch: &mut RouteWatch) -> Vec<(&'static str, String)> {
    let mut events: Vec<_> = std::iter::from_fn(|| watch.try_next())
        .map(|e| {
            (
                e.name(),
                e.route().map(|r| r.id().to_owned()).unwrap_or_default(),
            )
        })
        .collect();
    events.sort();
    events
}

/// An editor's save: the file renamed away, then a new version written in its place. The moment
/// without a file is an outage (stale, no events); watchers then see only what really changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_save_renaming_the_file_away_sends_only_real_changes() {
    init_logging();
    let h = FileHarness::new().await;
    let _reg = h
        .client()
        .await
        .register(long_lived(7341, &["A", "B"]))
        .await
        .unwrap();
    let mut watch = h.client().await.watch().await.unwrap();
    assert_eq!(initial_routes(&mut watch).await.len(), 2);

    // The new version: B dropped, C added by hand, A as it was.
    let mut doc: Value = serde_json::from_slice(&std::fs::read(h.path()).unwrap()).unwrap();
    let routes = doc["Routes"].as_object_mut().unwrap();
    routes.remove("Test.IDemoService.B").unwrap();
    routes.insert("Test.IDemoService.C".into(), static_route("C", 7342));

    std::fs::rename(h.path(), h.dir.path().join("routes.json~")).unwrap();
    stale_because(&watch, "missing").await;
    assert_eq!(
        pending(&mut watch),
        [],
        "no events while the file is missing"
    );

    // Written in place, as an editor does: readers may catch it empty or half written.
    std::fs::write(h.path(), serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    current(&watch).await;
    assert_eq!(
        pending(&mut watch),
        [
            ("created", "Test.IDemoService.C".to_owned()),
            ("removed", "Test.IDemoService.B".to_owned()),
        ],
        "only the real differences"
    );
}

/// The file deleted and written again 3 s later: a long-lived resolver fails no lookup, reports
/// itself stale during the gap and current after, and watchers see no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_for_three_seconds_fails_no_lookup() {
    init_logging();
    let h = FileHarness::new().await;
    let _reg = h
        .client()
        .await
        .register(long_lived(7351, &["A"]))
        .await
        .unwrap();
    let reader = h.client().await;
    let resolver = Arc::new(
        AddressResolver::with_config(reader.clone(), common::without_health_checks())
            .await
            .unwrap(),
    );
    let mut watch = reader.watch().await.unwrap();
    assert_eq!(initial_routes(&mut watch).await.len(), 1);
    let lookups = Lookups::start(resolver.clone(), &["api/demo/a"]);

    let saved = std::fs::read(h.path()).unwrap();
    std::fs::remove_file(h.path()).unwrap();
    let gap = std::time::Instant::now();
    eventually(Duration::from_secs(5), "a stale resolver", || async {
        resolver.stats().stale.then_some(())
    })
    .await;
    // The gap itself, not a wait for something to happen.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(gap.elapsed())).await;
    assert!(resolver.stats().stale, "stale until the file is back");
    std::fs::write(h.path(), &saved).unwrap();
    eventually(Duration::from_secs(5), "a current resolver", || async {
        (!resolver.stats().stale).then_some(())
    })
    .await;
    let gap = gap.elapsed();

    let counts = lookups.finish("routes file deleted for 3 s").await;
    eprintln!("file missing for {gap:?}: {counts:?}");
    assert_eq!(
        counts.failures, 0,
        "lookups failed while the file was missing: {counts:?}"
    );
    assert!(counts.total > 100, "the loop ran: {counts:?}");
    assert_eq!(pending(&mut watch), [], "no events for an unchanged file");
}

/// A truncated, empty or garbage file is an outage: the routes stay, the status says why, and
/// the good file coming back sends nothing when nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_garbage_file_keeps_the_routes_and_reports_stale() {
    init_logging();
    let h = FileHarness::new().await;
    let _reg = h
        .client()
        .await
        .register(long_lived(7361, &["A", "B"]))
        .await
        .unwrap();
    let reader = h.client().await;
    let resolver = AddressResolver::with_config(reader.clone(), common::without_health_checks())
        .await
        .unwrap();
    let mut watch = reader.watch().await.unwrap();
    assert_eq!(initial_routes(&mut watch).await.len(), 2);
    let saved = std::fs::read(h.path()).unwrap();

    for (bytes, reason) in [
        (&saved[..saved.len() / 2], "does not parse"),
        (&b""[..], "is empty"),
        (&b"42"[..], "neither a JSON object nor an array"),
    ] {
        std::fs::write(h.path(), bytes).unwrap();
        stale_because(&watch, reason).await;
        assert!(resolver.stats().stale);
        assert_eq!(pending(&mut watch), [], "no events for a {reason:?} file");
        for path in ["api/demo/a", "api/demo/b"] {
            let resolved = resolver.resolve_path(path, None).await.unwrap();
            assert_eq!(
                resolved.address().port,
                7361,
                "{path} with a {reason:?} file"
            );
        }
    }

    h.write_atomically(&saved);
    current(&watch).await;
    assert_eq!(pending(&mut watch), [], "the same routes came back");
}

/// A document without routes is authoritative: written by hand or by `clear`, it removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_without_routes_removes_every_route() {
    init_logging();
    let h = FileHarness::new().await;
    let writer = h.client().await;
    let _reg = writer
        .register(long_lived(7371, &["A", "B"]))
        .await
        .unwrap();
    let mut watch = h.client().await.watch().await.unwrap();
    assert_eq!(initial_routes(&mut watch).await.len(), 2);

    std::fs::write(h.path(), br#"{"Routes":{},"Instances":{}}"#).unwrap();
    let mut removed: Vec<_> = common::next_events(&mut watch, 2, Duration::from_secs(5))
        .await
        .into_iter()
        .map(|e| match e {
            RouteEvent::Removed(route) => route.id().to_owned(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    removed.sort();
    assert_eq!(removed, ["Test.IDemoService.A", "Test.IDemoService.B"]);
    current(&watch).await;
    assert_eq!(
        watch.status().resets,
        1,
        "a file replaced by an empty document is a registry-wide reset"
    );

    let _reg = writer.register(long_lived(7372, &["C"])).await.unwrap();
    assert!(matches!(
        common::next_event(&mut watch, Duration::from_secs(5)).await,
        RouteEvent::Created(_)
    ));
    writer.clear().await.unwrap();
    match common::next_event(&mut watch, Duration::from_secs(5)).await {
        RouteEvent::Removed(route) => assert_eq!(route.id(), "Test.IDemoService.C"),
        other => panic!("unexpected {other:?}"),
    }
    current(&watch).await;
}

/// The quickstart registers three instances and then starts a resolver: round robin must pick
/// among all three (read-your-writes), and once one listener closes, among the other two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_resolves_over_every_registered_instance() {
    let mut command = tokio::process::Command::new(common::example_binary("quickstart"));
    let output = common::clear_wayfinder_env(&mut command)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "quickstart failed:\n{stdout}");
    let listening: std::collections::BTreeSet<&str> = stdout
        .lines()
        .find_map(|line| line.strip_prefix("three instances listening at "))
        .expect("the quickstart names its instances")
        .split(", ")
        .collect();
    let picks: Vec<std::collections::BTreeSet<&str>> = stdout
        .lines()
        .filter_map(|line| line.trim().split_once(" x6: "))
        .map(|(_, picks)| picks.split(' ').collect())
        .collect();
    assert_eq!(picks.len(), 2, "{stdout}");
    assert_eq!(picks[0], listening, "round robin over all three:\n{stdout}");
    let closed = stdout
        .lines()
        .find_map(|line| line.strip_prefix("closed the listener of "))
        .and_then(|rest| rest.split(';').next())
        .unwrap();
    assert_eq!(picks[1].len(), 2, "{stdout}");
    assert!(!picks[1].contains(closed), "{stdout}");
}
