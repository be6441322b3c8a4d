//! Acceptance of client resilience with real processes: three instances of the `service` example
//! behind a shared routes file, and a client making several hundred requests a second through
//! the resolver, retrying a failed call once on an alternate.
//!
//! * A rolling restart (each instance drained on SIGTERM, stopped, started again) fails no
//!   request.
//! * An instance answering errors to half of its requests is ejected (its share drops below
//!   5%) and comes back once it recovers.

mod common;
#[path = "../examples/hello/mod.rs"]
mod hello;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd_server::free_port;
use common::{clear_wayfinder_env, example_binary, init_logging, send_sigterm};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wayfinder::backends::file::{FileConfig, FileRouteManager};
use wayfinder::resolve::{HealthConfig, OutlierConfig, ResolverConfig};
use wayfinder::{Address, AddressResolver};

/// Workers calling at once, each pacing its calls; together several hundred a second.
const WORKERS: usize = 6;
const PACE: Duration = Duration::from_millis(12);

/// How long the failing instance answers errors to half of its requests.
const FAILING_FOR: Duration = Duration::from_secs(6);

/// Starts the service example on `port`, registered in the file; returns once it says so.
async fn start(file: &Path, port: u16, env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(example_binary("service"));
    clear_wayfinder_env(&mut command)
        .env("WAYFINDER_BACKEND", format!("file://{}", file.display()))
        .env("SERVICE_ADDRESS", format!("127.0.0.1:{port}"))
        .env("SERVICE_NAME", port.to_string())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the service registers within 10 s")
        .unwrap()
        .unwrap_or_default();
    assert!(line.starts_with("registered"), "{line}");
    // Keep reading, so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// SIGTERM (the service drains), then waits for it to exit.
async fn stop(mut child: Child) {
    send_sigterm(&child).await;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the service exits within 10 s")
        .unwrap();
    assert!(status.success(), "{status}");
}

async fn resolver(file: &Path, outlier: OutlierConfig) -> AddressResolver {
    let mut config = FileConfig::new(file);
    config.poll_interval = Duration::from_millis(100);
    let registry = Arc::new(FileRouteManager::new(config).unwrap());
    let config = ResolverConfig {
        outlier,
        // Passive health would take the failing instance out by itself; ejection is tested.
        health: HealthConfig {
            failure_threshold: 1000,
            ..HealthConfig::default()
        },
        ..ResolverConfig::default()
    };
    AddressResolver::with_config(registry, config)
        .await
        .unwrap()
}

/// What the client saw: each call's latency and the port that answered, by time.
#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<(Instant, Duration, u16)>>,
    failed: AtomicUsize,
    retried: AtomicUsize,
}

/// Calls through the resolver until `stop`, retrying a failed call once on an alternate.
async fn load(resolver: Arc<AddressResolver>, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (resolver, seen, stop) = (resolver.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                let client = hello::http_client();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let resolved = resolver
                        .resolve_path(hello::HELLO_PATH, None)
                        .await
                        .unwrap();
                    let first = resolved.address().clone();
                    let answered = match hello::call(&client, &first, hello::HELLO_PATH).await {
                        Ok(_) => {
                            resolved.succeeded();
                            Some(first.port)
                        }
                        Err(_) => {
                            resolved.failed();
                            seen.retried.fetch_add(1, Ordering::Relaxed);
                            let alternate: Option<Address> =
                                resolved.alternates(None).next().cloned();
                            drop(resolved);
                            match alternate {
                                Some(other) => {
                                    match hello::call(&client, &other, hello::HELLO_PATH).await {
                                        Ok(_) => {
                                            resolver.report_success(&other);
                                            Some(other.port)
                                        }
                                        Err(_) => {
                                            resolver.report_failure(&other);
                                            None
                                        }
                                    }
                                }
                                None => None,
                            }
                        }
                    };
                    match answered {
                        Some(port) => {
                            seen.calls
                                .lock()
                                .unwrap()
                                .push((started, started.elapsed(), port))
                        }
                        None => {
                            seen.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(PACE.saturating_sub(started.elapsed())).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
}

fn percentile(mut latencies: Vec<Duration>, p: f64) -> Duration {
    latencies.sort();
    latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.json");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut instances = Vec::new();
    for port in &ports {
        instances.push(Some(start(&file, *port, &[]).await));
    }
    let resolver = Arc::new(resolver(&file, OutlierConfig::default()).await);
    let (seen, stop) = (Arc::new(Seen::default()), Arc::new(AtomicBool::new(false)));
    let load = tokio::spawn(load(resolver.clone(), seen.clone(), stop.clone()));

    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rolling = Instant::now();
    for (i, port) in ports.iter().enumerate() {
        stop_instance(&mut instances[i]).await;
        instances[i] = Some(start(&file, *port, &[]).await);
    }
    let rolled = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let ended = Instant::now();

    let calls = seen.calls.lock().unwrap().clone();
    let in_window = |from: Instant, to: Instant| -> Vec<Duration> {
        calls
            .iter()
            .filter(|(at, _, _)| *at >= from && *at < to)
            .map(|(_, latency, _)| *latency)
            .collect()
    };
    let (steady, during) = (in_window(began, rolling), in_window(rolling, rolled));
    let rate = calls.len() as f64 / (ended - began).as_secs_f64();
    println!(
        "rolling restart of 3 instances: {} requests at {rate:.0}/s, {} failed, {} retried on an alternate; \
         steady p50 {:?} p99 {:?}; during the restarts p50 {:?} p99 {:?}",
        calls.len(),
        seen.failed.load(Ordering::Relaxed),
        seen.retried.load(Ordering::Relaxed),
        percentile(steady.clone(), 0.5),
        percentile(steady, 0.99),
        percentile(during.clone(), 0.5),
        percentile(during, 0.99),
    );
    assert_eq!(seen.failed.load(Ordering::Relaxed), 0, "a request failed");
    assert!(rate >= 300.0, "the load ran at {rate:.0} requests/s");
    for instance in instances.iter_mut() {
        stop_instance(instance).await;
    }
}

async fn stop_instance(instance: &mut Option<Child>) {
    if let Some(child) = instance.take() {
        stop(child).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_failing_half_its_requests_is_ejected_and_comes_back() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.json");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let failing = ports[0];
    // It answers errors to half of its requests for this long after it starts.
    let fails_until = Instant::now() + FAILING_FOR;
    let mut instances = vec![Some(
        start(
            &file,
            failing,
            &[
                ("SERVICE_FAIL_RATE", "0.5"),
                ("SERVICE_FAIL_FOR", &FAILING_FOR.as_secs().to_string()),
            ],
        )
        .await,
    )];
    for port in &ports[1..] {
        instances.push(Some(start(&file, *port, &[]).await));
    }
    let outlier = OutlierConfig {
        interval: Duration::from_millis(250),
        failure_percentage: 30,
        minimum_requests: 10,
        base_ejection: Duration::from_secs(1),
        max_ejection: Duration::from_secs(4),
        ..OutlierConfig::default()
    };
    let resolver = Arc::new(resolver(&file, outlier).await);
    let (seen, stop) = (Arc::new(Seen::default()), Arc::new(AtomicBool::new(false)));
    let load = tokio::spawn(load(resolver.clone(), seen.clone(), stop.clone()));
    let began = Instant::now();

    // The share of each port among the calls started in a window.
    let share = |from: Duration, to: Duration| -> f64 {
        let calls = seen.calls.lock().unwrap();
        let window: Vec<u16> = calls
            .iter()
            .filter(|(at, _, _)| *at >= began + from && *at < began + to)
            .map(|(_, _, port)| *port)
            .collect();
        let mut by_port: BTreeMap<u16, usize> = BTreeMap::new();
        for port in &window {
            *by_port.entry(*port).or_default() += 1;
        }
        by_port.get(&failing).copied().unwrap_or(0) as f64 / window.len().max(1) as f64
    };
    common::eventually(
        Duration::from_secs(3),
        "the failing instance ejected",
        || async {
            (resolver.is_ejected(&Address::new("127.0.0.1", failing)) == Some(true)).then_some(())
        },
    )
    .await;
    let ejected_at = began.elapsed();
    // While it fails, ejections and failed trials keep it out (the window ends a little before
    // it recovers, whenever it started).
    let window_end = (fails_until - Duration::from_millis(500)).saturating_duration_since(began);
    assert!(
        window_end > ejected_at + Duration::from_secs(2),
        "too slow a start"
    );
    tokio::time::sleep(window_end.saturating_sub(ejected_at)).await;
    let while_failing = share(ejected_at, window_end);
    // Recovered: its next trial passes and it takes its third again.
    let recovered = common::eventually(Duration::from_secs(14), "the instance back", || async {
        let now = began.elapsed();
        let recent = share(now.saturating_sub(Duration::from_secs(1)), now);
        let recovered = began + now > fails_until + Duration::from_secs(1);
        (recovered && recent > 0.2).then_some(recent)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    println!(
        "an instance failing half its requests: ejected after {ejected_at:?}; its share while \
         failing {:.1}%, after recovering {:.1}%; {} ejections; {} requests failed after one retry",
        while_failing * 100.0,
        recovered * 100.0,
        resolver.stats().ejections,
        seen.failed.load(Ordering::Relaxed)
    );
    assert!(while_failing < 0.05, "share while failing {while_failing}");
    for instance in instances.iter_mut() {
        stop_instance(instance).await;
    }
}
