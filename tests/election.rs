//! Leader election against real servers (etcd, Consul from backends/install.sh) and the shared
//! file: five campaigners with one leader at any moment and rising fencing tokens; resigning
//! hands over at once; a SIGKILLed leader (the `wayfinder elect` binary) is replaced within its
//! liveness rules; a leader cut off through a proxy gives up before anyone else is elected.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::consul_server::ConsulAgent;
use common::etcd_server::EtcdServer;
use common::proxy::CutProxy;
use futures_util::StreamExt;
use wayfinder::election::{Election, Leader};
use wayfinder::{connect, RouteManager};

/// A registry to hold elections in.
#[allow(async_fn_in_trait)]
trait Place: Sized {
    async fn new() -> Self;
    /// The registry's URL, straight or through `via` (a proxy's `host:port`).
    fn url(&self, via: Option<&str>) -> String;
    /// The server's `host:port`, for a proxy to forward to (none for the file).
    fn endpoint(&self) -> Option<String>;
    /// How long after a leader stops renewing another may be elected at the latest.
    fn lapse_bound() -> Duration;
    /// How long after a leader is killed another may be elected at the earliest: the leader's
    /// last good renewal may have gone out up to two thirds of the TTL before.
    fn early_bound() -> Duration;
}

fn namespace() -> String {
    format!("wayfinder-test/{:016x}/", fastrand::u64(..))
}

struct Etcd {
    server: EtcdServer,
    prefix: String,
}

impl Place for Etcd {
    async fn new() -> Self {
        let server = tokio::task::spawn_blocking(EtcdServer::start)
            .await
            .unwrap();
        Etcd {
            server,
            prefix: namespace(),
        }
    }

    fn url(&self, via: Option<&str>) -> String {
        let endpoint = via
            .map(str::to_owned)
            .unwrap_or_else(|| self.server.endpoint());
        format!("etcd://{endpoint}?prefix={}&ttl=3s&timeout=1s", self.prefix)
    }

    fn endpoint(&self) -> Option<String> {
        Some(self.server.endpoint())
    }

    fn lapse_bound() -> Duration {
        Duration::from_secs(3 + 2)
    }

    fn early_bound() -> Duration {
        Duration::from_secs(3) / 3
    }
}

struct Consul {
    agent: ConsulAgent,
    prefix: String,
}

impl Place for Consul {
    async fn new() -> Self {
        let agent = tokio::task::spawn_blocking(ConsulAgent::start)
            .await
            .unwrap();
        Consul {
            agent,
            prefix: namespace(),
        }
    }

    fn url(&self, via: Option<&str>) -> String {
        let endpoint = via
            .map(str::to_owned)
            .unwrap_or_else(|| self.agent.endpoint());
        format!(
            "consul://{endpoint}?prefix={}&ttl=10s&timeout=2s&wait=5s",
            self.prefix
        )
    }

    fn endpoint(&self) -> Option<String> {
        Some(self.agent.endpoint())
    }

    /// Consul invalidates a lapsed session between its TTL (10 s, Consul's least) and twice it.
    fn lapse_bound() -> Duration {
        Duration::from_secs(2 * 10 + 2)
    }

    fn early_bound() -> Duration {
        Duration::from_secs(10) / 3
    }
}

struct File {
    dir: tempfile::TempDir,
}

impl Place for File {
    async fn new() -> Self {
        File {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn url(&self, _via: Option<&str>) -> String {
        format!(
            "file://{}?ttl=3s",
            self.dir.path().join("routes.json").display()
        )
    }

    fn endpoint(&self) -> Option<String> {
        None
    }

    fn lapse_bound() -> Duration {
        Duration::from_secs(3 + 2)
    }

    fn early_bound() -> Duration {
        Duration::from_secs(3) / 3
    }
}

async fn election<P: Place>(place: &P) -> Arc<dyn Election> {
    let registry: Arc<dyn RouteManager> = connect(&place.url(None)).await.unwrap();
    registry.election().unwrap()
}

macro_rules! election_suite {
    ($module:ident, $place:ty) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn five_campaigners_lead_one_at_a_time_with_rising_tokens() {
                five_campaigners_lead_one_at_a_time_with_rising_tokens_on::<$place>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn resigning_hands_over_at_once_and_observers_follow() {
                resigning_hands_over_at_once_and_observers_follow_on::<$place>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_killed_leader_is_replaced_within_its_liveness() {
                a_killed_leader_is_replaced_within_its_liveness_on::<$place>().await;
            }
        }
    };
}

election_suite!(etcd, Etcd);
election_suite!(consul, Consul);
election_suite!(file, File);

async fn five_campaigners_lead_one_at_a_time_with_rising_tokens_on<P: Place>() {
    common::init_logging();
    let place = P::new().await;
    let leading = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let mut campaigners = Vec::new();
    for i in 0..5 {
        let election = election(&place).await;
        let (leading, tokens) = (leading.clone(), tokens.clone());
        campaigners.push(tokio::spawn(async move {
            let value = format!("campaigner-{i}");
            let leadership = election.campaign("jobs", &value).await.unwrap();
            let others = leading.fetch_add(1, Ordering::SeqCst);
            assert_eq!(others, 0, "{value} leads beside another leader");
            tokens.lock().unwrap().push(leadership.token());
            // While it leads, the registry names it.
            let named = election.leader("jobs").await.unwrap().unwrap();
            assert_eq!(named.value, value);
            assert_eq!(named.token, leadership.token());
            assert!(!leadership.is_lost());
            leading.fetch_sub(1, Ordering::SeqCst);
            leadership.resign().await.unwrap();
        }));
    }
    let all = async {
        for campaigner in campaigners {
            campaigner.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("every campaigner led in turn");
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 5);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens rise: {tokens:?}"
    );
    assert_eq!(election(&place).await.leader("jobs").await.unwrap(), None);
}

async fn resigning_hands_over_at_once_and_observers_follow_on<P: Place>() {
    common::init_logging();
    let place = P::new().await;
    let (first, second) = (election(&place).await, election(&place).await);
    let mut observed = election(&place).await.observe("jobs");
    assert_eq!(
        observed.next().await.unwrap().unwrap(),
        None,
        "nobody leads yet"
    );
    let leadership = first.campaign("jobs", "first").await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), observed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.map(|l| l.value), Some("first".to_owned()));
    let next = tokio::spawn(async move { second.campaign("jobs", "second").await.unwrap() });
    // The second campaigner waits while the first leads.
    let first_token = leadership.token();
    let resigned = Instant::now();
    leadership.resign().await.unwrap();
    let successor = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .expect("elected after the resignation")
        .unwrap();
    let took = resigned.elapsed();
    assert!(took < Duration::from_secs(1), "handed over in {took:?}");
    assert!(successor.token() > first_token);
    // The observer sees the second leader (perhaps after a moment with none).
    let mut last: Option<Leader> = None;
    while last.as_ref().map(|l| l.value.as_str()) != Some("second") {
        last = tokio::time::timeout(Duration::from_secs(10), observed.next())
            .await
            .expect("the observer follows")
            .unwrap()
            .unwrap();
    }
    successor.resign().await.unwrap();
}

async fn a_killed_leader_is_replaced_within_its_liveness_on<P: Place>() {
    common::init_logging();
    let place = P::new().await;
    let url = place.url(None);
    let (mut child, line, _stdout) =
        common::cli::start(&["--backend", &url, "elect", "jobs", "--value", "doomed"]).await;
    assert_eq!(line.as_deref(), Some("leader"));
    let leader = common::cli::run(&["--backend", &url, "leader", "jobs"]).await;
    assert!(leader.status.success());
    assert_eq!(String::from_utf8_lossy(&leader.stdout).trim(), "doomed");
    let doomed_token = election(&place)
        .await
        .leader("jobs")
        .await
        .unwrap()
        .unwrap()
        .token;

    let successor = election(&place).await;
    let next = tokio::spawn(async move { successor.campaign("jobs", "next").await.unwrap() });
    // While the child leads, the other campaigner waits (given time to be elected wrongly).
    tokio::time::sleep(P::early_bound() / 2).await;
    let leading = election(&place).await.leader("jobs").await.unwrap();
    assert_eq!(leading.map(|l| l.value).as_deref(), Some("doomed"));
    assert!(!next.is_finished(), "elected while another leads");
    let killed = Instant::now();
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let elected = tokio::time::timeout(P::lapse_bound() + Duration::from_secs(5), next)
        .await
        .expect("a new leader")
        .unwrap();
    let took = killed.elapsed();
    assert!(
        took <= P::lapse_bound(),
        "a new leader {took:?} after the kill"
    );
    eprintln!(
        "killed leader replaced after {took:?} ({:?} bound)",
        P::lapse_bound()
    );
    // Not before the killed leader's liveness could have lapsed.
    assert!(
        took >= P::early_bound(),
        "a new leader only {took:?} after the kill"
    );
    assert!(elected.token() > doomed_token);
    elected.resign().await.unwrap();
    let none = common::cli::run(&["--backend", &url, "leader", "jobs"]).await;
    assert!(!none.status.success(), "no leader: exit non-zero");
}

/// The leader reaches the registry through a proxy that is then cut: its `lost()` fires before
/// the other campaigner is elected.
async fn a_cut_off_leader_gives_up_before_another_is_elected_on<P: Place>() {
    common::init_logging();
    let place = P::new().await;
    let proxy = CutProxy::start(place.endpoint().unwrap()).await;
    let behind: Arc<dyn RouteManager> = connect(&place.url(Some(&proxy.endpoint()))).await.unwrap();
    let leadership = behind
        .election()
        .unwrap()
        .campaign("jobs", "cut-off")
        .await
        .unwrap();
    let successor = election(&place).await;
    let next = tokio::spawn(async move {
        let leadership = successor.campaign("jobs", "next").await.unwrap();
        (Instant::now(), leadership)
    });
    let lost = leadership.lost();
    let watch_lost = tokio::spawn(async move {
        lost.await;
        Instant::now()
    });
    let cut = Instant::now();
    proxy.cut();
    let lost_at = tokio::time::timeout(P::lapse_bound(), watch_lost)
        .await
        .expect("the cut-off leader learns it lost")
        .unwrap();
    let (elected_at, elected) =
        tokio::time::timeout(P::lapse_bound() + Duration::from_secs(5), next)
            .await
            .expect("a new leader")
            .unwrap();
    eprintln!(
        "cut-off leader: lost after {:?}, the next elected after {:?}",
        lost_at - cut,
        elected_at - cut
    );
    assert!(lost_at < elected_at, "two leaders at once");
    elected.resign().await.unwrap();
    drop(leadership);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_cut_off_leader_gives_up_before_another_is_elected() {
    a_cut_off_leader_gives_up_before_another_is_elected_on::<Etcd>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_a_cut_off_leader_gives_up_before_another_is_elected() {
    a_cut_off_leader_gives_up_before_another_is_elected_on::<Consul>().await;
}

/// `wayfinder elect` on SIGTERM: resigns and exits 0, and the next campaigner leads at once.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_resigns_on_sigterm() {
    common::init_logging();
    let place = File::new().await;
    let url = place.url(None);
    let (mut child, line, _stdout) =
        common::cli::start(&["--backend", &url, "elect", "jobs", "--value", "cli"]).await;
    assert_eq!(line.as_deref(), Some("leader"));
    // At once: the signal comes right after `leader` is printed.
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let successor = election(&place).await;
    let next = tokio::spawn(async move { successor.campaign("jobs", "next").await.unwrap() });
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the child stops")
        .unwrap();
    assert!(status.success(), "{status}");
    let stopped = Instant::now();
    let elected = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .expect("elected after the resignation")
        .unwrap();
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "handed over {took:?} after the exit"
    );
    elected.resign().await.unwrap();
}
