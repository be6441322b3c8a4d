//! Leader election among instances, through the registry they already share: one instance of a
//! cluster runs the scheduled job, one consumes the queue.
//!
//! [`Election::campaign`] waits until this process leads and gives a [`Leadership`]: a fencing
//! token (etcd: the leader key's create revision; Consul: the lock index; file: a counter), that
//! strictly increases from one leader to the next, and [`Leadership::lost`], which fires when the
//! leadership cannot be held. A leader whose liveness (lease, session, heartbeat) cannot be
//! renewed gives it up at two thirds of its TTL after its last renewal went out, before the
//! registry can let it lapse and elect someone else: two leaders never act at once, as long as
//! each stops acting when `lost()` fires. [`Election::observe`] follows who leads.
//!
//! Get one from a registry with [`crate::RouteManager::election`] (etcd, Consul and the file
//! backend); its liveness TTL is the registry's (`ttl` option).

// Without a backend that holds elections, the machinery has no user.
#![cfg_attr(
    not(any(feature = "etcd", feature = "consul", feature = "file")),
    allow(dead_code, unused_imports)
)]

mod registry;
mod tenure;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use futures_core::Stream;
use tokio::sync::watch;

use crate::error::{Error, Result};

pub(crate) use registry::RegistryElection;
pub(crate) use tenure::{campaign, observe, ElectionStore, Tenure};

/// The current leader of an election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The value it campaigned with (an address, a host name: whatever the campaigners agree).
    pub value: String,
    /// Its fencing token.
    pub token: u64,
}

/// What ends an [`Election::campaign_until`]: a shutdown signal, say.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The leaders of one election as they change: the current one first (`None`: nobody leads).
pub type LeaderStream = Pin<Box<dyn Stream<Item = Result<Option<Leader>>> + Send>>;

/// Leader election on a registry (see the module docs).
#[async_trait]
pub trait Election: Send + Sync + fmt::Debug {
    /// Waits until this process leads election `name`, then holds it (renewing its liveness)
    /// until [`Leadership::resign`] or the leadership is lost. `value` is what observers see.
    async fn campaign(&self, name: &str, value: &str) -> Result<Leadership>;

    /// Like [`Election::campaign`], but gives up when `stop` completes first: the candidacy is
    /// withdrawn and its liveness released before this returns `Ok(None)` (so nothing is left
    /// to lapse, even if the process exits right after).
    async fn campaign_until(
        &self,
        name: &str,
        value: &str,
        stop: StopSignal,
    ) -> Result<Option<Leadership>>;

    /// The current leader of `name`, if any.
    async fn leader(&self, name: &str) -> Result<Option<Leader>>;

    /// The leaders of `name` as they change, the current one first.
    fn observe(&self, name: &str) -> LeaderStream;
}

/// Checks an election name: letters, digits, `.`, `_` and `-`, 1 to 128 of them, not dots alone.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let only_dots = name.chars().all(|c| c == '.');
    if name.is_empty() || name.len() > 128 || !name.chars().all(fine) || only_dots {
        return Err(Error::invalid_input(format!(
            "election name {name:?} must be 1-128 letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(())
}

/// Leading an election. Keep it for as long as the process acts as the leader, and stop acting
/// when [`Leadership::lost`] fires. Dropping it resigns in the background.
#[must_use = "dropping a leadership resigns it"]
pub struct Leadership {
    name: String,
    value: String,
    token: u64,
    lost: watch::Receiver<bool>,
    tenure: Option<Box<dyn Tenure>>,
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("name", &self.name)
            .field("value", &self.value)
            .field("token", &self.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Leadership {
    pub(crate) fn new(
        name: String,
        value: String,
        token: u64,
        lost: watch::Receiver<bool>,
        tenure: Box<dyn Tenure>,
    ) -> Self {
        Leadership {
            name,
            value,
            token,
            lost,
            tenure: Some(tenure),
        }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value this leader campaigned with.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The fencing token: greater than every earlier leader's of this election. Pass it to
    /// the resources the leader writes, so they can refuse a deposed leader's late writes.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Whether the leadership is lost already.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Fires when the leadership is lost: its liveness could not be renewed in time (it fires
    /// before the registry could let it lapse), or the registry no longer holds it.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            let _ = lost.wait_for(|lost| *lost).await;
        }
    }

    /// Gives the leadership up now, so the next campaigner is elected at once.
    pub async fn resign(mut self) -> Result<()> {
        match self.tenure.take() {
            Some(tenure) => tenure.end().await,
            None => Ok(()),
        }
    }
}
