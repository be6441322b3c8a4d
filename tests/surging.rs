//! The `surging` layout against real etcd and Consul servers (from backends/install.sh): values
//! that Surging's readers take, compare-and-swap merges that lose nothing, repair of a blind put,
//! and the reaping of a killed instance's address. Registries are read raw, around wayfinder,
//! and parsed the way Surging's route managers parse them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::consul_server::ConsulAgent;
use common::etcd_server::EtcdServer;
use common::{eventually, init_logging, instance};
use wayfinder::{connect, Address, RouteManager};

/// One registry of some backend, read and written raw.
#[allow(async_fn_in_trait)]
trait Raw: Sized {
    async fn new() -> Self;
    /// The registry's URL in the `surging` layout.
    fn url(&self) -> String;
    /// The TTL the URL names.
    fn ttl() -> Duration;
    /// How long after its last renewal a killed instance's liveness may still hold.
    fn expiry_bound() -> Duration;
    /// Every key under `prefix` (relative to the test's namespace) and its value.
    async fn read(&self, prefix: &str) -> Vec<(String, Vec<u8>)>;
    /// Writes `value` at `key` (relative to the test's namespace), as Surging's blind put does.
    async fn put(&self, key: &str, value: &[u8]);
}

const ROUTES: &str = "services/serviceRoutes/";

fn namespace() -> String {
    format!("wayfinder-test/{:016x}/", fastrand::u64(..))
}

struct Etcd {
    server: Arc<Mutex<EtcdServer>>,
    namespace: String,
}

impl Etcd {
    async fn raw(&self) -> etcd_client::Client {
        let endpoint = self.server.lock().unwrap().endpoint();
        etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap()
    }
}

impl Raw for Etcd {
    async fn new() -> Self {
        let server = tokio::task::spawn_blocking(EtcdServer::start)
            .await
            .unwrap();
        Etcd {
            server: Arc::new(Mutex::new(server)),
            namespace: namespace(),
        }
    }

    fn url(&self) -> String {
        let endpoint = self.server.lock().unwrap().endpoint();
        format!(
            "etcd://{endpoint}?prefix={}{ROUTES}&layout=surging&ttl=3s&timeout=2s",
            self.namespace
        )
    }

    fn ttl() -> Duration {
        Duration::from_secs(3)
    }

    fn expiry_bound() -> Duration {
        Self::ttl() + Duration::from_secs(2)
    }

    async fn read(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let options = etcd_client::GetOptions::new().with_prefix();
        let full = format!("{}{prefix}", self.namespace);
        let response = self.raw().await.get(full, Some(options)).await.unwrap();
        response
            .kvs()
            .iter()
            .map(|kv| {
                let key = kv.key_str().unwrap();
                (key[self.namespace.len()..].to_owned(), kv.value().to_vec())
            })
            .collect()
    }

    async fn put(&self, key: &str, value: &[u8]) {
        let full = format!("{}{key}", self.namespace);
        self.raw().await.put(full, value, None).await.unwrap();
    }
}

struct Consul {
    agent: ConsulAgent,
    namespace: String,
}

impl Raw for Consul {
    async fn new() -> Self {
        let agent = tokio::task::spawn_blocking(ConsulAgent::start)
            .await
            .unwrap();
        Consul {
            agent,
            namespace: namespace(),
        }
    }

    fn url(&self) -> String {
        format!(
            "consul://{}?prefix={}{ROUTES}&layout=surging&ttl=10s&wait=5s&timeout=2s",
            self.agent.endpoint(),
            self.namespace
        )
    }

    fn ttl() -> Duration {
        Duration::from_secs(10)
    }

    fn expiry_bound() -> Duration {
        // Consul may take up to twice a session's TTL to invalidate it.
        Self::ttl() * 2 + Duration::from_secs(2)
    }

    async fn read(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        #[derive(serde::Deserialize)]
        struct Pair {
            #[serde(rename = "Key")]
            key: String,
            #[serde(rename = "Value")]
            value: Option<String>,
        }
        let url = format!(
            "http://{}/v1/kv/{}{prefix}?recurse=true",
            self.agent.endpoint(),
            self.namespace
        );
        let response = reqwest::get(url).await.unwrap();
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Vec::new();
        }
        let pairs: Vec<Pair> = response.json().await.unwrap();
        use base64::Engine;
        pairs
            .into_iter()
            .map(|p| {
                let value = p.value.map_or_else(Vec::new, |v| {
                    base64::engine::general_purpose::STANDARD.decode(v).unwrap()
                });
                (p.key[self.namespace.len()..].to_owned(), value)
            })
            .collect()
    }

    async fn put(&self, key: &str, value: &[u8]) {
        let url = format!(
            "http://{}/v1/kv/{}{key}",
            self.agent.endpoint(),
            self.namespace
        );
        let response = reqwest::Client::new()
            .put(url)
            .body(value.to_vec())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }
}

/// What Surging's route managers make of every value under the prefix: each must parse as a
/// route, with `Type` beside each address (older Surging needs it), or the reader fails; one
/// route per service id (`FirstOrDefault`). Returns each id's `host:port` list.
fn as_surging_reads(values: &[(String, Vec<u8>)]) -> BTreeMap<String, Vec<String>> {
    let mut routes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, bytes) in values {
        let route: serde_json::Value = serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("Surging's reader fails on {key}: {e}"));
        let descriptor = &route["ServiceDescriptor"];
        let id = descriptor["Id"]
            .as_str()
            .unwrap_or_else(|| panic!("{key} has no ServiceDescriptor.Id"));
        assert_eq!(key, &format!("{ROUTES}{id}"), "one key per service id");
        let mut addresses = Vec::new();
        for entry in route["AddressDescriptors"].as_array().unwrap() {
            assert_eq!(
                entry["Type"], "Surging.Core.CPlatform.Address.IpAddressModel",
                "{key}: an address without its Type"
            );
            let address: serde_json::Value =
                serde_json::from_str(entry["Value"].as_str().unwrap()).unwrap();
            assert_eq!(address["Token"], descriptor["Token"], "{key}: token");
            addresses.push(format!(
                "{}:{}",
                address["Ip"].as_str().unwrap(),
                address["Port"].as_u64().unwrap()
            ));
        }
        addresses.sort();
        assert!(
            routes.insert(id.to_owned(), addresses).is_none(),
            "two routes for {id}: Surging would take the first alone"
        );
    }
    routes
}

async fn surging_view<R: Raw>(raw: &R) -> BTreeMap<String, Vec<String>> {
    as_surging_reads(&raw.read(ROUTES).await)
}

fn ports(addresses: &[String]) -> Vec<u16> {
    addresses
        .iter()
        .map(|a| a.rsplit_once(':').unwrap().1.parse().unwrap())
        .collect()
}

async fn client<R: Raw>(raw: &R) -> Arc<dyn RouteManager> {
    connect(&raw.url()).await.unwrap()
}

fn tokened(port: u16, names: &[&str]) -> wayfinder::Instance {
    let mut instance = instance(port, names);
    for route in &mut instance.routes {
        route.token = Some("t0k".to_owned());
    }
    instance
}

macro_rules! surging_suite {
    ($module:ident, $raw:ty) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_instances_share_one_value_that_surging_reads() {
                two_instances_share_one_value_that_surging_reads_on::<$raw>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fifty_instances_registering_at_once_lose_nothing() {
                fifty_instances_registering_at_once_lose_nothing_on::<$raw>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_blind_put_that_drops_our_address_is_repaired_within_ttl() {
                a_blind_put_that_drops_our_address_is_repaired_within_ttl_on::<$raw>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_sigkilled_instance_is_reaped_and_surging_addresses_are_not() {
                a_sigkilled_instance_is_reaped_and_surging_addresses_are_not_on::<$raw>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_deregistered_address_stays_out() {
                a_deregistered_address_stays_out_on::<$raw>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_published_load_reaches_surging_readers_in_place() {
                a_published_load_reaches_surging_readers_in_place_on::<$raw>().await;
            }
        }
    };
}

surging_suite!(etcd, Etcd);
surging_suite!(consul, Consul);

async fn two_instances_share_one_value_that_surging_reads_on<R: Raw>() {
    init_logging();
    let raw = R::new().await;
    let a = client(&raw)
        .await
        .register(tokened(7101, &["GetUser", "SaveUser"]))
        .await
        .unwrap();
    let b = client(&raw)
        .await
        .register(tokened(7102, &["GetUser", "SaveUser"]))
        .await
        .unwrap();
    let view = surging_view(&raw).await;
    assert_eq!(view.len(), 2, "{view:?}");
    for addresses in view.values() {
        assert_eq!(ports(addresses), [7101, 7102]);
    }
    // Any wayfinder client reads the layout, whatever layout it writes.
    let plain_url = raw.url().replace("layout=surging&", "");
    let routes = connect(&plain_url).await.unwrap().list().await.unwrap();
    assert_eq!(routes.len(), 2);
    assert!(routes
        .iter()
        .all(|r| r.addresses.len() == 2 && r.descriptor.token.as_deref() == Some("t0k")));

    a.shutdown().await.unwrap();
    let view = surging_view(&raw).await;
    assert!(view.values().all(|addresses| ports(addresses) == [7102]));
    b.shutdown().await.unwrap();
    assert!(
        raw.read(ROUTES).await.is_empty(),
        "the last address deletes the key"
    );
    assert!(raw.read("services/serviceRoutes-live/").await.is_empty());
    assert!(raw.read("services/serviceRoutes-owned/").await.is_empty());
}

async fn fifty_instances_registering_at_once_lose_nothing_on<R: Raw>() {
    init_logging();
    let raw = R::new().await;
    let names: Vec<String> = (0..20).map(|i| format!("Shared{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut clients: Vec<Arc<dyn RouteManager>> = Vec::new();
    for _ in 0..5 {
        clients.push(client(&raw).await);
    }
    let started = Instant::now();
    let registrations = futures_join((0..50u16).map(|i| {
        let client = clients[usize::from(i) % clients.len()].clone();
        let instance = tokened(7200 + i, &names);
        async move { client.register(instance).await.unwrap() }
    }))
    .await;
    let took = started.elapsed();
    let view = surging_view(&raw).await;
    assert_eq!(view.len(), 20);
    let want: Vec<u16> = (7200..7250).collect();
    for (id, addresses) in &view {
        assert_eq!(ports(addresses), want, "{id} lost an address");
    }
    println!("50 instances x 20 shared routes registered at once in {took:?}; 0 addresses lost");
    futures_join(
        registrations
            .into_iter()
            .map(|r| async move { r.shutdown().await.unwrap() }),
    )
    .await;
    assert!(raw.read(ROUTES).await.is_empty());
}

async fn futures_join<T, F: std::future::Future<Output = T> + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<T>
where
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

async fn a_blind_put_that_drops_our_address_is_repaired_within_ttl_on<R: Raw>() {
    init_logging();
    let raw = R::new().await;
    let _a = client(&raw)
        .await
        .register(tokened(7301, &["GetUser"]))
        .await
        .unwrap();
    // A Surging writer that read before we registered puts its own address alone.
    let surging = br#"{"AddressDescriptors":[{"Value":"{\"Ip\":\"127.0.0.1\",\"Port\":7399,\"WsPort\":0,\"MqttPort\":0}"}],"ServiceDescriptor":{"Id":"Test.IDemoService.GetUser","Token":"t0k","RoutePath":"api/demo/getuser","Metadatas":{}}}"#;
    raw.put(&format!("{ROUTES}Test.IDemoService.GetUser"), surging)
        .await;
    let dropped = Instant::now();
    eventually(
        R::ttl() + Duration::from_secs(2),
        "our address back",
        || async {
            let values = raw.read(ROUTES).await;
            let value: serde_json::Value = serde_json::from_slice(&values.first()?.1).ok()?;
            let text = value.to_string();
            (text.contains("7301") && text.contains("7399")).then_some(())
        },
    )
    .await;
    println!(
        "a blind put's dropped address repaired after {:?}",
        dropped.elapsed()
    );
}

async fn a_sigkilled_instance_is_reaped_and_surging_addresses_are_not_on<R: Raw>() {
    init_logging();
    let raw = R::new().await;
    // A static address a Surging instance wrote: never reaped.
    let surging = br#"{"AddressDescriptors":[{"Type":"Surging.Core.CPlatform.Address.IpAddressModel","Value":"{\"Ip\":\"127.0.0.1\",\"Port\":7499,\"WsPort\":0,\"MqttPort\":0,\"Token\":\"t0k\"}"}],"ServiceDescriptor":{"Id":"Test.IDemoService.Work","Token":"t0k","RoutePath":"api/demo/work","Metadatas":{}}}"#;
    raw.put(&format!("{ROUTES}Test.IDemoService.Work"), surging)
        .await;
    // The instance that lives on, and reaps.
    let _survivor = client(&raw)
        .await
        .register(tokened(7402, &["Work"]))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.json");
    std::fs::write(
        &routes,
        br#"[{"Id":"Test.IDemoService.Work","RoutePath":"api/demo/work","Token":"t0k"}]"#,
    )
    .unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wayfinder"));
    common::clear_wayfinder_env(&mut command);
    let mut child = command
        .args([
            "--backend",
            &raw.url(),
            "register",
            "--address",
            "127.0.0.1:7401",
        ])
        .arg("--routes")
        .arg(&routes)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let all = [7401, 7402, 7499];
    eventually(Duration::from_secs(10), "the child registered", || async {
        let view = surging_view(&raw).await;
        (view.get("Test.IDemoService.Work").map(|a| ports(a)) == Some(all.to_vec())).then_some(())
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let killed = Instant::now();
    // Liveness lapses within the expiry bound; the survivor reaps at its next check (every
    // two renewals, 2/3 of a TTL).
    let bound = R::expiry_bound() + R::ttl();
    eventually(bound, "the killed instance reaped", || async {
        let view = surging_view(&raw).await;
        (view.get("Test.IDemoService.Work").map(|a| ports(a)) == Some(vec![7402, 7499]))
            .then_some(())
    })
    .await;
    println!(
        "a SIGKILLed instance's address reaped after {:?}",
        killed.elapsed()
    );
    let owned: BTreeSet<String> = raw
        .read("services/serviceRoutes-owned/")
        .await
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        owned,
        BTreeSet::from(["services/serviceRoutes-owned/127.0.0.1_7402".to_owned()])
    );
}

async fn a_deregistered_address_stays_out_on<R: Raw>() {
    init_logging();
    let raw = R::new().await;
    let owner = client(&raw).await;
    let _a = owner.register(tokened(7501, &["A", "B"])).await.unwrap();
    let _b = owner.register(tokened(7502, &["A"])).await.unwrap();
    let removed = client(&raw)
        .await
        .deregister(&Address::new("127.0.0.1", 7501))
        .await
        .unwrap();
    assert_eq!(removed, 2);
    let view = surging_view(&raw).await;
    assert_eq!(ports(&view["Test.IDemoService.A"]), [7502]);
    assert!(!view.contains_key("Test.IDemoService.B"));
    // Several heartbeats and heals later, it is still out.
    tokio::time::sleep(R::ttl() * 2).await;
    let view = surging_view(&raw).await;
    assert_eq!(ports(&view["Test.IDemoService.A"]), [7502]);
    assert!(!view.contains_key("Test.IDemoService.B"));
}

/// Each address's `ProcessorTime` in the raw value at `key`, in the value's order.
async fn processor_times<R: Raw>(raw: &R, key: &str) -> Vec<(u16, Option<f64>)> {
    let values = raw.read(key).await;
    let (_, bytes) = values.iter().find(|(k, _)| k == key).expect("the value");
    let route: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    route["AddressDescriptors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let address: serde_json::Value =
                serde_json::from_str(entry["Value"].as_str().unwrap()).unwrap();
            let port = address["Port"].as_u64().unwrap() as u16;
            (port, address["ProcessorTime"].as_f64())
        })
        .collect()
}

async fn a_published_load_reaches_surging_readers_in_place_on<R: Raw>() {
    init_logging();
    let raw = R::new().await;
    let load = Arc::new(std::sync::atomic::AtomicU64::new(12f64.to_bits()));
    let reported = load.clone();
    let busy =
        client(&raw)
            .await
            .register(tokened(7121, &["GetUser"]).with_load(move || {
                f64::from_bits(reported.load(std::sync::atomic::Ordering::Relaxed))
            }))
            .await
            .unwrap();
    let quiet = client(&raw)
        .await
        .register(tokened(7122, &["GetUser"]))
        .await
        .unwrap();
    let key = format!("{ROUTES}Test.IDemoService.GetUser");
    assert_eq!(
        processor_times(&raw, &key).await,
        [(7121, Some(12.0)), (7122, None)]
    );
    load.store(64f64.to_bits(), std::sync::atomic::Ordering::Relaxed);
    // Within a heartbeat (a third of the TTL) and the merge, in its place, the other kept.
    let times = eventually(R::ttl(), "the new load in the shared value", || async {
        let times = processor_times(&raw, &key).await;
        (times[0] == (7121, Some(64.0))).then_some(times)
    })
    .await;
    assert_eq!(times, [(7121, Some(64.0)), (7122, None)]);
    busy.shutdown().await.unwrap();
    quiet.shutdown().await.unwrap();
}
