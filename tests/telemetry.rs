//! Backend calls are traced: one event per call with backend, operation, key count and duration.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::instance;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::{ErrorKind, RouteManager, RouteSource};

/// The fields of one event, as text.
type Fields = BTreeMap<String, String>;

/// Keeps the fields of every event that closes a backend call.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<Fields>>>,
}

impl Recorder {
    fn calls(&self, operation: &str) -> Vec<Fields> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| c.get("operation").map(String::as_str) == Some(operation))
            .cloned()
            .collect()
    }
}

struct FieldText<'a>(&'a mut Fields);

impl Visit for FieldText<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").replace('"', ""),
        );
    }
}

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut FieldText(&mut fields));
        if fields.contains_key("backend") && fields.contains_key("duration_us") {
            self.calls.lock().unwrap().push(fields);
        }
    }
}

#[tokio::test]
async fn backend_calls_carry_backend_operation_keys_and_duration() {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let registry = MemoryRouteManager::default();
    let registration = registry
        .register(instance(7801, &["A", "B", "C"]))
        .await
        .unwrap();
    assert_eq!(registry.list().await.unwrap().len(), 3);
    registration.shutdown().await.unwrap();

    let register = recorder.calls("register");
    assert_eq!(register.len(), 1, "{register:?}");
    assert_eq!(register[0]["backend"], "memory");
    assert_eq!(register[0]["keys"], "3", "one key per route");
    assert!(register[0]["duration_us"].parse::<u64>().is_ok());
    let list = recorder.calls("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["keys"], "3");
    assert_eq!(recorder.calls("deregister").len(), 1);

    registry.set_outage(true);
    let error = registry.list().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    let list = recorder.calls("list");
    assert_eq!(list.len(), 2);
    assert!(
        list[1]["error"].contains("outage"),
        "a failed call says why: {:?}",
        list[1]
    );
    assert!(!list[1].contains_key("keys"));
}
