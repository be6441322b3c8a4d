//! The conformance suite against the in-memory backend.

mod common;

use std::sync::Arc;

use common::Harness;
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::RouteManager;

struct MemoryHarness {
    registry: MemoryRouteManager,
}

impl Harness for MemoryHarness {
    async fn new() -> Self {
        MemoryHarness {
            registry: MemoryRouteManager::default(),
        }
    }

    async fn client(&self) -> Arc<dyn RouteManager> {
        Arc::new(self.registry.clone())
    }

    async fn put_malformed(&self) {
        let prefix = "services/serviceRoutes/";
        let other_id = r#"{"AddressDescriptors":[{"Value":"{\"Ip\":\"127.0.0.1\",\"Port\":1}"}],"ServiceDescriptor":{"Id":"Someone.Else","RoutePath":"x"}}"#;
        let port_zero = r#"{"AddressDescriptors":[{"Value":"{\"Ip\":\"127.0.0.1\",\"Port\":0}"}],"ServiceDescriptor":{"Id":"Bad.Port","RoutePath":"x"}}"#;
        let big = format!(
            r#"{{"AddressDescriptors":[{{"Value":"{{\"Ip\":\"127.0.0.1\",\"Port\":1}}"}}],"ServiceDescriptor":{{"Id":"Bad.Big","RoutePath":"x","Metadatas":{{"b":"{}"}}}}}}"#,
            "x".repeat(2 * 1024 * 1024)
        );
        self.registry
            .insert_raw(&format!("{prefix}Bad.Json/127.0.0.1_1"), "{not json");
        self.registry
            .insert_raw(&format!("{prefix}Bad.Mismatch/127.0.0.1_1"), other_id);
        self.registry
            .insert_raw(&format!("{prefix}Bad.Port/127.0.0.1_1"), port_zero);
        self.registry
            .insert_raw(&format!("{prefix}Bad.Big/127.0.0.1_1"), big);
        self.registry
            .insert_raw(&format!("{prefix}Bad.Empty/127.0.0.1_1"), "");
    }

    async fn put_surging_route(&self, service_id: &str, value: &[u8]) {
        self.registry
            .insert_raw(&format!("services/serviceRoutes/{service_id}"), value);
    }

    async fn delete_entries_by_hand(&self) {
        assert!(self.registry.delete_raw("services/serviceRoutes/") > 0);
    }

    async fn break_backend(&self) {
        self.registry.set_outage(true);
    }

    async fn restore_backend(&self) {
        self.registry.set_outage(false);
    }
}

conformance_suite!(MemoryHarness);
