//! A rolling deploy against a real etcd (from backends/install.sh), measured from the client's
//! side: 1,000 new instances x 20 routes register within 10 s while the 100 instances of the old
//! generation drain, and a resolver following the registry serves exactly the live instances
//! within 1 s of the last write.
//!
//! Every instance registers through the public API, with a lease, the way a service does at
//! start-up; its address is a loopback-style `127.0.x.y:8080` that nothing listens on (health
//! checks are off, so nothing connects to it). The resolver runs on a runtime of its own with
//! one worker thread, so the CPU time that thread spends absorbing the churn (watch events,
//! merged routes, table snapshots), from the deploy's first write until the view is exact, is
//! the client's cost; it is read from `/proc` (Linux) and printed with the timings.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd_server::EtcdServer;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use wayfinder::resolve::EndpointKey;
use wayfinder::{
    connect, Address, AddressResolver, Instance, Registration, RouteManager, ServiceDescriptor,
};

/// Routes every instance serves.
const ROUTES: usize = 20;
/// Instances of the new generation.
const INSTANCES: usize = 1_000;
/// Instances of the old generation, drained while the new one registers.
const OLD_INSTANCES: usize = 100;
/// The port every instance listens on, as the pods of one deployment do.
const PORT: u16 = 8080;
/// Registrations in flight at once.
const WORKERS: usize = 100;
/// Connections the instances register through (instances are separate processes in production).
const CONNECTIONS: usize = 10;
/// Time allowed for every write of the deploy.
const WRITE_BUDGET: Duration = Duration::from_secs(10);
/// Time allowed after the last write for the resolver's view to be exact.
const CONVERGENCE_BUDGET: Duration = Duration::from_secs(1);
/// How long to keep watching a view that is late, so a failure reports how late it was.
const GIVE_UP_AFTER: Duration = Duration::from_secs(15);
/// How long a stopped client may take to end.
const CLIENT_STOP_LIMIT: Duration = Duration::from_secs(5);
/// Ticks per second of the CPU times in `/proc/*/stat` (USER_HZ: 100 on Linux's usual
/// architectures, whatever the kernel's own tick rate).
const USER_HZ: u64 = 100;

/// The address of instance `n`: the old generation is `0..OLD_INSTANCES`, the new one follows.
fn address(n: usize) -> Address {
    Address::new(format!("127.0.{}.{}", n / 250, n % 250 + 1), PORT)
}

/// The 20 routes of the service, the same in both generations.
fn descriptors() -> Vec<ServiceDescriptor> {
    (0..ROUTES)
        .map(|r| {
            ServiceDescriptor::new(
                format!("Churn.IOrderService.Step{r:02}"),
                format!("api/order/step{r:02}"),
            )
        })
        .collect()
}

/// The id of the calling thread, from `/proc/thread-self` (a link to `<pid>/task/<tid>`).
fn current_thread_id() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").expect("read /proc/thread-self");
    link.file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.parse().ok())
        .unwrap_or_else(|| panic!("/proc/thread-self points at {}", link.display()))
}

/// CPU time (user + system) a thread of this process has used so far.
fn thread_cpu_time(tid: u32) -> Duration {
    let path = format!("/proc/self/task/{tid}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    // Fields after the parenthesised command name, which may itself hold spaces: the state is
    // the first, utime and stime are the 12th and 13th.
    let after_name = &stat[stat.rfind(')').expect("a command name") + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / USER_HZ)
}

/// A resolver on a runtime of its own, created in a dedicated OS thread: one worker thread
/// runs the etcd connection, the watch and the resolver's table updates.
struct Client {
    /// Ours until `shut_down`, which lets the client's own handle be the last.
    resolver: Option<Arc<AddressResolver>>,
    /// The runtime's worker thread.
    worker: u32,
    stop: Option<oneshot::Sender<()>>,
    /// Sent by the client thread as it ends.
    ended: Option<oneshot::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    /// Connects to `url` and starts a resolver (health checks off) on the client's runtime.
    async fn start(url: String) -> Self {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ended_tx, ended_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("churn-client".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("churn-client-worker")
                    .enable_all()
                    .build()
                    .expect("build the client runtime");
                runtime.block_on(async move {
                    // Spawned, so that all of it runs on the worker thread.
                    let client = tokio::spawn(async move {
                        let started = async {
                            let manager = connect(&url).await?;
                            AddressResolver::with_config(manager, common::without_health_checks())
                                .await
                        };
                        let resolver = match started.await {
                            Ok(resolver) => Arc::new(resolver),
                            Err(err) => {
                                let _ = ready_tx.send(Err(err));
                                return;
                            }
                        };
                        let _ = ready_tx.send(Ok((resolver.clone(), current_thread_id())));
                        let _ = stop_rx.await;
                        // The last handle: the resolver and its connection end on this runtime.
                        drop(resolver);
                    });
                    let _ = client.await;
                });
                drop(runtime);
                let _ = ended_tx.send(());
            })
            .expect("spawn the client thread");
        let (resolver, worker) = match ready_rx.await {
            Ok(Ok(started)) => started,
            Ok(Err(err)) => panic!("the client's resolver did not start: {err}"),
            Err(_) => panic!("the client thread ended before its resolver started"),
        };
        Client {
            resolver: Some(resolver),
            worker,
            stop: Some(stop_tx),
            ended: Some(ended_rx),
            thread: Some(thread),
        }
    }

    fn resolver(&self) -> &AddressResolver {
        self.resolver.as_deref().expect("the client runs")
    }

    /// CPU time the client's worker thread has used so far.
    fn cpu_time(&self) -> Duration {
        thread_cpu_time(self.worker)
    }

    /// Drops the resolver on its own runtime and waits (a while) for the client thread to end:
    /// a client still working through a backlog of events stops at its next await point.
    async fn shut_down(mut self) {
        drop(self.resolver.take());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let ended = self.ended.take().expect("shut down once");
        if tokio::time::timeout(CLIENT_STOP_LIMIT, ended)
            .await
            .is_err()
        {
            eprintln!("the client thread is still busy {CLIENT_STOP_LIMIT:?} after being stopped");
            return;
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the client thread ended cleanly");
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Why the resolver's view differs from exactly `live` on every route; `None` when it is exact:
/// the table holds the 20 routes and only the live endpoints, every path resolves, and each
/// route's addresses are the live set.
fn inexact(
    resolver: &AddressResolver,
    paths: &[String],
    live: &HashSet<EndpointKey>,
) -> Option<String> {
    let table = resolver.table();
    if table.len() != ROUTES {
        return Some(format!("{} routes in the table, not {ROUTES}", table.len()));
    }
    if table.endpoint_count() != live.len() {
        return Some(format!(
            "{} endpoints in the table, not {}",
            table.endpoint_count(),
            live.len()
        ));
    }
    for path in paths {
        let Some(entry) = table.by_path(path) else {
            return Some(format!("{path} is not in the table"));
        };
        let addresses = &entry.route().addresses;
        if addresses.len() != live.len() {
            return Some(format!(
                "{path} has {} addresses, not {}",
                addresses.len(),
                live.len()
            ));
        }
        // Merged routes hold each endpoint once: equal sizes and inclusion make equal sets.
        if let Some(stray) = addresses
            .iter()
            .find(|a| !live.contains(&EndpointKey::of(a)))
        {
            return Some(format!("{path} still has {stray}"));
        }
        match resolver.try_resolve_path(path, None) {
            Some(Ok(resolved)) if live.contains(&EndpointKey::of(resolved.address())) => {}
            Some(Ok(resolved)) => {
                return Some(format!("{path} resolved to {}", resolved.address()));
            }
            Some(Err(err)) => return Some(format!("{path} did not resolve: {err}")),
            None => return Some(format!("{path} did not resolve")),
        }
    }
    None
}

/// Polls until the view is exact; returns when it was first seen so, or why it still was not
/// when `deadline` passed.
async fn exact_by(
    resolver: &AddressResolver,
    paths: &[String],
    live: &HashSet<EndpointKey>,
    deadline: Instant,
) -> Result<Instant, String> {
    loop {
        let checked = Instant::now();
        match inexact(resolver, paths, live) {
            None => return Ok(checked),
            Some(why) if checked >= deadline => return Err(why),
            Some(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// Registers instances `numbers` through `managers`, all at once.
async fn register_generation(
    managers: &[Arc<dyn RouteManager>],
    numbers: std::ops::Range<usize>,
) -> Vec<Registration> {
    let mut started = JoinSet::new();
    for n in numbers {
        let manager = managers[n % managers.len()].clone();
        started.spawn(async move {
            manager
                .register(Instance::new(address(n), descriptors()))
                .await
                .unwrap_or_else(|err| panic!("register {}: {err}", address(n)))
        });
    }
    started.join_all().await
}

/// Deregisters every registration, all at once.
async fn shut_down_all(registrations: Vec<Registration>) {
    let mut stopping = JoinSet::new();
    for registration in registrations {
        stopping.spawn(registration.shutdown());
    }
    for stopped in stopping.join_all().await {
        stopped.expect("deregister");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_of_1000_instances_is_resolved_exactly_within_a_second_of_the_last_write()
{
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "wayfinder=warn".into()),
        )
        .try_init();
    let server = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .unwrap();
    let url = format!(
        "etcd://{}?prefix=churn-test/{:016x}/",
        server.endpoint(),
        fastrand::u64(..)
    );
    let mut managers: Vec<Arc<dyn RouteManager>> = Vec::new();
    for _ in 0..CONNECTIONS {
        managers.push(connect(&url).await.unwrap());
    }
    let paths: Vec<String> = descriptors().into_iter().map(|d| d.route_path).collect();
    let keys_of = |numbers: std::ops::Range<usize>| -> HashSet<EndpointKey> {
        numbers.map(|n| EndpointKey::of(&address(n))).collect()
    };

    // The old generation serves, and a client follows it.
    let old = register_generation(&managers, 0..OLD_INSTANCES).await;
    let client = Client::start(url.clone()).await;
    let old_live = keys_of(0..OLD_INSTANCES);
    let deadline = Instant::now() + Duration::from_secs(10);
    if let Err(why) = exact_by(client.resolver(), &paths, &old_live, deadline).await {
        panic!("the client never saw the old generation exactly: {why}");
    }

    // The deploy: every new instance registers; after each tenth, one old instance drains.
    let old: Arc<Vec<Mutex<Option<Registration>>>> =
        Arc::new(old.into_iter().map(|r| Mutex::new(Some(r))).collect());
    let drain_every = INSTANCES / OLD_INSTANCES;
    let next = Arc::new(AtomicUsize::new(0));
    let registered = Arc::new(AtomicUsize::new(0));
    let cpu_before = client.cpu_time();
    let window_start = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..WORKERS {
        let manager = managers[worker % CONNECTIONS].clone();
        let (old, next, registered) = (old.clone(), next.clone(), registered.clone());
        workers.spawn(async move {
            let mut mine = Vec::new();
            let mut last_write = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= INSTANCES {
                    return Ok::<_, String>((mine, last_write));
                }
                let n = OLD_INSTANCES + i;
                let registration = manager
                    .register(Instance::new(address(n), descriptors()))
                    .await
                    .map_err(|err| format!("register {}: {err}", address(n)))?;
                mine.push(registration);
                last_write = Some(Instant::now());
                let count = registered.fetch_add(1, Ordering::Relaxed) + 1;
                if count % drain_every == 0 {
                    let draining = old[count / drain_every - 1]
                        .lock()
                        .unwrap()
                        .take()
                        .expect("each old instance drains once");
                    draining
                        .shutdown()
                        .await
                        .map_err(|err| format!("deregister an old instance: {err}"))?;
                    last_write = Some(Instant::now());
                }
            }
        });
    }
    let mut new = Vec::with_capacity(INSTANCES);
    let mut last_write = window_start;
    for finished in workers.join_all().await {
        let (mine, last) = finished.unwrap_or_else(|why| panic!("the deploy failed: {why}"));
        new.extend(mine);
        last_write = last_write.max(last.unwrap_or(window_start));
    }
    let writing = last_write - window_start;
    assert!(
        old.iter().all(|slot| slot.lock().unwrap().is_none()),
        "every old instance drained"
    );

    let live = keys_of(OLD_INSTANCES..OLD_INSTANCES + INSTANCES);
    let exact = exact_by(client.resolver(), &paths, &live, last_write + GIVE_UP_AFTER).await;
    let cpu = client.cpu_time() - cpu_before;
    let lag = exact.map(|at| at.saturating_duration_since(last_write));
    let lag_text = match &lag {
        Ok(lag) => format!("{} ms", lag.as_millis()),
        Err(_) => format!("not within {} s", GIVE_UP_AFTER.as_secs()),
    };
    println!(
        "churn: {} keys registered and {} removed in {:.2} s; view exact {lag_text} after the \
         last write; client CPU {} ms",
        INSTANCES * ROUTES,
        OLD_INSTANCES * ROUTES,
        writing.as_secs_f64(),
        cpu.as_millis()
    );

    // Clean up before judging, so that a failure leaves no registration to remove from a
    // stopped etcd.
    client.shut_down().await;
    shut_down_all(new).await;

    assert!(
        writing <= WRITE_BUDGET,
        "the deploy's writes took {writing:?}, over {WRITE_BUDGET:?}"
    );
    match lag {
        Ok(lag) => assert!(
            lag <= CONVERGENCE_BUDGET,
            "the view was exact {lag:?} after the last write, over {CONVERGENCE_BUDGET:?}"
        ),
        Err(why) => panic!("the view was not exact {GIVE_UP_AFTER:?} after the last write: {why}"),
    }
}
