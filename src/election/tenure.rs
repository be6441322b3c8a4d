//! The election's life cycle, written once for every backend: a liveness record granted for the
//! campaign, kept alive by one task from the first moment, the backend's acquisition, and the
//! rule that makes two leaders impossible: a renewal that has not succeeded by two thirds of
//! the TTL after the last good one went out ends the leadership, before the registry can let
//! the liveness lapse (it counts the TTL from when it took that renewal, later still).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{validate_name, Leader, LeaderStream, Leadership};
use crate::backoff::Backoff;
use crate::error::{Error, ErrorKind, Result};
use crate::registration::Liveness;

/// What a backend provides for elections.
#[async_trait]
pub(crate) trait ElectionStore: Send + Sync + 'static {
    /// The backend's handle on one campaign's liveness (lease, session, heartbeat record).
    type Lease: Send + Sync + 'static;

    /// Creates a liveness record for a campaign in election `name`, lapsing `ttl` after its
    /// last renewal.
    async fn grant(&self, name: &str, ttl: Duration) -> Result<Self::Lease>;

    /// Renews it; `Lost` when the registry no longer holds it (or no longer holds the
    /// leadership it backs).
    async fn renew(&self, lease: &Self::Lease) -> Result<Liveness>;

    /// Waits until `lease` leads election `name` with `value`; returns the fencing token.
    /// Dropping the future abandons the attempt.
    async fn acquire(&self, name: &str, value: &str, lease: &Self::Lease) -> Result<u64>;

    /// Gives up leadership and candidacy, and the liveness record.
    async fn release(&self, name: &str, lease: &Self::Lease) -> Result<()>;

    /// The current leader of `name`.
    async fn leader(&self, name: &str) -> Result<Option<Leader>>;

    /// Waits until the leader of `name` may differ from `seen` (or a while passes), then
    /// returns the current one.
    async fn next_leader(&self, name: &str, seen: &Option<Leader>) -> Result<Option<Leader>>;
}

/// A leadership's hold on its backend, for [`Leadership::resign`].
pub(crate) trait Tenure: Send + Sync {
    /// Stops renewing and gives the leadership up.
    fn end(self: Box<Self>) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;
}

/// A campaign's hold: its liveness and the task renewing it.
struct Hold<S: ElectionStore> {
    store: Arc<S>,
    name: String,
    lease: Arc<S::Lease>,
    keeper: JoinHandle<()>,
}

impl<S: ElectionStore> Hold<S> {
    /// Stops the keeper and releases the liveness.
    async fn release(self) -> Result<()> {
        self.keeper.abort();
        let _ = self.keeper.await;
        self.store.release(&self.name, &self.lease).await
    }
}

/// A [`Hold`] until it is ended. Dropped without [`Tenure::end`] (a cancelled campaign, a
/// dropped leadership), it stops renewing and releases in the background on the runtime it
/// started on.
struct Held<S: ElectionStore> {
    hold: Option<Hold<S>>,
    runtime: tokio::runtime::Handle,
}

impl<S: ElectionStore> Tenure for Held<S> {
    fn end(mut self: Box<Self>) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> {
        let hold = self.hold.take();
        Box::pin(async move {
            match hold {
                Some(hold) => hold.release().await,
                None => Ok(()),
            }
        })
    }
}

impl<S: ElectionStore> Drop for Held<S> {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            hold.keeper.abort();
            self.runtime.spawn(async move {
                let _ = hold.release().await;
            });
        }
    }
}

/// Campaigns in election `name` on `store` with liveness `ttl` (see the module docs).
pub(crate) async fn campaign<S: ElectionStore>(
    store: Arc<S>,
    name: &str,
    value: &str,
    ttl: Duration,
    stop: impl Future<Output = ()>,
) -> Result<Option<Leadership>> {
    validate_name(name)?;
    let sent = Instant::now();
    let lease = Arc::new(store.grant(name, ttl).await?);
    let (lost_tx, mut lost) = watch::channel(false);
    let keeper = tokio::spawn(keep_alive(store.clone(), lease.clone(), ttl, sent, lost_tx));
    let held = Held {
        hold: Some(Hold {
            store: store.clone(),
            name: name.to_owned(),
            lease: lease.clone(),
            keeper,
        }),
        runtime: tokio::runtime::Handle::current(),
    };
    let gone = || {
        Error::new(
            ErrorKind::Unavailable,
            format!("election {name}: liveness lost while campaigning"),
        )
    };
    let acquired = tokio::select! {
        biased;
        _ = lost.wait_for(|lost| *lost) => Some(Err(gone())),
        () = stop => None,
        token = store.acquire(name, value, &lease) => Some(token),
    };
    let Some(acquired) = acquired else {
        // Stopped: withdraw, and wait until it is done.
        let _ = Box::new(held).end().await;
        return Ok(None);
    };
    // Elected just as the liveness ran out: no leadership to hand out.
    let acquired = acquired.and_then(|token| {
        if *lost.borrow() {
            Err(gone())
        } else {
            Ok(token)
        }
    });
    match acquired {
        Ok(token) => {
            tracing::info!(election = name, token, "elected");
            let tenure = Box::new(held);
            let leadership =
                Leadership::new(name.to_owned(), value.to_owned(), token, lost, tenure);
            Ok(Some(leadership))
        }
        Err(err) => {
            let _ = Box::new(held).end().await;
            Err(err)
        }
    }
}

/// Renews `lease` every third of `ttl` from the start; signals `lost` when the registry says it
/// is gone, or when no renewal has succeeded by two thirds of `ttl` after the last good one was
/// sent (`last_good`, the grant at first).
async fn keep_alive<S: ElectionStore>(
    store: Arc<S>,
    lease: Arc<S::Lease>,
    ttl: Duration,
    mut last_good: Instant,
    lost: watch::Sender<bool>,
) {
    let every = ttl / 3;
    let mut retry = Backoff::new(Duration::from_millis(100), every);
    let mut next = last_good + every;
    loop {
        let deadline = last_good + ttl * 2 / 3;
        tokio::time::sleep_until(next.min(deadline)).await;
        let sent = Instant::now();
        if sent >= deadline {
            tracing::warn!(
                ?ttl,
                "election liveness not renewed in time; leadership lost"
            );
            let _ = lost.send(true);
            return;
        }
        match tokio::time::timeout_at(deadline, store.renew(&lease)).await {
            Ok(Ok(Liveness::Alive)) => {
                last_good = sent;
                retry.reset();
                next = sent + every;
            }
            Ok(Ok(Liveness::Lost)) => {
                tracing::warn!("election liveness gone from the registry; leadership lost");
                let _ = lost.send(true);
                return;
            }
            Ok(Err(err)) => {
                let delay = retry.next_delay();
                tracing::warn!(error = %err, retry_in = ?delay, "election liveness renewal failed");
                next = Instant::now() + delay;
            }
            Err(_) => next = Instant::now(),
        }
    }
}

/// The leaders of `name` on `store` as they change, the current one first. Temporary errors
/// are retried; any other ends the stream after it is yielded.
pub(crate) fn observe<S: ElectionStore>(store: Arc<S>, name: &str) -> LeaderStream {
    if let Err(err) = validate_name(name) {
        return Box::pin(futures_util::stream::once(async move { Err(err) }));
    }
    let start = Some((store, name.to_owned(), None::<Option<Leader>>));
    let stream = futures_util::stream::unfold(start, |state| async move {
        let (store, name, seen) = state?;
        let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let answer = match &seen {
                None => store.leader(&name).await,
                Some(last) => store.next_leader(&name, last).await,
            };
            match answer {
                Ok(current) if seen.as_ref() != Some(&current) => {
                    let next = Some((store, name, Some(current.clone())));
                    return Some((Ok(current), next));
                }
                Ok(_) => retry.reset(),
                Err(err) if err.is_temporary() => {
                    tracing::debug!(error = %err, "election observation failed; trying again");
                    tokio::time::sleep(retry.next_delay()).await;
                }
                Err(err) => return Some((Err(err), None)),
            }
        }
    });
    Box::pin(stream)
}
