//! Values shared by every instance of a service id, written once for the key-value backends
//! (etcd, Consul): the compare-and-swap primitives each backend provides ([`SharedStore`]), the
//! edit loop that retries on conflict ([`edit`]), the `surging` layout's registration
//! ([`SurgingLayout`]) and the reaper of addresses whose instance died ([`reaper`]).
//!
//! In the `surging` layout one value per service id sits at `<prefix><service-id>` and holds
//! every instance's address, as Surging itself keeps it. Liveness lives beside the prefix, since
//! Surging takes every value under the prefix for a route:
//!
//! | key | bound to liveness | what it says |
//! |---|---|---|
//! | `<prefix>-live/<instance-id>` | yes | the instance runs |
//! | `<prefix>-owned/<instance-id>` | no | wayfinder wrote this instance's address into shared values |
//! | `<prefix>-removed/<instance-id>` | yes | a deregistration took the instance out: do not heal it |
//!
//! An owned instance without a live key is dead: the reaper takes its address out of every
//! shared value. Addresses without an owned key (written by Surging) are never reaped.

pub(crate) mod edit;
pub(crate) mod reaper;
mod surging;

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::manager::Instance;
use crate::registration::Liveness;
use crate::route::KeyLayout;

pub(crate) use surging::{clear_beside, remove_from_shared, SurgingLayout};

/// A key's value and the version a compare-and-swap names (Consul's ModifyIndex, etcd's
/// mod_revision).
#[derive(Debug, Clone)]
pub(crate) struct Versioned {
    pub(crate) value: Vec<u8>,
    pub(crate) version: u64,
    /// The liveness record the key is bound to (etcd lease id, Consul session id), if any.
    pub(crate) holder: Option<String>,
}

/// One conditional write. A version of `Some(0)` means "the key must not exist"; `None` writes
/// whatever is there.
#[derive(Debug, Clone)]
pub(crate) enum Write {
    /// Sets a key's value (no liveness).
    Put {
        key: String,
        value: Vec<u8>,
        version: Option<u64>,
    },
    /// Deletes a key.
    Delete { key: String, version: Option<u64> },
}

/// What a key-value backend provides for shared values and the `surging` layout.
#[async_trait]
pub(crate) trait SharedStore: Send + Sync + 'static {
    /// One registration's liveness (etcd lease, Consul session).
    type Lease: Send + Sync + 'static;

    /// The backend's name, for traces.
    const BACKEND: &'static str;

    /// Most writes in one conditional request (with one more condition beside them).
    const MAX_WRITES: usize;

    /// The key layout.
    fn layout(&self) -> &KeyLayout;

    /// A fresh liveness record that lapses `ttl` after its last renewal.
    async fn grant(&self, instance: &Instance, ttl: Duration) -> Result<Self::Lease>;

    /// Renews a liveness record.
    async fn renew(&self, lease: &Self::Lease) -> Result<Liveness>;

    /// Ends a liveness record; the keys bound to it go with it.
    async fn revoke(&self, lease: Self::Lease) -> Result<()>;

    /// The name of a liveness record, as [`Versioned::holder`] gives it.
    fn holder(lease: &Self::Lease) -> String;

    /// Writes `key` (an empty value) bound to the liveness record `holder` names.
    async fn put_bound(&self, key: &str, holder: &str) -> Result<()>;

    /// The values of `keys` now, in order (`None` for a missing key).
    async fn read(&self, keys: &[String]) -> Result<Vec<Option<Versioned>>>;

    /// Every key under `prefix` with its value.
    async fn read_prefix(&self, prefix: &str) -> Result<Vec<(String, Versioned)>>;

    /// Applies every write, or none: `false` when a key is no longer at its version or
    /// `absent` exists.
    async fn write_if(&self, writes: &[Write], absent: Option<&str>) -> Result<bool>;
}
