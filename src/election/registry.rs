//! [`RegistryElection`]: the [`Election`] of a registry, over its backend's [`ElectionStore`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{campaign, observe, validate_name, Election, ElectionStore, Leader, LeaderStream};
use super::{Leadership, StopSignal};
use crate::error::Result;

/// Elections on one backend, with the registry's liveness TTL.
pub(crate) struct RegistryElection<S> {
    store: Arc<S>,
    ttl: Duration,
    backend: &'static str,
}

impl<S> RegistryElection<S> {
    pub(crate) fn new(store: Arc<S>, ttl: Duration, backend: &'static str) -> Self {
        RegistryElection {
            store,
            ttl,
            backend,
        }
    }
}

impl<S> fmt::Debug for RegistryElection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Election")
            .field("backend", &self.backend)
            .field("ttl", &self.ttl)
            .finish()
    }
}

#[async_trait]
impl<S: ElectionStore> Election for RegistryElection<S> {
    async fn campaign(&self, name: &str, value: &str) -> Result<Leadership> {
        let never = std::future::pending::<()>();
        let elected = campaign(self.store.clone(), name, value, self.ttl, never).await?;
        Ok(elected.expect("a campaign that cannot be stopped ends elected"))
    }

    async fn campaign_until(
        &self,
        name: &str,
        value: &str,
        stop: StopSignal,
    ) -> Result<Option<Leadership>> {
        campaign(self.store.clone(), name, value, self.ttl, stop).await
    }

    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        validate_name(name)?;
        self.store.leader(name).await
    }

    fn observe(&self, name: &str) -> LeaderStream {
        observe(self.store.clone(), name)
    }
}
