//! The conformance suite and fault tests against real etcd servers (from backends/install.sh).

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd_server::{EtcdCluster, EtcdServer};
use common::lookups::Lookups;
use common::{eventually, init_logging, initial_routes, instance, next_event, Harness};
use wayfinder::resolve::HealthConfig;
use wayfinder::{
    connect, Address, AddressResolver, Instance, ResolverConfig, RouteEvent, RouteManager,
    ServiceDescriptor,
};

struct EtcdHarness {
    server: Arc<Mutex<EtcdServer>>,
    prefix: String,
}

fn unique_prefix() -> String {
    format!("wayfinder-test/{:016x}/", fastrand::u64(..))
}

/// Runs blocking server control off the async threads.
async fn control<R: Send + 'static>(
    server: &Arc<Mutex<EtcdServer>>,
    f: impl FnOnce(&mut EtcdServer) -> R + Send + 'static,
) -> R {
    let server = server.clone();
    tokio::task::spawn_blocking(move || f(&mut server.lock().unwrap()))
        .await
        .unwrap()
}

impl Harness for EtcdHarness {
    async fn new() -> Self {
        let server = tokio::task::spawn_blocking(EtcdServer::start)
            .await
            .unwrap();
        EtcdHarness {
            server: Arc::new(Mutex::new(server)),
            prefix: unique_prefix(),
        }
    }

    async fn client(&self) -> Arc<dyn RouteManager> {
        let url = self.server.lock().unwrap().url(&self.prefix, "10s");
        connect(&url).await.unwrap()
    }

    async fn put_surging_route(&self, service_id: &str, value: &[u8]) {
        let (prefix, key, value) = (self.prefix.clone(), service_id.to_owned(), value.to_vec());
        control(&self.server, move |server| {
            etcdctl_put(server, &prefix, &key, &value)
        })
        .await;
    }

    async fn put_malformed(&self) {
        let prefix = self.prefix.clone();
        control(&self.server, move |server| {
            let put = |key: &str, value: &[u8]| etcdctl_put(server, &prefix, key, value);
            put("Bad.Json/127.0.0.1_1", b"{not json");
            put(
                "Bad.Mismatch/127.0.0.1_1",
                br#"{"AddressDescriptors":[{"Value":"{\"Ip\":\"127.0.0.1\",\"Port\":1}"}],"ServiceDescriptor":{"Id":"Someone.Else","RoutePath":"x"}}"#,
            );
            put(
                "Bad.Port/127.0.0.1_1",
                br#"{"AddressDescriptors":[{"Value":"{\"Ip\":\"127.0.0.1\",\"Port\":0}"}],"ServiceDescriptor":{"Id":"Bad.Port","RoutePath":"x"}}"#,
            );
            // Just under etcdctl's own 2 MiB message cap; four times wayfinder's 512 KiB limit.
            let big = format!(
                r#"{{"AddressDescriptors":[{{"Value":"{{\"Ip\":\"127.0.0.1\",\"Port\":1}}"}}],"ServiceDescriptor":{{"Id":"Bad.Big","RoutePath":"x","Metadatas":{{"b":"{}"}}}}}}"#,
                "x".repeat(2 * 1024 * 1024 - 4096)
            );
            put("Bad.Big/127.0.0.1_1", big.as_bytes());
        })
        .await;
    }

    async fn delete_entries_by_hand(&self) {
        let prefix = self.prefix.clone();
        control(&self.server, move |server| {
            server.etcdctl_ok(&["del", "--prefix", &prefix]);
        })
        .await;
    }

    async fn break_backend(&self) {
        control(&self.server, EtcdServer::kill).await;
    }

    async fn restore_backend(&self) {
        control(&self.server, EtcdServer::restart).await;
    }
}

/// Writes `value` at `<prefix><key>` with etcdctl, around wayfinder.
fn etcdctl_put(server: &EtcdServer, prefix: &str, key: &str, value: &[u8]) {
    let etcdctl =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("backends/.local/bin/etcdctl");
    let mut child = std::process::Command::new(etcdctl)
        .args([
            "--endpoints",
            &server.endpoint(),
            "put",
            &format!("{prefix}{key}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(value).unwrap();
    assert!(child.wait().unwrap().success(), "etcdctl put {key}");
}

conformance_suite!(EtcdHarness);

fn resolver_config() -> ResolverConfig {
    ResolverConfig {
        health: HealthConfig {
            enabled: false,
            ..HealthConfig::default()
        },
        negative_ttl: Duration::from_millis(1),
        ..ResolverConfig::default()
    }
}

/// kill -9 etcd: the resolver keeps serving the last good routes and reports their age; after a
/// restart on the same data directory the watch resumes and later changes arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_etcd_keeps_last_good_routes_and_resumes_after_restart() {
    init_logging();
    let h = EtcdHarness::new().await;
    let writer = h.client().await;
    let _a = writer.register(instance(7701, &["A"])).await.unwrap();
    let resolver = AddressResolver::with_config(h.client().await, resolver_config())
        .await
        .unwrap();
    assert_eq!(
        resolver
            .resolve_path("api/demo/a", None)
            .await
            .unwrap()
            .address()
            .port,
        7701
    );

    h.break_backend().await;
    eventually(Duration::from_secs(10), "a stale view", || async {
        resolver.stats().stale.then_some(())
    })
    .await;
    let served = resolver.resolve_path("api/demo/a", None).await.unwrap();
    assert_eq!(
        served.address().port,
        7701,
        "last good route served during the outage"
    );
    eventually(Duration::from_secs(5), "a non-zero age", || async {
        (resolver.stats().age > Duration::ZERO).then_some(())
    })
    .await;

    h.restore_backend().await;
    let _b = writer.register(instance(7702, &["B"])).await.unwrap();
    eventually(
        Duration::from_secs(15),
        "the route registered after the restart",
        || async { resolver.table().by_path("api/demo/b").map(|_| ()) },
    )
    .await;
    assert!(!resolver.stats().stale);
    assert!(resolver.stats().watch_reconnects >= 1);
    assert_eq!(
        resolver
            .resolve_path("api/demo/a", None)
            .await
            .unwrap()
            .address()
            .port,
        7701
    );
}

/// `etcdctl lease revoke` of an instance's lease: it registers again within 2 x TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_lease_is_replaced_within_two_ttls() {
    init_logging();
    let h = EtcdHarness::new().await;
    let client = h.client().await;
    let ttl = Duration::from_secs(2);
    let _reg = client
        .register(instance(7711, &["A"]).with_ttl(ttl))
        .await
        .unwrap();
    let prefix = h.prefix.clone();
    let lease = control(&h.server, move |server| {
        let out = server.etcdctl(&["get", &prefix, "--prefix", "-w", "json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["kvs"][0]["lease"]
            .as_i64()
            .expect("the key has a lease")
    })
    .await;
    let revoked = control(&h.server, move |server| {
        server.etcdctl(&["lease", "revoke", &format!("{lease:x}")])
    })
    .await;
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let started = Instant::now();
    assert!(
        client.list().await.unwrap().is_empty(),
        "revoking the lease removed the keys"
    );
    eventually(ttl * 2, "re-registration", || async {
        (client.list().await.unwrap().len() == 1).then_some(())
    })
    .await;
    assert!(started.elapsed() <= ttl * 2);
}

/// An instance process killed with SIGKILL: its routes disappear within TTL + 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_instance_disappears_within_ttl_plus_2s() {
    init_logging();
    let h = EtcdHarness::new().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.json");
    std::fs::write(
        &routes,
        br#"[{"Id":"Svc.IWorkService.Run","RoutePath":"api/work/run"}]"#,
    )
    .unwrap();
    let url = h.server.lock().unwrap().url(&h.prefix, "10s");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wayfinder"))
        .args([
            "--backend",
            &url,
            "register",
            "--address",
            "127.0.0.1:7721",
            "--ttl",
            "2",
            "--routes",
        ])
        .arg(&routes)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut watch = h.client().await.watch().await.unwrap();
    let mut seen = initial_routes(&mut watch).await;
    if seen.is_empty() {
        match next_event(&mut watch, Duration::from_secs(10)).await {
            RouteEvent::Created(route) => seen.push(std::sync::Arc::unwrap_or_clone(route)),
            other => panic!("unexpected {other:?}"),
        }
    }
    child.start_kill().unwrap();
    let killed = Instant::now();
    child.wait().await.unwrap();
    match next_event(&mut watch, Duration::from_secs(4)).await {
        RouteEvent::Removed(route) => assert_eq!(route.id(), "Svc.IWorkService.Run"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        killed.elapsed() <= Duration::from_secs(4),
        "took {:?}",
        killed.elapsed()
    );
}

/// A three-member cluster: stopping one member leaves watching and registration working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_member_stopping_does_not_stop_watching_or_registering() {
    init_logging();
    let cluster = tokio::task::spawn_blocking(EtcdCluster::start)
        .await
        .unwrap();
    let url = format!(
        "etcd://{}?prefix={}&timeout=2s",
        cluster.endpoints(),
        unique_prefix()
    );
    let client = connect(&url).await.unwrap();
    let _a = client.register(instance(7731, &["A"])).await.unwrap();
    let mut watch = client.watch().await.unwrap();
    assert_eq!(initial_routes(&mut watch).await.len(), 1);

    let cluster = Arc::new(Mutex::new(cluster));
    let stopper = cluster.clone();
    tokio::task::spawn_blocking(move || stopper.lock().unwrap().members[0].kill())
        .await
        .unwrap();

    let other = connect(&url).await.unwrap();
    let _b = eventually(
        Duration::from_secs(20),
        "a registration with one member down",
        || async { other.register(instance(7732, &["B"])).await.ok() },
    )
    .await;
    loop {
        match next_event(&mut watch, Duration::from_secs(20)).await {
            RouteEvent::Created(route) if route.id() == "Test.IDemoService.B" => break,
            _ => {}
        }
    }
}

/// The client cut off by a proxy while a route is deleted and the history compacted: after the
/// connection returns, the watch learns its revision was compacted, lists again, and the deleted
/// route is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_deleted_and_compacted_while_cut_off_is_gone_after_reconnection() {
    init_logging();
    let h = EtcdHarness::new().await;
    let direct = h.client().await;
    let keep = direct.register(instance(7741, &["Keep"])).await.unwrap();
    let doomed = direct.register(instance(7742, &["Doomed"])).await.unwrap();

    let endpoint = h.server.lock().unwrap().endpoint();
    let proxy = common::proxy::CutProxy::start(endpoint).await;
    let url = format!("etcd://{}?prefix={}&timeout=1s", proxy.endpoint(), h.prefix);
    let behind_proxy = connect(&url).await.unwrap();
    let mut watch = behind_proxy.watch().await.unwrap();
    assert_eq!(initial_routes(&mut watch).await.len(), 2);

    proxy.cut();
    eventually(
        Duration::from_secs(20),
        "the watch to notice the cut",
        || async { watch.status().is_stale().then_some(()) },
    )
    .await;
    doomed.shutdown().await.unwrap();
    let _churn = direct.register(instance(7743, &["Churn"])).await.unwrap();
    let compacted = control(&h.server, |server| {
        let out = server.etcdctl(&["endpoint", "status", "-w", "json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let revision = doc[0]["Status"]["header"]["revision"].as_i64().unwrap();
        server.etcdctl(&["compact", &revision.to_string()])
    })
    .await;
    assert!(
        compacted.status.success(),
        "{}",
        String::from_utf8_lossy(&compacted.stderr)
    );

    proxy.restore();
    let mut removed = false;
    let mut created = false;
    while !(removed && created) {
        match next_event(&mut watch, Duration::from_secs(20)).await {
            RouteEvent::Removed(route) if route.id() == "Test.IDemoService.Doomed" => {
                removed = true
            }
            RouteEvent::Created(route) if route.id() == "Test.IDemoService.Churn" => created = true,
            RouteEvent::Removed(route) => panic!("{} removed wrongly", route.id()),
            _ => {}
        }
    }
    let ids: Vec<String> = behind_proxy
        .list()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id().to_owned())
        .collect();
    assert_eq!(ids, ["Test.IDemoService.Churn", "Test.IDemoService.Keep"]);
    keep.shutdown().await.unwrap();
}

/// A single etcd with authentication on (started with `extra_args`): `root`, `svc` (password
/// `svcpw`, read-write on `app/`) and `viewer` (password `viewpw`, read-only on `app/`).
fn start_with_users(extra_args: &[&str]) -> EtcdServer {
    let mut server = EtcdServer::start_with(extra_args);
    for args in [
        &[
            "user",
            "add",
            "root",
            "--new-user-password=rootpw",
            "--interactive=false",
        ][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "writer"],
        &[
            "role",
            "grant-permission",
            "writer",
            "--prefix=true",
            "readwrite",
            "app/",
        ],
        &[
            "user",
            "add",
            "svc",
            "--new-user-password=svcpw",
            "--interactive=false",
        ],
        &["user", "grant-role", "svc", "writer"],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "--prefix=true",
            "read",
            "app/",
        ],
        &[
            "user",
            "add",
            "viewer",
            "--new-user-password=viewpw",
            "--interactive=false",
        ],
        &["user", "grant-role", "viewer", "reader"],
        &["auth", "enable"],
    ] {
        server.etcdctl_ok(args);
    }
    server.use_etcdctl_user("root:rootpw");
    server
}

/// Authentication: a read-write user works across token expiry (tokens live 1 s here), a
/// read-only user can read but not register, and a wrong password is refused clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_users_work_across_token_expiry_and_are_refused_clearly() {
    init_logging();
    let server = tokio::task::spawn_blocking(|| {
        start_with_users(&["--auth-token", "simple", "--auth-token-ttl", "1"])
    })
    .await
    .unwrap();
    let url = |user: &str| {
        format!(
            "etcd://{user}@{}?prefix=app/&ttl=3s&timeout=2s",
            server.endpoint()
        )
    };

    let writer = connect(&url("svc:svcpw")).await.unwrap();
    let _a = writer.register(instance(7751, &["A"])).await.unwrap();
    let mut watch = writer.watch().await.unwrap();
    assert_eq!(initial_routes(&mut watch).await.len(), 1);
    // Past the token's lifetime: the client authenticates again by itself.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _b = writer.register(instance(7752, &["B"])).await.unwrap();
    assert_eq!(writer.list().await.unwrap().len(), 2);
    match next_event(&mut watch, Duration::from_secs(10)).await {
        RouteEvent::Created(route) => assert_eq!(route.id(), "Test.IDemoService.B"),
        other => panic!("unexpected {other:?}"),
    }

    let viewer = connect(&url("viewer:viewpw")).await.unwrap();
    assert_eq!(
        viewer.list().await.unwrap().len(),
        2,
        "a read-only user can read"
    );
    let refused = viewer.register(instance(7753, &["C"])).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        wayfinder::ErrorKind::PermissionDenied,
        "{refused}"
    );

    let wrong = match connect(&url("svc:wrong")).await {
        Err(err) => err,
        Ok(manager) => manager.list().await.unwrap_err(),
    };
    assert_eq!(
        wrong.kind(),
        wayfinder::ErrorKind::PermissionDenied,
        "{wrong}"
    );
    assert!(
        !format!("{wrong:?}").contains("wrong"),
        "the password leaked: {wrong:?}"
    );
}

/// TLS with client certificates (generated here with rcgen): wayfinder registers and watches
/// over TLS; without the client certificate it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: with rcgen's shared default name a leaf looks self-issued to Go.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wayfinder test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str, purposes: Vec<ExtendedKeyUsagePurpose>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.subject_alt_names.push(rcgen::SanType::IpAddress(
            std::net::Ipv4Addr::LOCALHOST.into(),
        ));
        params.extended_key_usages = purposes;
        (
            params.signed_by(&key, &ca).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    // etcd's gateway dials etcd itself with the server certificate: it needs client use too.
    let (server_cert, server_key) = leaf(
        "etcd server",
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let (client_cert, client_key) = leaf(
        "wayfinder client",
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    );
    let ca_path = write("ca.pem", ca.pem());
    let server = (
        write("server.pem", server_cert),
        write("server-key.pem", server_key),
    );
    let client = (
        write("client.pem", client_cert),
        write("client-key.pem", client_key),
    );

    let (ca_arg, server_arg, client_arg) = (ca_path.clone(), server.clone(), client.clone());
    let etcd = tokio::task::spawn_blocking(move || {
        EtcdServer::start_tls(
            &ca_arg,
            (&server_arg.0, &server_arg.1),
            (&client_arg.0, &client_arg.1),
        )
    })
    .await
    .unwrap();
    let url = format!(
        "etcd://{}?prefix=tls/&timeout=2s&ca={ca_path}&cert={}&key={}",
        etcd.endpoint(),
        client.0,
        client.1
    );
    let manager = connect(&url).await.unwrap();
    let _reg = manager.register(instance(7761, &["Secure"])).await.unwrap();
    let mut watch = manager.watch().await.unwrap();
    assert_eq!(initial_routes(&mut watch).await.len(), 1);

    let without_identity = format!(
        "etcd://{}?prefix=tls/&timeout=2s&ca={ca_path}",
        etcd.endpoint()
    );
    let refused = match connect(&without_identity).await {
        Err(err) => err,
        Ok(manager) => manager.list().await.unwrap_err(),
    };
    assert_eq!(
        refused.kind(),
        wayfinder::ErrorKind::Unavailable,
        "{refused}"
    );
}

/// A stalled stream (the connection stays open but nothing arrives): the watch notices through
/// an unanswered progress request, reports the view stale, and recovers when bytes flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watch_stream_is_detected_and_replaced() {
    init_logging();
    let h = EtcdHarness::new().await;
    let direct = h.client().await;
    let _a = direct.register(instance(7771, &["A"])).await.unwrap();
    let endpoint = h.server.lock().unwrap().endpoint();
    let proxy = common::proxy::CutProxy::start(endpoint).await;
    let url = format!("etcd://{}?prefix={}&timeout=2s", proxy.endpoint(), h.prefix);
    let mut watch = connect(&url).await.unwrap().watch().await.unwrap();
    assert_eq!(initial_routes(&mut watch).await.len(), 1);

    proxy.freeze();
    eventually(
        Duration::from_secs(30),
        "the stall to be detected",
        || async { watch.status().is_stale().then_some(()) },
    )
    .await;
    proxy.restore();
    let _b = direct.register(instance(7772, &["B"])).await.unwrap();
    loop {
        match next_event(&mut watch, Duration::from_secs(30)).await {
            RouteEvent::Created(route) if route.id() == "Test.IDemoService.B" => break,
            _ => {}
        }
    }
    assert!(!watch.status().is_stale());
}

/// etcd restarted under an authenticated watch (tokens live 1 s, and a restart forgets them): the
/// watch comes back, and a route registered after the restart reaches it within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_watch_follows_changes_after_an_etcd_restart() {
    init_logging();
    let server = tokio::task::spawn_blocking(|| {
        start_with_users(&["--auth-token", "simple", "--auth-token-ttl", "1"])
    })
    .await
    .unwrap();
    let url = format!(
        "etcd://svc:svcpw@{}?prefix=app/&ttl=3s&timeout=2s",
        server.endpoint()
    );
    let server = Arc::new(Mutex::new(server));
    let writer = connect(&url).await.unwrap();
    let _a = writer.register(instance(7791, &["A"])).await.unwrap();
    let mut watch = connect(&url).await.unwrap().watch().await.unwrap();
    assert_eq!(initial_routes(&mut watch).await.len(), 1);

    // Down for longer than a token lives, and long enough for the watch to try again only
    // once etcd is back up: it re-creates its stream with a token etcd no longer knows.
    control(&server, EtcdServer::kill).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    control(&server, EtcdServer::restart).await;
    let restarted = Instant::now();
    let _b = writer.register(instance(7792, &["B"])).await.unwrap();
    loop {
        match next_event(&mut watch, Duration::from_secs(8)).await {
            RouteEvent::Created(route) if route.id() == "Test.IDemoService.B" => break,
            RouteEvent::Removed(route) => panic!("{} removed wrongly", route.id()),
            _ => {}
        }
    }
    eprintln!(
        "route registered after the restart seen {:?} after it",
        restarted.elapsed()
    );
    assert!(!watch.status().is_stale());
}

/// Runs blocking cluster control off the async threads.
async fn cluster_control<R: Send + 'static>(
    cluster: &Arc<Mutex<EtcdCluster>>,
    f: impl FnOnce(&mut EtcdCluster) -> R + Send + 'static,
) -> R {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || f(&mut cluster.lock().unwrap()))
        .await
        .unwrap()
}

/// Fresh managers on `url` (whose first member is down), each listing, registering and
/// deregistering: every call must succeed within the 2 s request timeout. Returns the longest.
async fn fresh_rounds(url: &str, rounds: u16, port: u16) -> Duration {
    let timeout = Duration::from_secs(2);
    let mut longest = Duration::ZERO;
    let mut timed = |what: &str, round: u16, started: Instant| {
        let took = started.elapsed();
        assert!(took <= timeout, "round {round}: {what} took {took:?}");
        longest = longest.max(took);
    };
    for round in 0..rounds {
        let started = Instant::now();
        let manager = connect(url).await.unwrap();
        timed("connect", round, started);
        let started = Instant::now();
        let routes = manager
            .list()
            .await
            .unwrap_or_else(|e| panic!("round {round}: list: {e}"));
        timed("list", round, started);
        assert!(routes.iter().any(|r| r.id() == "Test.IDemoService.Steady"));
        let started = Instant::now();
        let registration = manager
            .register(instance(port + round, &["Round"]))
            .await
            .unwrap_or_else(|e| panic!("round {round}: register: {e}"));
        timed("register", round, started);
        let started = Instant::now();
        registration
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("round {round}: shutdown: {e}"));
        timed("shutdown", round, started);
    }
    longest
}

/// A three-member cluster with the leader killed, then (after it is back) a follower: fresh
/// managers whose URL names the dead member first list, register and deregister in every one
/// of 20 rounds, each call within the request timeout, and a resolver running through the
/// whole fault window fails no lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_to_live_members_while_the_leader_or_a_follower_is_down() {
    init_logging();
    let cluster = tokio::task::spawn_blocking(EtcdCluster::start)
        .await
        .unwrap();
    let prefix = unique_prefix();
    let url = move |cluster: &EtcdCluster, first: usize| {
        format!(
            "etcd://{}?prefix={prefix}&ttl=3s&timeout=2s",
            cluster.endpoints_starting_with(first)
        )
    };
    let cluster = Arc::new(Mutex::new(cluster));
    let leader = cluster_control(&cluster, |c| c.leader_index()).await;
    let steady_url = url(&cluster.lock().unwrap(), leader);
    let steady = connect(&steady_url).await.unwrap();
    let _steady = steady.register(instance(7801, &["Steady"])).await.unwrap();
    let resolver = AddressResolver::with_config(
        connect(&steady_url).await.unwrap(),
        common::without_health_checks(),
    )
    .await
    .unwrap();
    let resolver = Arc::new(resolver);
    let lookups = Lookups::start(resolver.clone(), &["api/demo/steady"]);

    let leader_url = url(&cluster.lock().unwrap(), leader);
    let elected = cluster_control(&cluster, move |c| {
        c.members[leader].kill();
        let killed = Instant::now();
        let new_leader = c.leader_index();
        (new_leader, killed.elapsed())
    })
    .await;
    eprintln!(
        "leader {leader} killed; member {} leads after {:?}",
        elected.0, elected.1
    );
    let longest_leader_down = fresh_rounds(&leader_url, 20, 7810).await;

    let follower = cluster_control(&cluster, move |c| {
        c.members[leader].restart();
        let current = c.leader_index();
        let follower = (current + 1) % c.members.len();
        c.members[follower].kill();
        follower
    })
    .await;
    let follower_url = url(&cluster.lock().unwrap(), follower);
    let longest_follower_down = fresh_rounds(&follower_url, 20, 7840).await;
    cluster_control(&cluster, move |c| c.members[follower].restart()).await;

    let count = lookups
        .finish("etcd leader, then a follower, of three down")
        .await;
    eprintln!(
        "20/20 rounds each with the leader and a follower down; longest call {:?} / {:?}",
        longest_leader_down, longest_follower_down
    );
    assert_eq!(count.failures, 0, "{count:?}");
    let steady_port = resolver
        .resolve_path("api/demo/steady", None)
        .await
        .unwrap()
        .address()
        .port;
    assert_eq!(steady_port, 7801);
    assert!(steady
        .list()
        .await
        .unwrap()
        .iter()
        .all(|r| r.id() == "Test.IDemoService.Steady"));
}

/// etcd restarted on an empty data directory (a store rebuilt or restored): its revision goes
/// backwards, the watch publishes that as a reset, and a client resolving through the whole
/// window (outage, then an empty registry that instances refill) fails no lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarted_empty_costs_no_lookups() {
    init_logging();
    let h = EtcdHarness::new().await;
    let url = h.server.lock().unwrap().url(&h.prefix, "2s");
    let writer = connect(&url).await.unwrap();
    let _a = writer.register(instance(7901, &["A"])).await.unwrap();
    let _b = writer.register(instance(7902, &["A", "B"])).await.unwrap();
    // Some history, so that the empty store starts well behind the watch's revision.
    for _ in 0..3 {
        writer
            .register(instance(7903, &["C"]))
            .await
            .unwrap()
            .shutdown()
            .await
            .unwrap();
    }
    let reader = h.client().await;
    let mut watch = reader.watch().await.unwrap();
    initial_routes(&mut watch).await;
    let resolver = Arc::new(
        AddressResolver::with_config(reader.clone(), common::without_health_checks())
            .await
            .unwrap(),
    );
    let lookups = Lookups::start(resolver.clone(), &["api/demo/a", "api/demo/b"]);

    control(&h.server, EtcdServer::restart_empty).await;
    eventually(
        Duration::from_secs(20),
        "a reset seen by the watch",
        || async { (watch.status().resets >= 1).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(20), "both instances back", || async {
        let routes = writer.list().await.ok()?;
        let a = routes.iter().find(|r| r.id() == "Test.IDemoService.A")?;
        (a.addresses.len() == 2).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "protection over", || async {
        (resolver.stats().protected_routes == 0 && !resolver.stats().stale).then_some(())
    })
    .await;
    let count = lookups.finish("etcd restarted empty").await;
    assert!(count.total > 100, "{count:?}");
    assert_eq!(count.failures, 0, "{count:?}");
}

/// Listing pages of 2,000 values of 3 KB each are over etcd-client's default 4 MiB message
/// limit: a fresh client still lists and watches every route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_with_large_values_are_listed_and_watched_whole() {
    init_logging();
    let h = EtcdHarness::new().await;
    let notes = "x".repeat(3 * 1024);
    let routes: Vec<ServiceDescriptor> = (0..2100)
        .map(|i| {
            ServiceDescriptor::new(
                format!("Test.IBulkyService.Get{i:04}"),
                format!("api/bulky/get{i:04}"),
            )
            .with_metadata("Notes", notes.clone())
        })
        .collect();
    let registration = h
        .client()
        .await
        .register(Instance::new(Address::new("127.0.0.1", 7801), routes))
        .await
        .unwrap();
    let fresh = h.client().await;
    assert_eq!(fresh.list().await.unwrap().len(), 2100);
    let mut watch = fresh.watch().await.unwrap();
    assert_eq!(initial_routes(&mut watch).await.len(), 2100);
    registration.shutdown().await.unwrap();
}

/// Errors name the member and say what happened in words, without the gRPC stack's internals.
#[tokio::test]
async fn errors_say_which_member_failed_and_how() {
    let dead = [
        common::etcd_server::free_port(),
        common::etcd_server::free_port(),
    ];
    let url = format!(
        "etcd://127.0.0.1:{},127.0.0.1:{}?timeout=2s",
        dead[0], dead[1]
    );
    let err = match wayfinder::connect(&url).await {
        Ok(registry) => registry.list().await.unwrap_err(),
        Err(err) => err,
    };
    let text = err.to_string();
    assert_eq!(err.kind(), wayfinder::ErrorKind::Unavailable, "{text}");
    for port in dead {
        let said = format!("etcd 127.0.0.1:{port} refused the connection");
        assert!(text.contains(&said), "{text}");
    }
    assert_eq!(text.matches("unavailable").count(), 1, "one kind: {text}");
    let internals = [
        "tonic",
        "status:",
        "transport error",
        "metadata",
        "os error",
        "http://",
    ];
    for internal in internals {
        assert!(!text.contains(internal), "{internal:?} in {text}");
    }
}
