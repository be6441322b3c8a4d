//! The `tower` feature: a route's addresses as a `tower::discover::Discover` stream.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::poll_fn;
use std::pin::Pin;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{descriptor, instance};
use tower::balance::p2c::Balance;
use tower::discover::{Change, Discover};
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{Service, ServiceExt};
use wayfinder::discover::{discover_id, discover_path};
use wayfinder::resolve::EndpointKey;
use wayfinder::{connect, Address};

const WITHIN: Duration = Duration::from_secs(5);

fn key(port: u16) -> EndpointKey {
    EndpointKey::of(&Address::new("127.0.0.1", port))
}

/// The next change, failing the test if none comes within [`WITHIN`] or the stream ends.
async fn next_change<D>(discover: &mut D) -> Change<D::Key, D::Service>
where
    D: Discover + Unpin,
    D::Error: Debug,
{
    match tokio::time::timeout(
        WITHIN,
        poll_fn(|cx| Pin::new(&mut *discover).poll_discover(cx)),
    )
    .await
    {
        Ok(Some(Ok(change))) => change,
        Ok(Some(Err(error))) => panic!("discover failed: {error:?}"),
        Ok(None) => panic!("discover ended unexpectedly"),
        Err(_) => panic!("no change within {WITHIN:?}"),
    }
}

/// The key and service of an insert, failing the test on a remove.
fn inserted<K: Debug, S>(change: Change<K, S>) -> (K, S) {
    match change {
        Change::Insert(key, service) => (key, service),
        Change::Remove(key) => panic!("expected an insert, got the removal of {key:?}"),
    }
}

#[tokio::test]
async fn follows_the_instances_of_a_route_path() {
    let registry = connect("memory://").await.unwrap();
    let first = registry.register(instance(7001, &["Hello"])).await.unwrap();
    let mut discover = discover_path(registry.clone(), "API/Demo/Hello", |a: &Address| a.port);
    let second = registry.register(instance(7002, &["Hello"])).await.unwrap();

    let mut seen = BTreeSet::new();
    for _ in 0..2 {
        let (key, port) = inserted(next_change(&mut discover).await);
        assert_eq!(key, self::key(port));
        seen.insert(port);
    }
    assert_eq!(seen, BTreeSet::from([7001, 7002]));

    let third = registry.register(instance(7003, &["Hello"])).await.unwrap();
    assert_eq!(inserted(next_change(&mut discover).await).1, 7003);

    let other = registry.register(instance(7100, &["Other"])).await.unwrap();
    let fourth = registry.register(instance(7004, &["Hello"])).await.unwrap();
    assert_eq!(
        inserted(next_change(&mut discover).await).1,
        7004,
        "a route with another path gives no change"
    );

    second.shutdown().await.unwrap();
    match next_change(&mut discover).await {
        Change::Remove(removed) => assert_eq!(removed, key(7002)),
        Change::Insert(_, port) => panic!("expected the removal of 7002, got an insert of {port}"),
    }

    for registration in [first, third, fourth, other] {
        registration.shutdown().await.unwrap();
    }
    let mut removed = HashSet::new();
    for _ in 0..3 {
        match next_change(&mut discover).await {
            Change::Remove(key) => removed.insert(key),
            Change::Insert(_, port) => panic!("unexpected insert of {port}"),
        };
    }
    assert_eq!(removed, HashSet::from([key(7001), key(7003), key(7004)]));
}

#[tokio::test]
async fn follows_the_instances_of_a_service_id() {
    let registry = connect("memory://").await.unwrap();
    let id = descriptor("Hello").id;
    let mut discover = discover_id(registry.clone(), &id, |a: &Address| a.port);

    let both = registry
        .register(instance(7201, &["Hello", "World"]))
        .await
        .unwrap();
    assert_eq!(inserted(next_change(&mut discover).await).1, 7201);

    let world = registry.register(instance(7202, &["World"])).await.unwrap();
    let hello = registry.register(instance(7203, &["Hello"])).await.unwrap();
    assert_eq!(inserted(next_change(&mut discover).await).1, 7203);

    world.shutdown().await.unwrap();
    both.shutdown().await.unwrap();
    match next_change(&mut discover).await {
        Change::Remove(removed) => assert_eq!(removed, key(7201)),
        Change::Insert(_, port) => panic!("unexpected insert of {port}"),
    }
    hello.shutdown().await.unwrap();
}

#[tokio::test]
async fn holds_the_registry_and_matches_paths_as_the_resolver_does() {
    let registry = connect("memory://").await.unwrap();
    let mut discover = discover_path(registry.clone(), "/api/demo/hello/", |a: &Address| a.port);
    let registration = registry.register(instance(7301, &["Hello"])).await.unwrap();
    assert_eq!(inserted(next_change(&mut discover).await).1, 7301);

    drop(registry);
    registration.shutdown().await.unwrap();
    assert!(
        matches!(next_change(&mut discover).await, Change::Remove(_)),
        "the stream follows the registry after the caller's handle is gone"
    );
}

#[tokio::test]
async fn feeds_a_p2c_balancer() {
    let registry = connect("memory://").await.unwrap();
    let first = registry.register(instance(7401, &["Hello"])).await.unwrap();
    let second = registry.register(instance(7402, &["Hello"])).await.unwrap();

    let discover = discover_path(registry.clone(), "api/demo/hello", |address: &Address| {
        let port = address.port;
        tower::service_fn(move |_request: ()| async move { Ok::<_, Infallible>(port) })
    });
    let mut balance = Balance::new(PendingRequestsDiscover::new(
        discover,
        CompleteOnResponse::default(),
    ));

    let deadline = Instant::now() + WITHIN;
    while balance.len() < 2 {
        assert!(Instant::now() < deadline, "the balancer never saw both");
        tokio::time::timeout(WITHIN, balance.ready())
            .await
            .expect("the balancer became ready")
            .unwrap();
        if balance.len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    let mut reached = BTreeSet::new();
    for _ in 0..50 {
        let port = balance.ready().await.unwrap().call(()).await.unwrap();
        reached.insert(port);
    }
    assert_eq!(reached, BTreeSet::from([7401, 7402]));

    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn balanced_example_spreads_and_drops_a_deregistered_instance() {
    let binary = common::example_binary("balanced");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("routes.json").display());
    let child = common::clear_wayfinder_env(&mut tokio::process::Command::new(&binary))
        .env("WAYFINDER_BACKEND", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the example finishes within 60 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "example failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains(&format!("registry: {url}")), "{stdout}");
    let summaries: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("balanced: "))
        .collect();
    assert_eq!(
        summaries,
        [
            "balanced: 30 requests over 3 instances",
            "balanced: 30 requests over 2 instances"
        ],
        "{stdout}"
    );
}
