//! The file backend across real OS processes, driven through the `wayfinder` CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{clear_wayfinder_env, eventually, initial_routes, instance, next_event};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wayfinder::backends::file::{FileConfig, FileRouteManager};
use wayfinder::{RouteEvent, RouteManager, RouteSource};

const BIN: &str = env!("CARGO_BIN_EXE_wayfinder");

fn backend_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// Writes a `--routes` file with `count` descriptors for process `process`.
fn routes_file(dir: &Path, process: usize, count: usize) -> PathBuf {
    let descriptors: Vec<Value> = (0..count)
        .map(|j| {
            json!({"Id": format!("Proc{process}.IWorkService.Method{j}"),
                   "RoutePath": format!("api/work{process}/method{j}"),
                   "Metadatas": {"EnableAuthorization": false}})
        })
        .collect();
    let path = dir.join(format!("routes-{process}.json"));
    std::fs::write(&path, serde_json::to_vec(&descriptors).unwrap()).unwrap();
    path
}

fn register_process(routes_path: &Path, address: &str, ttl: &str, routes: &Path) -> Child {
    clear_wayfinder_env(&mut Command::new(BIN))
        .args([
            "--backend",
            &backend_url(routes_path),
            "register",
            "--address",
            address,
            "--ttl",
            ttl,
            "--routes",
        ])
        .arg(routes)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start wayfinder register")
}

async fn terminate(child: &mut Child) {
    common::send_sigterm(child).await;
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "register exited with {exit}");
}

fn manager(path: &Path) -> FileRouteManager {
    FileRouteManager::new(FileConfig::new(path)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_register_400_routes_and_readers_never_see_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");

    // A reader that parses every version of the file it can catch while the writers run.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (path, stop, reads) = (path.clone(), stop.clone(), reads.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(bytes) = std::fs::read(&path) {
                    if let Err(e) = serde_json::from_slice::<Value>(&bytes) {
                        panic!("reader saw a partial file ({} bytes): {e}", bytes.len());
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let route_files: Vec<PathBuf> = (0..8).map(|p| routes_file(dir.path(), p, 50)).collect();
    let started = Instant::now();
    let mut children: Vec<Child> = route_files
        .iter()
        .enumerate()
        .map(|(p, routes)| {
            register_process(&path, &format!("127.0.0.1:{}", 9100 + p), "10", routes)
        })
        .collect();

    let client = manager(&path);
    eventually(Duration::from_secs(60), "all 400 routes", || async {
        (client.list().await.ok()?.len() == 400).then_some(())
    })
    .await;
    let took = started.elapsed();
    eprintln!("8 processes x 50 routes registered in {took:?}");

    let routes = client.list().await.unwrap();
    for p in 0..8 {
        let expected = format!("127.0.0.1:{}", 9100 + p);
        let mine = routes
            .iter()
            .filter(|r| r.id().starts_with(&format!("Proc{p}.")))
            .count();
        assert_eq!(mine, 50, "process {p}");
        assert!(routes
            .iter()
            .filter(|r| r.id().starts_with(&format!("Proc{p}.")))
            .all(|r| r.addresses.len() == 1 && r.addresses[0].to_string() == expected));
    }

    for child in &mut children {
        terminate(child).await;
    }
    assert!(
        client.list().await.unwrap().is_empty(),
        "SIGTERM deregisters"
    );
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("reader saw only whole files");
    assert!(
        reads.load(Ordering::Relaxed) > 0,
        "the reader read the file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_instance_disappears_within_ttl_plus_2s() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    let routes = routes_file(dir.path(), 0, 3);
    let client = manager(&path);
    let mut watch = client.watch().await.unwrap();
    assert!(initial_routes(&mut watch).await.is_empty());

    let ttl = Duration::from_secs(2);
    let mut child = register_process(&path, "127.0.0.1:9200", "2", &routes);
    for _ in 0..3 {
        assert!(matches!(
            next_event(&mut watch, Duration::from_secs(10)).await,
            RouteEvent::Created(_)
        ));
    }
    child.start_kill().unwrap();
    let killed = Instant::now();
    child.wait().await.unwrap();
    for _ in 0..3 {
        let event = next_event(&mut watch, ttl + Duration::from_secs(2)).await;
        assert!(matches!(event, RouteEvent::Removed(_)), "{event:?}");
    }
    let took = killed.elapsed();
    assert!(
        took <= ttl + Duration::from_secs(2),
        "routes took {took:?} to disappear"
    );
    assert!(client.list().await.unwrap().is_empty());
}

async fn cli(path: &Path, args: &[&str]) -> std::process::Output {
    clear_wayfinder_env(&mut Command::new(BIN))
        .arg("--backend")
        .arg(backend_url(path))
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_list_get_watch_and_deregister() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    let routes = routes_file(dir.path(), 1, 2);

    let mut watcher = clear_wayfinder_env(&mut Command::new(BIN))
        .args(["--backend", &backend_url(&path), "watch"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();

    let mut registrar = register_process(&path, "127.0.0.1:9301", "10", &routes);
    let mut events = Vec::new();
    while events.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("watch printed a line")
            .unwrap()
            .expect("watch still running");
        events.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    assert!(events
        .iter()
        .all(|e| e["event"] == "created" && e["addresses"] == json!(["127.0.0.1:9301"])));
    assert!(events
        .iter()
        .any(|e| e["id"] == "Proc1.IWorkService.Method0" && e["path"] == "api/work1/method0"));

    let out = cli(&path, &["list"]).await;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains("Proc1.IWorkService.Method1\tapi/work1/method1\t127.0.0.1:9301"),
        "{text}"
    );

    let out = cli(&path, &["list", "--json"]).await;
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);

    let out = cli(&path, &["get", "Proc1.IWorkService.Method0"]).await;
    let route: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(route["ServiceDescriptor"]["RoutePath"], "api/work1/method0");

    let out = cli(&path, &["get", "Proc1.IWorkService.Nothing"]).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no route"));

    let out = cli(&path, &["deregister", "--address", "127.0.0.1:9301"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap()["event"],
            "removed"
        );
    }
    terminate(&mut registrar).await;
    watcher.start_kill().unwrap();
}

#[tokio::test]
async fn cli_rejects_bad_backends_clearly() {
    for (url, expected) in [
        (
            "zookeeper://127.0.0.1:2181",
            "known schemes: file, memory, etcd, consul",
        ),
        ("routes.json", "has no scheme"),
        ("file://./x.json?ttl=abc", "not a duration"),
        ("file://./x.json?colour=blue", "unknown option"),
        ("consul://127.0.0.1:1?timeout=1s", "consul"),
        ("etcd://127.0.0.1:1?ttl=5&timeout=1s", "etcd"),
    ] {
        let out = clear_wayfinder_env(&mut Command::new(BIN))
            .args(["--backend", url, "list"])
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{url} was accepted");
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{url}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_resolve_spreads_round_robin_and_health_probes_each_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    let registry = manager(&path);
    let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_port = listening.local_addr().unwrap().port();
    let closed_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut registrations = Vec::new();
    for port in [open_port, closed_port, 9403] {
        let instance = wayfinder::Instance::new(
            wayfinder::Address::new("127.0.0.1", port),
            vec![wayfinder::ServiceDescriptor::new(
                "Svc.IUserService.GetUserName",
                "api/user/getusername",
            )],
        );
        registrations.push(registry.register(instance).await.unwrap());
    }

    let out = cli(&path, &["resolve", "Api/User/GetUserName", "--count", "6"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let picks: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(picks.len(), 6);
    assert_eq!(picks[..3], picks[3..], "round robin repeats its cycle");
    let mut distinct = picks[..3].to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{picks:?}");

    let out = cli(&path, &["resolve", "api/user/nothing"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no route"));

    let out = cli(
        &path,
        &["health", "api/user/getusername", "--timeout", "500ms"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("127.0.0.1:{open_port} healthy\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{closed_port} unhealthy\n")),
        "{text}"
    );
    assert_eq!(text.lines().count(), 3);
    for registration in registrations {
        registration.shutdown().await.unwrap();
    }
    drop(listening);
}

#[tokio::test]
async fn cli_reads_a_configuration_file_then_the_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    let registration = manager(&path)
        .register(instance(7601, &["Configured"]))
        .await
        .unwrap();
    let config_file = dir.path().join("wayfinder.toml");
    std::fs::write(
        &config_file,
        format!("backend = \"{}\"\nttl = \"5s\"\n", backend_url(&path)),
    )
    .unwrap();
    let empty = format!("file://{}", dir.path().join("empty.json").display());
    let list = |config: Option<&str>, env: Option<&str>, flag: Option<&str>| {
        let mut command = Command::new(BIN);
        clear_wayfinder_env(&mut command);
        if let Some(env) = env {
            command.env("WAYFINDER_BACKEND", env);
        }
        if let Some(config) = config {
            command.args(["--config", config]);
        }
        if let Some(flag) = flag {
            command.args(["--backend", flag]);
        }
        command.arg("list");
        async move { command.output().await.unwrap() }
    };
    let listed = |out: &std::process::Output| {
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).contains("api/demo/configured")
    };
    let file = config_file.to_str().unwrap();
    assert!(
        listed(&list(Some(file), None, None).await),
        "the file's backend"
    );
    assert!(
        !listed(&list(Some(file), Some(&empty), None).await),
        "WAYFINDER_BACKEND over the file"
    );
    assert!(
        listed(&list(Some(file), Some(&empty), Some(&backend_url(&path))).await),
        "--backend over both"
    );

    std::fs::write(&config_file, "bakend = \"memory://\"\n").unwrap();
    let out = list(Some(file), None, None).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bakend"));

    let secret = "etcd://root:hunter2@127.0.0.1:1?timeout=1s&password=hunter3";
    let out = list(None, None, Some(secret)).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("hunter2") && !stderr.contains("hunter3"),
        "{stderr}"
    );
    registration.shutdown().await.unwrap();
}
