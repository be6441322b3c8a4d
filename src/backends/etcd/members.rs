//! Member fail-over: every etcd request goes to one member at a time, and to the next one when
//! that member cannot answer.
//!
//! etcd-client's own multi-endpoint client balances requests over all endpoints, dead ones
//! included, and with credentials it authenticates eagerly against one of them. [`Members`]
//! instead keeps one client per endpoint, each connected to that endpoint alone and only when
//! first needed, so building it never touches the network. A request goes to the member that
//! last answered; a member that is unreachable, has no leader or does not answer within its
//! share of the request's deadline (the time left, split among the members not yet tried) is
//! passed over for the next one, and the next request starts past it. Errors that
//! another member would repeat (permission denied, invalid argument, not found, compaction) are
//! returned as they are. A member whose token the server no longer knows (expired, or lost when
//! etcd restarted) gets a new client, which authenticates afresh, and the request is repeated
//! once on it.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::time::Instant;

use super::errors::member;
use super::{etcd_error_at, status_code, UNAUTHENTICATED};
use crate::error::{Error, ErrorKind, Result};

/// gRPC status codes that say a member could not serve the request (tonic's `Code` values).
pub(super) const CANCELLED: i32 = 1;
pub(super) const UNKNOWN: i32 = 2;
pub(super) const DEADLINE_EXCEEDED: i32 = 4;
pub(super) const UNAVAILABLE: i32 = 14;

/// The cluster's members, each with its own lazily connected client.
pub(crate) struct Members {
    endpoints: Vec<String>,
    options: ConnectOptions,
    /// Time allowed for one request, fail-overs included.
    timeout: Duration,
    /// Per endpoint: the connected client, if any, and its generation (so a stale client is
    /// dropped once, not a replacement that a concurrent request already made).
    clients: Vec<Mutex<Slot>>,
    /// The index of the member that answered last.
    preferred: AtomicUsize,
}

#[derive(Default)]
struct Slot {
    client: Option<Client>,
    generation: u64,
}

/// Why an attempt on one member did not produce an answer.
enum Attempt {
    /// etcd or the connection said no.
    Failed(etcd_client::Error),
    /// The deadline passed first.
    TimedOut,
}

impl Members {
    /// Members for these endpoints; no connection is made until a request needs one.
    pub(crate) fn new(endpoints: Vec<String>, options: ConnectOptions, timeout: Duration) -> Self {
        let clients = endpoints.iter().map(|_| Mutex::default()).collect();
        Members {
            endpoints,
            options,
            timeout,
            clients,
            preferred: AtomicUsize::new(0),
        }
    }

    /// Runs `op` with a member's client: the preferred member first, then each other one in
    /// turn while members fail in a way another member may not. `action` names the request in
    /// errors. The whole call, fail-overs included, ends by the configured timeout.
    pub(crate) async fn call<T, F, Fut>(&self, action: &str, mut op: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.timeout;
        let first = self.preferred.load(Ordering::Relaxed);
        let count = self.endpoints.len();
        let mut failures: Vec<Error> = Vec::new();
        for step in 0..count {
            let index = (first + step) % count;
            // Each member gets an equal share of the time left, so one that accepts connections
            // but never answers (frozen, partitioned) cannot use up the whole request.
            let left = u32::try_from(count - step).unwrap_or(u32::MAX);
            let attempt_deadline =
                Instant::now() + deadline.saturating_duration_since(Instant::now()) / left;
            let mut reauthenticated = false;
            let failure = loop {
                let attempt = tokio::time::timeout_at(attempt_deadline, async {
                    let (generation, client) = self.client(index).await?;
                    op(client).await.map_err(|err| (Some(generation), err))
                })
                .await;
                match attempt {
                    Ok(Ok(answer)) => {
                        self.preferred.store(index, Ordering::Relaxed);
                        return Ok(answer);
                    }
                    Ok(Err((Some(generation), err)))
                        if !reauthenticated && is_stale_token(&err) =>
                    {
                        tracing::debug!(endpoint = %self.endpoints[index], error = %err, "etcd token refused; authenticating again");
                        self.forget(index, generation);
                        reauthenticated = true;
                    }
                    Ok(Err((_, err))) => break Attempt::Failed(err),
                    Err(_) => break Attempt::TimedOut,
                }
            };
            if matches!(&failure, Attempt::TimedOut)
                || matches!(&failure, Attempt::Failed(err) if is_member_failure(err))
            {
                // The next request starts with another member.
                let _ = self.preferred.compare_exchange(
                    index,
                    (index + 1) % count,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            let endpoint = self.endpoints[index].as_str();
            match failure {
                Attempt::Failed(err) if is_member_failure(&err) => {
                    tracing::debug!(endpoint, error = %err, "etcd member failed; trying the next one");
                    failures.push(etcd_error_at(Some(endpoint), action, err));
                }
                Attempt::Failed(err) => return Err(etcd_error_at(Some(endpoint), action, err)),
                Attempt::TimedOut => {
                    tracing::debug!(endpoint, "etcd member did not answer in time");
                    failures.push(Error::new(
                        ErrorKind::Unavailable,
                        format!(
                            "etcd {} did not answer in time ({action})",
                            member(endpoint)
                        ),
                    ));
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(every_member_failed(action, failures, count))
    }

    /// The client of the preferred member (connected, and authenticated, if it was not yet),
    /// failing over like any request.
    pub(crate) async fn preferred_client(&self) -> Result<Client> {
        self.call("connect", |client| async move { Ok(client) })
            .await
    }

    /// The member's client and its generation, connecting it first if it has none.
    async fn client(
        &self,
        index: usize,
    ) -> std::result::Result<(u64, Client), (Option<u64>, etcd_client::Error)> {
        if let Some(found) = self.cached(index) {
            return Ok(found);
        }
        // Connecting with just this endpoint: with credentials this authenticates against it.
        let client = Client::connect([&self.endpoints[index]], Some(self.options.clone()))
            .await
            .map_err(|err| (None, err))?;
        let mut slot = self.slot(index);
        if let Some(other) = &slot.client {
            // A concurrent request connected first: share its client.
            return Ok((slot.generation, other.clone()));
        }
        slot.generation += 1;
        slot.client = Some(client.clone());
        Ok((slot.generation, client))
    }

    fn cached(&self, index: usize) -> Option<(u64, Client)> {
        let slot = self.slot(index);
        slot.client.clone().map(|client| (slot.generation, client))
    }

    /// Drops the member's client if it is still the one of `generation`; the next request
    /// connects (and authenticates) again.
    fn forget(&self, index: usize, generation: u64) {
        let mut slot = self.slot(index);
        if slot.generation == generation {
            slot.client = None;
        }
    }

    fn slot(&self, index: usize) -> std::sync::MutexGuard<'_, Slot> {
        self.clients[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One error for a request that failed at every member it tried in time: the one member's, or
/// each member's in turn.
fn every_member_failed(action: &str, mut failures: Vec<Error>, members: usize) -> Error {
    match failures.len() {
        0 => Error::new(ErrorKind::Unavailable, format!("etcd {action}: no member")),
        1 if members == 1 => failures.remove(0),
        tried => {
            let each: Vec<&str> = failures.iter().map(Error::message).collect();
            let message = format!(
                "no etcd member answered ({tried} of {members} tried in time): {}",
                each.join("; ")
            );
            let last = failures.remove(failures.len() - 1);
            Error::new(last.kind(), message).with_source(last)
        }
    }
}

/// Whether the error says the member could not serve the request, so another member may: the
/// connection failed, the member has no leader or timed out, or a stream ended early.
pub(crate) fn is_member_failure(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            match status.code() as i32 {
                CANCELLED | DEADLINE_EXCEEDED | UNAVAILABLE => true,
                UNKNOWN => {
                    message.contains("transport")
                        || message.contains("connection")
                        || message.contains("h2 protocol")
                }
                _ => {
                    message.contains("no leader")
                        || message.contains("leader changed")
                        || message.contains("request timed out")
                }
            }
        }
        // Stream set-up failures: the stream ended or its channel closed before an answer.
        etcd_client::Error::WatchError(_) => true,
        etcd_client::Error::LeaseKeepAliveError(message) => !message.contains("not found"),
        _ => false,
    }
}

/// Whether the error says the member does not accept the client's token (it expired, or etcd
/// restarted and forgot it), so authenticating again may help.
pub(crate) fn is_stale_token(err: &etcd_client::Error) -> bool {
    let message = match err {
        etcd_client::Error::GRpcStatus(status) => {
            if status_code(err) == Some(UNAUTHENTICATED) {
                return true;
            }
            status.message()
        }
        etcd_client::Error::WatchError(message)
        | etcd_client::Error::LeaseKeepAliveError(message) => message,
        _ => return false,
    };
    is_stale_token_message(message)
}

/// Whether an etcd message (an error's, or a watch's cancel reason) says the token is not
/// accepted any more.
pub(crate) fn is_stale_token_message(message: &str) -> bool {
    message.contains("invalid auth token")
        || message.contains("auth token is expired")
        || message.contains("auth store is old")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_failures_move_on_and_stale_tokens_reauthenticate() {
        let watch = |m: &str| etcd_client::Error::WatchError(m.to_owned());
        let lease = |m: &str| etcd_client::Error::LeaseKeepAliveError(m.to_owned());
        assert!(is_member_failure(&watch("failed to create lease keeper")));
        assert!(is_member_failure(&lease("channel closed")));
        assert!(!is_member_failure(&lease("lease not found")));
        assert!(!is_member_failure(&etcd_client::Error::InvalidArgs(
            "empty endpoints".into()
        )));
        assert!(is_stale_token(&watch("etcdserver: invalid auth token")));
        assert!(is_stale_token(&watch("auth: invalid auth token")));
        assert!(!is_stale_token(&watch("etcdserver: permission denied")));
        assert!(is_stale_token_message(
            "etcdserver: revision of auth store is old"
        ));
    }
}
