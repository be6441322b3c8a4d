//! The conformance suite against the shared-file backend, plus file-specific checks.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{initial_routes, instance, Harness};
use serde_json::{json, Value};
use wayfinder::backends::file::{FileConfig, FileRouteManager};
use wayfinder::RouteManager;

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
