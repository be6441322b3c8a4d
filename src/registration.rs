//! [`Registration`]: keeps one instance's routes registered until it is shut down.
//!
//! One background task per registration runs the whole life cycle, so a heartbeat can never race a
//! deregistration: renew liveness at TTL/3; when liveness is lost (lease expired or revoked,
//! registry wiped), write every entry again; on shutdown, remove the entries and stop.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backoff::{jittered, Backoff};
use crate::error::{Error, ErrorKind, Result};
use crate::load::LoadReport;
use crate::manager::{Instance, RouteSource};
use crate::metrics;
use crate::route::Address;
use crate::telemetry::traced;
use crate::watch::{note_write, RouteEvent};

/// Whether an instance's liveness record is still held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Renewed.
    Alive,
    /// Gone (expired, revoked, wiped): the entries must be written again.
    Lost,
}

/// What a backend provides to keep an instance registered.
#[async_trait]
pub(crate) trait LivenessStore: Send + Sync + 'static {
    /// The backend's handle on one registration's liveness (lease id, session id, ...).
    type Lease: Send + Sync + 'static;

    /// The backend's name, for traces.
    const BACKEND: &'static str;

    /// Creates a fresh liveness record and writes every entry of the instance bound to it.
    async fn put_instance(&self, instance: &Instance, ttl: Duration) -> Result<Self::Lease>;

    /// Renews the liveness record; never writes route entries.
    async fn keep_alive(&self, instance: &Instance, lease: &Self::Lease) -> Result<Liveness>;

    /// Writes back, bound to `lease`, the entries of the instance that `which` names while the
    /// liveness record lives: those missing (deleted by hand, say), or all of them as the
    /// instance is now (its address details changed); returns how many it wrote. Entries that a
    /// deregistration removed (see [`crate::RouteManager::remove_addresses`]) stay removed.
    async fn heal(&self, instance: &Instance, lease: &Self::Lease, which: Rewrite)
        -> Result<usize>;

    /// Removes the instance's entries and its liveness record.
    async fn remove_instance(&self, instance: &Instance, lease: Self::Lease) -> Result<()>;
}

/// Which of an instance's entries [`LivenessStore::heal`] writes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rewrite {
    /// Those missing.
    Missing,
    /// Every one, as the instance is now (a new load to publish).
    All,
}

#[derive(Debug)]
enum Stop {
    Deregister,
    Abandon,
}

/// A live registration. Keep it for as long as the instance serves.
///
/// [`Registration::shutdown`] deregisters and waits for it; dropping the handle deregisters in the
/// background (best effort: it needs the runtime to keep running).
#[derive(Debug)]
pub struct Registration {
    instance_id: String,
    address: Address,
    ttl: Duration,
    stop: Option<oneshot::Sender<Stop>>,
    task: Option<JoinHandle<Result<()>>>,
    /// The registry, read back by [`Registration::drain`].
    source: Arc<dyn RouteSource>,
}

impl Registration {
    /// Writes the instance's entries, then starts the task that keeps them alive.
    pub(crate) async fn start<S: LivenessStore>(
        source: Arc<dyn RouteSource>,
        store: Arc<S>,
        instance: Instance,
        default_ttl: Duration,
    ) -> Result<Self> {
        instance.validate()?;
        let mut instance = instance;
        if let Some(load) = instance.load.as_ref().and_then(LoadReport::read) {
            instance.address.processor_time = Some(load);
        }
        let ttl = instance.ttl.unwrap_or(default_ttl);
        let instance_id = instance.id()?;
        let routes = instance.routes.len();
        let lease = traced(
            S::BACKEND,
            "register",
            store.put_instance(&instance, ttl),
            |_| routes,
        )
        .await?;
        note_write();
        metrics::registered(S::BACKEND, false);
        tracing::info!(instance = %instance_id, routes = instance.routes.len(), ?ttl, "registered");
        let (stop_tx, stop_rx) = oneshot::channel();
        let address = instance.address.clone();
        let task = tokio::spawn(keep_registered(store, instance, ttl, lease, stop_rx));
        Ok(Registration {
            instance_id,
            address,
            ttl,
            stop: Some(stop_tx),
            task: Some(task),
            source,
        })
    }

    /// The instance id (the encoded address) the entries are stored under.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The liveness TTL in force.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Deregisters: stops renewing, removes the entries and the liveness record, and waits.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Stop::Deregister);
        }
        self.join().await
    }

    /// Graceful drain, for a rolling deploy: deregisters, then waits until the change has
    /// reached watchers (a fresh watch of the registry no longer lists the address, and a
    /// moment more, [`DRAIN_SETTLE`], for watchers elsewhere to apply it) or `grace` passes,
    /// and only then returns, so the application stops accepting calls afterwards. Callers that
    /// resolved the address just before may still call it meanwhile; keep serving until this
    /// returns.
    pub async fn drain(self, grace: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + grace;
        let (source, address) = (self.source.clone(), self.address.clone());
        match tokio::time::timeout_at(deadline, self.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                // Still listed until its liveness lapses: keep serving for the grace.
                tracing::warn!(%address, error = %err, "deregistration failed; serving out the grace");
                tokio::time::sleep_until(deadline).await;
                return Err(err);
            }
            Err(_) => {
                tracing::warn!(%address, ?grace, "deregistration did not finish within the grace");
                return Ok(());
            }
        }
        let confirmed = tokio::time::timeout_at(deadline, gone(source.as_ref(), &address)).await;
        match confirmed {
            Ok(Ok(())) => {
                let settle = tokio::time::Instant::now() + DRAIN_SETTLE;
                tokio::time::sleep_until(settle.min(deadline)).await;
            }
            Ok(Err(err)) => {
                tracing::warn!(%address, error = %err, "could not confirm the deregistration; waiting out the grace");
                tokio::time::sleep_until(deadline).await;
            }
            Err(_) => {
                tracing::warn!(%address, ?grace, "the registry still lists the address after the grace");
            }
        }
        Ok(())
    }

    /// Stops renewing without deregistering: the entries expire after the TTL, as if the process
    /// had crashed. For hand-over to another process, and for testing expiry.
    pub async fn abandon(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Stop::Abandon);
        }
        let _ = self.join().await;
    }

    async fn join(&mut self) -> Result<()> {
        match self.task.take() {
            Some(task) => task.await.map_err(|e| {
                Error::new(ErrorKind::Closed, "registration task ended abnormally").with_source(e)
            })?,
            None => Ok(()),
        }
    }
}

/// How long a drain keeps serving after its own watch saw the deregistration: watchers
/// elsewhere get a change within milliseconds on etcd and Consul, and on file-system events
/// for a shared file.
pub const DRAIN_SETTLE: Duration = Duration::from_millis(250);

/// Waits until a fresh watch of `source` lists no route with `address`.
async fn gone(source: &dyn RouteSource, address: &Address) -> Result<()> {
    let mut watch = source.watch().await?;
    let mut holding: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut synced = false;
    loop {
        if synced && holding.is_empty() {
            return Ok(());
        }
        let Some(event) = watch.next().await else {
            return Err(Error::new(ErrorKind::Closed, "the watch ended"));
        };
        match event {
            RouteEvent::Synced => synced = true,
            RouteEvent::Created(route) | RouteEvent::Changed(route) => {
                if route.addresses.iter().any(|a| a.same_endpoint(address)) {
                    holding.insert(route.id().to_owned());
                } else {
                    holding.remove(route.id());
                }
            }
            RouteEvent::Removed(route) => {
                holding.remove(route.id());
            }
        }
    }
}

/// First retry delay after a failed renewal; doubles up to the renewal interval.
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// Spread of the renewal interval, so many instances do not renew in lock-step.
const RENEWAL_JITTER: f64 = 0.1;

/// Renewals between two checks that the entries are all there (renewals come at TTL/3, so a
/// missing entry is written back within TTL).
const HEAL_EVERY: u32 = 2;

async fn keep_registered<S: LivenessStore>(
    store: Arc<S>,
    mut instance: Instance,
    ttl: Duration,
    mut lease: S::Lease,
    mut stop: oneshot::Receiver<Stop>,
) -> Result<()> {
    let interval = ttl / 3;
    let mut retry = Backoff::new(FIRST_RETRY, interval);
    let mut delay = jittered(interval, RENEWAL_JITTER);
    let mut renewals: u32 = 0;
    // The load the registry holds for the instance, as far as this task knows.
    let mut published = instance.address.processor_time;
    loop {
        tokio::select! {
            biased;
            signal = &mut stop => {
                // A dropped handle deregisters, like an explicit shutdown.
                if let Ok(Stop::Abandon) = signal {
                    tracing::info!(address = %instance.address, "registration abandoned");
                    return Ok(());
                }
                let routes = instance.routes.len();
                let removal = store.remove_instance(&instance, lease);
                let result = traced(S::BACKEND, "deregister", removal, |_| routes).await;
                match &result {
                    Ok(()) => {
                        note_write();
                        tracing::info!(address = %instance.address, "deregistered")
                    }
                    Err(e) => tracing::warn!(address = %instance.address, error = %e, "deregistration failed"),
                }
                return result;
            }
            _ = tokio::time::sleep(delay) => {}
        }
        let renewal = store.keep_alive(&instance, &lease);
        let outcome = match traced(S::BACKEND, "keep_alive", renewal, |_| 0).await {
            Ok(Liveness::Alive) => {
                renewals = renewals.wrapping_add(1);
                let load = instance.load.as_ref().and_then(|report| {
                    let now = report.read()?;
                    report.worth_publishing(published, now).then_some(now)
                });
                if let Some(now) = load {
                    instance.address.processor_time = Some(now);
                    if publish_load(store.as_ref(), &instance, &lease).await {
                        published = Some(now);
                    }
                }
                // Healing keeps its pace whatever the load does (it also reaps, in the
                // `surging` layout).
                if renewals.is_multiple_of(HEAL_EVERY) {
                    heal(store.as_ref(), &instance, &lease).await;
                }
                Ok(())
            }
            Ok(Liveness::Lost) => {
                tracing::warn!(address = %instance.address, "liveness lost; registering again");
                let routes = instance.routes.len();
                let put = store.put_instance(&instance, ttl);
                traced(S::BACKEND, "register", put, |_| routes)
                    .await
                    .map(|new_lease| {
                        note_write();
                        metrics::registered(S::BACKEND, true);
                        lease = new_lease;
                        published = instance.address.processor_time;
                        tracing::info!(address = %instance.address, "registered again");
                    })
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                retry.reset();
                delay = jittered(interval, RENEWAL_JITTER);
            }
            Err(e) => {
                delay = retry.next_delay();
                tracing::warn!(address = %instance.address, error = %e, retry_in = ?delay, "liveness renewal failed");
            }
        }
    }
}

/// Rewrites every entry of the instance with its new load; returns whether that worked. A
/// failure is logged and the load is offered again at the next renewal.
async fn publish_load<S: LivenessStore>(store: &S, instance: &Instance, lease: &S::Lease) -> bool {
    let rewrite = store.heal(instance, lease, Rewrite::All);
    match traced(S::BACKEND, "publish_load", rewrite, |n| *n).await {
        Ok(written) => {
            if written > 0 {
                note_write();
            }
            tracing::debug!(address = %instance.address, load = ?instance.address.processor_time, entries = written, "published the load");
            true
        }
        Err(err) => {
            tracing::warn!(address = %instance.address, error = %err, "could not publish the load");
            false
        }
    }
}

/// Writes back entries that vanished under a live liveness record. A failed check is logged and
/// tried again at a later renewal; it never counts as a failed renewal.
async fn heal<S: LivenessStore>(store: &S, instance: &Instance, lease: &S::Lease) {
    let rewrite = store.heal(instance, lease, Rewrite::Missing);
    match traced(S::BACKEND, "heal", rewrite, |n| *n).await {
        Ok(0) => {}
        Ok(healed) => {
            note_write();
            tracing::warn!(address = %instance.address, entries = healed, "registry entries had vanished; wrote them again");
        }
        Err(err) => {
            tracing::warn!(address = %instance.address, error = %err, "could not check that the registry entries are all there")
        }
    }
}
