//! Selector behaviour: exact cycles, statistical bounds, key stability, load awareness.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::descriptor;
use wayfinder::backends::memory::MemoryRouteManager;
use wayfinder::resolve::select::{
    Candidates, ConsistentHash, LeastConnections, LeastResource, PeakEwma, Pick, PowerOfTwoChoices,
    Random, RoundRobin, Selector, Weighted,
};
use wayfinder::resolve::{Endpoint, HealthConfig, HealthMonitor, ResolverConfig};
use wayfinder::{Address, AddressResolver, Instance, RouteManager};

const PICKS: usize = 100_000;

fn addresses(n: u16) -> Vec<Arc<Address>> {
    (1..=n)
        .map(|i| Arc::new(Address::new("10.0.0.1", 9000 + i)))
        .collect()
}

fn endpoints(addresses: &[Arc<Address>]) -> Vec<Arc<Endpoint>> {
    addresses
        .iter()
        .map(|a| Arc::new(Endpoint::new(a.clone())))
        .collect()
}

fn counts(pick: &dyn Pick, endpoints: &[Arc<Endpoint>], picks: usize) -> Vec<usize> {
    let candidates = Candidates::new(endpoints, false);
    let mut counts = vec![0; endpoints.len()];
    for _ in 0..picks {
        counts[pick.pick(&candidates, None).unwrap()] += 1;
    }
    counts
}

/// Marks an endpoint unhealthy through the monitor's passive path (threshold 1).
fn mark_unhealthy(endpoint: &Endpoint) {
    let monitor = HealthMonitor::start(HealthConfig {
        enabled: false,
        failure_threshold: 1,
        ..HealthConfig::default()
    });
    monitor.report_failure(endpoint);
    assert!(!endpoint.is_healthy());
}

#[test]
fn round_robin_is_exact_over_each_cycle_and_skips_unhealthy_addresses() {
    let addresses = addresses(8);
    let endpoints = endpoints(&addresses);
    let pick = RoundRobin.build(&addresses);
    let candidates = Candidates::new(&endpoints, false);
    // From a random start, then strictly in order.
    let start = pick.pick(&candidates, None).unwrap();
    for turn in 1..800 {
        assert_eq!(
            pick.pick(&candidates, None),
            Some((start + turn) % 8),
            "turn {turn}"
        );
    }
    mark_unhealthy(&endpoints[3]);
    // 7,000 picks are whole cycles of 8 turns x 7 survivors: each survivor gets exactly 1,000.
    let counts = counts(pick.as_ref(), &endpoints, 7_000);
    assert_eq!(counts, [1000, 1000, 1000, 0, 1000, 1000, 1000, 1000]);
}

#[test]
fn random_stays_within_statistical_bounds() {
    let addresses = addresses(8);
    let endpoints = endpoints(&addresses);
    let counts = counts(Random.build(&addresses).as_ref(), &endpoints, PICKS);
    // Expected 12,500 each; one standard deviation is about 105, so 700 is beyond 6 sigma.
    for count in &counts {
        assert!(count.abs_diff(PICKS / 8) < 700, "{counts:?}");
    }
    mark_unhealthy(&endpoints[0]);
    let counts = self::counts(Random.build(&addresses).as_ref(), &endpoints, PICKS);
    assert_eq!(counts[0], 0);
    for count in &counts[1..] {
        assert!(
            count.abs_diff(PICKS / 7) < 700,
            "uniform over the healthy: {counts:?}"
        );
    }
}

#[test]
fn weighted_follows_the_weights_within_statistical_bounds() {
    let mut addresses = addresses(5);
    for (i, address) in addresses.iter_mut().enumerate() {
        Arc::make_mut(address).weight = Some(i as u32); // 0, 1, 2, 3, 4
    }
    let endpoints = endpoints(&addresses);
    let pick = Weighted.build(&addresses);
    let counts = counts(pick.as_ref(), &endpoints, PICKS);
    assert_eq!(counts[0], 0, "weight 0 is never chosen");
    for (i, count) in counts.iter().enumerate().skip(1) {
        let expected = PICKS * i / 10;
        assert!(count.abs_diff(expected) < 900, "address {i}: {counts:?}");
    }
    // The heaviest address down: the others keep their proportions (1:2:3).
    mark_unhealthy(&endpoints[4]);
    let counts = self::counts(pick.as_ref(), &endpoints, PICKS);
    assert_eq!((counts[0], counts[4]), (0, 0));
    for (i, count) in counts.iter().enumerate().take(4).skip(1) {
        let expected = PICKS * i / 6;
        assert!(count.abs_diff(expected) < 900, "address {i}: {counts:?}");
    }
}

#[test]
fn consistent_hash_keeps_keys_and_moves_about_one_nth_when_one_leaves() {
    let addresses = addresses(8);
    let endpoints = endpoints(&addresses);
    let ring = ConsistentHash::default().build(&addresses);
    let candidates = Candidates::new(&endpoints, false);
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let place = |pick: &dyn Pick, candidates: &Candidates<'_>, key: &str| {
        candidates
            .address(pick.pick(candidates, Some(key.as_bytes())).unwrap())
            .clone()
    };
    let before: Vec<Address> = keys
        .iter()
        .map(|k| place(ring.as_ref(), &candidates, k))
        .collect();
    for (key, address) in keys.iter().zip(&before) {
        assert_eq!(
            &place(ring.as_ref(), &candidates, key),
            address,
            "key {key} moved without a change"
        );
    }
    let per_address: HashMap<u16, usize> = before.iter().fold(HashMap::new(), |mut m, a| {
        *m.entry(a.port).or_default() += 1;
        m
    });
    assert_eq!(per_address.len(), 8, "every address owns keys");

    let remaining: Vec<Arc<Address>> = addresses
        .iter()
        .filter(|a| a.port != 9003)
        .cloned()
        .collect();
    let remaining_endpoints = self::endpoints(&remaining);
    let smaller = ConsistentHash::default().build(&remaining);
    let candidates = Candidates::new(&remaining_endpoints, false);
    let mut moved = 0;
    for (key, old) in keys.iter().zip(&before) {
        let new = place(smaller.as_ref(), &candidates, key);
        if old.port == 9003 {
            moved += 1;
        } else {
            assert_eq!(&new, old, "key {key} moved although its address stayed");
        }
    }
    let fraction = moved as f64 / keys.len() as f64;
    assert!(fraction < 1.5 / 8.0, "{fraction} of keys moved");
}

async fn resolver_with(
    selector: Arc<dyn Selector>,
    n: u16,
) -> (
    AddressResolver,
    MemoryRouteManager,
    Vec<wayfinder::Registration>,
) {
    let registry = MemoryRouteManager::default();
    let mut registrations = Vec::new();
    for address in addresses(n) {
        registrations.push(
            registry
                .register(Instance::new((*address).clone(), vec![descriptor("Work")]))
                .await
                .unwrap(),
        );
    }
    let config = ResolverConfig {
        selector,
        health: HealthConfig {
            enabled: false,
            ..HealthConfig::default()
        },
        ..ResolverConfig::default()
    };
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), config)
        .await
        .unwrap();
    (resolver, registry, registrations)
}

#[tokio::test]
async fn least_connections_prefers_the_least_loaded() {
    let (resolver, _registry, _regs) = resolver_with(Arc::new(LeastConnections), 8).await;
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(resolver.resolve_path("api/demo/work", None).await.unwrap());
    }
    let load = |held: &[wayfinder::resolve::Resolved]| {
        let mut load: HashMap<u16, usize> = HashMap::new();
        for r in held {
            *load.entry(r.address().port).or_default() += 1;
        }
        load
    };
    assert!(load(&held).values().all(|&n| n == 10), "{:?}", load(&held));
    // Finish every call to one address: the next ten go there.
    held.retain(|r| r.address().port != 9005);
    for _ in 0..10 {
        let r = resolver.resolve_path("api/demo/work", None).await.unwrap();
        assert_eq!(r.address().port, 9005);
        held.push(r);
    }
}

#[tokio::test]
async fn power_of_two_choices_keeps_the_load_even() {
    let (resolver, _registry, _regs) = resolver_with(Arc::new(PowerOfTwoChoices), 8).await;
    let mut held = Vec::new();
    for _ in 0..800 {
        held.push(resolver.resolve_path("api/demo/work", None).await.unwrap());
    }
    let mut load: HashMap<u16, usize> = HashMap::new();
    for r in &held {
        *load.entry(r.address().port).or_default() += 1;
    }
    let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
    // Random placement of 800 calls on 8 addresses spreads by about +-30; two choices by a few.
    assert!(max - min <= 8, "{load:?}");

    // With two addresses, p2c always compares both: the loads never differ by more than one.
    let (resolver, _registry, _regs) = resolver_with(Arc::new(PowerOfTwoChoices), 2).await;
    let mut held = Vec::new();
    for _ in 0..101 {
        held.push(resolver.resolve_path("api/demo/work", None).await.unwrap());
        let first = held.iter().filter(|r| r.address().port == 9001).count();
        assert!(first.abs_diff(held.len() - first) <= 1);
    }
}

/// A TCP server on loopback that answers each byte it reads with one byte, `delay` later.
async fn answering_server(delay: std::time::Duration) -> Address {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut byte = [0u8; 1];
                while stream.read_exact(&mut byte).await.is_ok() {
                    tokio::time::sleep(delay).await;
                    if stream.write_all(&byte).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Address::new("127.0.0.1", port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_sends_calls_to_the_address_that_answers_faster() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fast = answering_server(std::time::Duration::ZERO).await;
    let slow = answering_server(std::time::Duration::from_millis(100)).await;
    let registry = MemoryRouteManager::default();
    let mut registrations = Vec::new();
    for address in [&fast, &slow] {
        let instance = Instance::new(address.clone(), vec![descriptor("Work")]);
        registrations.push(registry.register(instance).await.unwrap());
    }
    let config = ResolverConfig {
        selector: Arc::new(PeakEwma::default()),
        ..ResolverConfig::default()
    };
    let resolver = Arc::new(
        AddressResolver::with_config(Arc::new(registry.clone()), config)
            .await
            .unwrap(),
    );
    // Four callers, each with a connection per address, 100 calls each: the time from the
    // resolution to `succeeded` is what the selector learns.
    let mut callers = Vec::new();
    for _ in 0..4 {
        let resolver = resolver.clone();
        let (fast, slow) = (fast.clone(), slow.clone());
        callers.push(tokio::spawn(async move {
            let connect = |a: &Address| tokio::net::TcpStream::connect((a.ip.clone(), a.port));
            let mut to_fast = connect(&fast).await.unwrap();
            let mut to_slow = connect(&slow).await.unwrap();
            let mut fast_calls = 0;
            for _ in 0..100 {
                let resolved = resolver.resolve_path("api/demo/work", None).await.unwrap();
                let stream = if resolved.address().port == fast.port {
                    fast_calls += 1;
                    &mut to_fast
                } else {
                    &mut to_slow
                };
                stream.write_all(b"?").await.unwrap();
                stream.read_exact(&mut [0u8; 1]).await.unwrap();
                resolved.succeeded();
            }
            fast_calls
        }));
    }
    let mut fast_calls = 0;
    for caller in callers {
        fast_calls += caller.await.unwrap();
    }
    // Before its first answer each address counts 30 ms; once both have answered, the slow
    // one's estimate (about 100 ms) loses every comparison for many seconds, even to a fast
    // address whose estimate a scheduling stall raised to a few milliseconds.
    assert!(
        fast_calls >= 360,
        "{fast_calls} of 400 calls went to the fast address"
    );
    drop(registrations);
}

#[tokio::test]
async fn least_resource_follows_the_loads_instances_publish() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let registry = MemoryRouteManager::default();
    let loads = [Arc::new(AtomicU64::new(10)), Arc::new(AtomicU64::new(80))];
    let mut registrations = Vec::new();
    for (address, load) in addresses(2).iter().zip(&loads) {
        let load = load.clone();
        let instance = Instance::new((**address).clone(), vec![descriptor("Work")])
            .with_ttl(std::time::Duration::from_secs(1))
            .with_load(move || load.load(Ordering::Relaxed) as f64);
        registrations.push(registry.register(instance).await.unwrap());
    }
    let config = ResolverConfig {
        selector: Arc::new(LeastResource),
        health: HealthConfig {
            enabled: false,
            ..HealthConfig::default()
        },
        ..ResolverConfig::default()
    };
    let resolver = AddressResolver::with_config(Arc::new(registry.clone()), config)
        .await
        .unwrap();
    let ports = |n: usize| {
        let resolver = &resolver;
        async move {
            let mut ports = std::collections::BTreeSet::new();
            for _ in 0..n {
                let resolved = resolver.resolve_path("api/demo/work", None).await.unwrap();
                ports.insert(resolved.address().port);
            }
            ports
        }
    };
    // Two addresses: both are compared on every pick, and the less loaded wins each time.
    assert_eq!(ports(200).await, [9001].into());
    loads[0].store(90, Ordering::Relaxed);
    loads[1].store(5, Ordering::Relaxed);
    // The next heartbeats (a third of the TTL) publish the loads; the resolver follows.
    common::eventually(
        std::time::Duration::from_secs(3),
        "picks to follow the new loads",
        || async { (ports(50).await == [9002].into()).then_some(()) },
    )
    .await;
    assert_eq!(ports(200).await, [9002].into());
    drop(registrations);
}

#[test]
fn selectors_are_found_by_name() {
    for name in wayfinder::resolve::select::SELECTOR_NAMES {
        assert_eq!(
            wayfinder::resolve::select::selector_by_name(name)
                .unwrap()
                .name(),
            *name
        );
    }
    assert!(wayfinder::resolve::select::selector_by_name("fastest").is_err());
}
