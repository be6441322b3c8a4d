//! The `wayfinder` binary as a test's child process, with no configuration file.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wayfinder"));
    command.args(args).env_remove("WAYFINDER_CONFIG");
    command
}

/// Starts `wayfinder ARGS` (killed when dropped) and waits up to 30 s for its first line on
/// stdout; returns the child, that line (`None` if stdout closed first) and the rest of stdout.
pub async fn start(args: &[&str]) -> (Child, Option<String>, Lines<BufReader<ChildStdout>>) {
    let mut child = command(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("wayfinder {args:?} printed nothing within 30 s"))
        .unwrap();
    (child, first, lines)
}

/// Runs `wayfinder ARGS` to its end.
pub async fn run(args: &[&str]) -> std::process::Output {
    command(args).output().await.unwrap()
}
