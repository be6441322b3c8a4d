//! Slow start (Envoy's `slow_start_config`, Dubbo's warm-up): an address new to a client gets a
//! share of picks that ramps linearly over a window, from a minimum, so a cold instance (empty
//! caches, a JIT still compiling) is not handed a full share at once. The ramp starts at the
//! address's registration time (`Tp`, seconds, when the publisher sets it) or when the client
//! first saw the address; addresses present when the client started ramp only by their `Tp`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;

use super::endpoint::Endpoint;
use crate::clock::now_ms;
use crate::config::duration;
use crate::route::Address;

/// Slow start settings; off by default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlowStartConfig {
    /// How long a new address's share ramps up; zero turns slow start off.
    #[serde(deserialize_with = "duration::deserialize")]
    pub window: Duration,
    /// The share it starts from, in percent of a full share.
    pub min_weight_percent: u32,
}

impl Default for SlowStartConfig {
    fn default() -> Self {
        SlowStartConfig {
            window: Duration::ZERO,
            min_weight_percent: 10,
        }
    }
}

impl SlowStartConfig {
    /// Whether slow start is on.
    pub fn is_on(&self) -> bool {
        !self.window.is_zero()
    }
}

/// When an endpoint's ramp started (ms since the epoch); 0 once it is warm (or never ramped).
#[derive(Debug, Default)]
pub(crate) struct Warmth {
    since_ms: AtomicU64,
}

/// Starts `endpoint`'s ramp if slow start is on: from `address`'s `Tp` when it has one, else
/// from now unless the client is loading its first view.
pub(crate) fn begin(
    config: &SlowStartConfig,
    endpoint: &Endpoint,
    address: &Address,
    initial: bool,
) {
    if !config.is_on() {
        return;
    }
    let now = now_ms();
    let since = match address.timestamp {
        Some(seconds) if seconds > 0 => (seconds as u64).saturating_mul(1000).min(now),
        _ if initial => return,
        _ => now,
    };
    if now.saturating_sub(since) < config.window.as_millis() as u64 {
        endpoint
            .warmth
            .since_ms
            .store(since.max(1), Ordering::Relaxed);
    }
}

/// The endpoint's share now, 0 to 1 (1 once warm; the ramp is then forgotten).
pub(crate) fn weight(config: &SlowStartConfig, endpoint: &Endpoint) -> f64 {
    let since = endpoint.warmth.since_ms.load(Ordering::Relaxed);
    if since == 0 {
        return 1.0;
    }
    let elapsed = now_ms().saturating_sub(since) as f64;
    let window = config.window.as_millis().max(1) as f64;
    if elapsed >= window {
        endpoint.warmth.since_ms.store(0, Ordering::Relaxed);
        return 1.0;
    }
    let floor = f64::from(config.min_weight_percent.min(100)) / 100.0;
    floor.max(elapsed / window)
}
