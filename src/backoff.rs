//! Retry pacing, written once for every reconnecting loop: the backends' watch readers, the
//! registration's heartbeat and the resolver's start from a snapshot.
//!
//! Delays grow exponentially from `first` to `max`, each spread by a jitter so that many clients
//! that failed together do not retry together (capped exponential backoff with jitter, as in
//! linkerd's `exp-backoff` and object_store's `client/backoff.rs`).

use std::time::Duration;

/// Default first delay of a reconnecting reader.
pub(crate) const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// Default longest delay of a reconnecting reader.
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Delays from `first`, doubling up to `max`.
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        let first = first.min(max);
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The delays a reconnecting reader uses: 100 ms doubling to 5 s.
    pub(crate) fn reconnect() -> Self {
        Self::new(RECONNECT_FIRST, RECONNECT_MAX)
    }

    /// The delay before the next attempt (spread by +-20%); the one after it doubles.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        jittered(delay, 0.2)
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Starts again from `first` after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// `base` spread by up to `spread` either way (0.1 = +-10%).
pub(crate) fn jittered(base: Duration, spread: f64) -> Duration {
    let spread = if spread.is_finite() {
        spread.clamp(0.0, 1.0)
    } else {
        0.0
    };
    base.mul_f64(1.0 - spread + 2.0 * spread * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_their_jitter_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let expected = [100, 200, 400, 400];
        for ms in expected {
            let delay = backoff.next_delay().as_secs_f64() * 1000.0;
            let base = ms as f64;
            assert!(
                delay >= base * 0.8 - 1e-6 && delay <= base * 1.2 + 1e-6,
                "{delay} ms is not within 20% of {base} ms"
            );
        }
        backoff.reset();
        let delay = backoff.next_delay();
        assert!(delay <= Duration::from_millis(120), "{delay:?}");
    }

    #[test]
    fn jitter_stays_in_range_and_ignores_nonsense() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(1), 0.1);
            assert!(d >= Duration::from_millis(900) && d <= Duration::from_millis(1100));
        }
        assert_eq!(
            jittered(Duration::from_secs(1), f64::NAN),
            Duration::from_secs(1)
        );
    }
}
