//! Swapping the registry by configuration alone: the same `service` and `client` example
//! binaries run against a shared file, a real etcd and a real Consul agent, with only
//! `WAYFINDER_*` variables changed between runs.

mod common;

use std::collections::BTreeSet;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::consul_server::ConsulAgent;
use common::etcd_server::EtcdServer;
use common::{clear_wayfinder_env, eventually, example_binary, init_logging, send_sigterm};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use wayfinder::{connect_with, Config};

const HELLO_PATH: &str = "api/greeter/hello";

/// A running `service` example and the rest of its output.
struct Service {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

fn unique_prefix() -> String {
    format!("swap-test/{:016x}/", fastrand::u64(..))
}

/// Starts the `service` example as `name`; returns once it says it registered.
async fn start_service(settings: &[(&str, String)], name: &str) -> Service {
    let mut child = clear_wayfinder_env(&mut Command::new(example_binary("service")))
        .envs(settings.iter().map(|(k, v)| (k, v)))
        .env("SERVICE_NAME", name)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the service example");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .unwrap_or_else(|_| panic!("{name} did not register within 20 s"))
        .unwrap()
        .unwrap_or_else(|| panic!("{name} exited before registering"));
    assert!(line.starts_with("registered "), "{name}: {line}");
    Service { child, stdout }
}

/// Stops a service with SIGTERM and checks that it deregistered and exited cleanly.
async fn stop_service(mut service: Service) {
    send_sigterm(&service.child).await;
    let line = tokio::time::timeout(Duration::from_secs(20), service.stdout.next_line())
        .await
        .expect("the service answers SIGTERM within 20 s")
        .unwrap();
    assert!(
        line.as_deref()
            .is_some_and(|l| l.starts_with("deregistered ")),
        "{line:?}"
    );
    let exit = tokio::time::timeout(Duration::from_secs(20), service.child.wait())
        .await
        .expect("the service exits after deregistering")
        .unwrap();
    assert!(exit.success(), "{exit}");
}

/// Runs the `client` example for `calls` calls; returns who answered each.
async fn run_client(settings: &[(&str, String)], calls: usize) -> Vec<String> {
    let run = clear_wayfinder_env(&mut Command::new(example_binary("client")))
        .envs(settings.iter().map(|(k, v)| (k, v)))
        .args([HELLO_PATH, &calls.to_string()])
        .kill_on_drop(true)
        .output();
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the client finishes within 30 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(
        status.success(),
        "client failed ({status}):\n{stdout}\n{}",
        String::from_utf8_lossy(&stderr)
    );
    let answers: Vec<String> = stdout
        .lines()
        .map(|line| {
            line.split_once(" hello from ")
                .unwrap_or_else(|| panic!("unexpected client line {line:?}"))
                .1
                .to_owned()
        })
        .collect();
    assert_eq!(answers.len(), calls, "{stdout}");
    answers
}

/// The whole round: two instances serve, the client reaches both; one stops on SIGTERM and
/// the client reaches only the other; the last stops and the registry holds no greeter route.
async fn swap_round(settings: Vec<(&str, String)>) {
    init_logging();
    let alpha = start_service(&settings, "alpha").await;
    let beta = start_service(&settings, "beta").await;

    let answers: BTreeSet<String> = run_client(&settings, 6).await.into_iter().collect();
    assert_eq!(answers, BTreeSet::from(["alpha".into(), "beta".into()]));

    stop_service(alpha).await;
    let answers = run_client(&settings, 4).await;
    assert!(answers.iter().all(|a| a == "beta"), "{answers:?}");

    stop_service(beta).await;
    let mut config = Config::from_url(&settings[0].1);
    if let Some((_, prefix)) = settings.iter().find(|(k, _)| *k == "WAYFINDER_PREFIX") {
        config.prefix = Some(prefix.clone());
    }
    let registry = connect_with(&config).await.unwrap();
    eventually(Duration::from_secs(5), "no greeter route left", || async {
        let routes = registry.list().await.ok()?;
        (!routes.iter().any(|r| r.route_path() == HELLO_PATH)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_examples_run_unchanged_on_a_shared_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("routes.json").display());
    swap_round(vec![("WAYFINDER_BACKEND", url)]).await;
}

#[tokio::test]
async fn the_examples_run_unchanged_on_etcd() {
    let server = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .unwrap();
    swap_round(vec![
        ("WAYFINDER_BACKEND", format!("etcd://{}", server.endpoint())),
        ("WAYFINDER_PREFIX", unique_prefix()),
        ("WAYFINDER_TTL", "5s".into()),
    ])
    .await;
}

#[tokio::test]
async fn the_examples_run_unchanged_on_consul() {
    let agent = tokio::task::spawn_blocking(ConsulAgent::start)
        .await
        .unwrap();
    swap_round(vec![
        (
            "WAYFINDER_BACKEND",
            format!("consul://{}", agent.endpoint()),
        ),
        ("WAYFINDER_PREFIX", unique_prefix()),
        ("WAYFINDER_TTL", "10s".into()),
    ])
    .await;
}
