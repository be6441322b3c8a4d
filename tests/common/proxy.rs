//! A loopback TCP proxy for fault tests. It forwards to a target; it can freeze (connections stay
//! open but no byte moves: a stalled stream) and cut (every connection dropped, new ones refused).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Frozen,
    Cut,
}

/// Forwards 127.0.0.1:`port` to a target address, under the test's control.
pub struct CutProxy {
    port: u16,
    mode: Arc<watch::Sender<Mode>>,
    task: JoinHandle<()>,
}

/// Copies one direction while the mode allows; ends when cut or either side closes.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if *mode.wait_for(|m| *m != Mode::Frozen).await.unwrap() == Mode::Cut {
            return;
        }
        tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    // A freeze that starts now holds these bytes until it ends.
                    if mode.wait_for(|m| *m != Mode::Frozen).await.map(|m| *m == Mode::Cut).unwrap_or(true) {
                        return;
                    }
                    if to.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = mode.changed() => {}
        }
    }
}

impl CutProxy {
    /// Starts forwarding to `target` (`host:port`).
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(watch::channel(Mode::Forward).0);
        let state = mode.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *state.borrow() == Mode::Cut {
                    continue; // refused: closed at once
                }
                let Ok(outbound) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(pump(in_read, out_write, state.subscribe()));
                tokio::spawn(pump(out_read, in_write, state.subscribe()));
            }
        });
        CutProxy { port, mode, task }
    }

    /// The proxy's `127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Keeps connections open but moves no bytes.
    pub fn freeze(&self) {
        self.mode.send_replace(Mode::Frozen);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Forward);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.send_replace(Mode::Cut);
    }
}
