//! Round-trip time estimates per endpoint, as the peak-EWMA selector keeps them (the "peak
//! EWMA" of Finagle and linkerd): a sample above the estimate replaces it at once (the peak);
//! a lower one pulls it down with a weight that grows with the time since the last sample (an
//! exponentially weighted moving average with time constant `decay`); and between samples the
//! estimate decays toward zero, so an address not called for a while is tried again.
//!
//! One atomic word holds the estimate and when it was taken, so reads and updates never lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic milliseconds as stored: the low 32 bits, compared with wrapping arithmetic (an
/// endpoint unsampled for 49 days reads as sampled recently, until its next sample).
pub(crate) fn stamp(monotonic_ms: u64) -> u32 {
    monotonic_ms as u32
}

/// An endpoint's round-trip time estimate; "no sample yet" until its first completed call.
#[derive(Debug, Default)]
pub(crate) struct RttEstimate {
    /// High 32 bits: the estimate in microseconds as `f32` bits; low 32 bits: the [`stamp`] of
    /// its last sample. Zero: no sample yet.
    state: AtomicU64,
}

/// Largest estimate kept, in microseconds (a minute).
const MAX_RTT_US: f64 = 60_000_000.0;

fn pack(estimate_us: f64, at: u32) -> u64 {
    // Never zero: a sampled estimate of 0 µs is kept as the smallest positive f32.
    let estimate = (estimate_us.clamp(0.0, MAX_RTT_US) as f32).max(f32::MIN_POSITIVE);
    (u64::from(estimate.to_bits()) << 32) | u64::from(at)
}

fn unpack(state: u64) -> (f64, u32) {
    (
        f64::from(f32::from_bits((state >> 32) as u32)),
        state as u32,
    )
}

/// How much of a value `elapsed_ms` old is left after decaying with time constant `decay_ms`.
fn remaining(elapsed_ms: u32, decay_ms: f64) -> f64 {
    (-f64::from(elapsed_ms) / decay_ms).exp()
}

impl RttEstimate {
    /// The estimate at `now` (a [`stamp`]) in microseconds: the last one decayed toward zero
    /// since it was taken, or `default_us` before the first sample.
    pub(crate) fn estimate_us(&self, now: u32, decay_ms: f64, default_us: f64) -> f64 {
        match self.state.load(Ordering::Relaxed) {
            0 => default_us,
            state => {
                let (estimate, at) = unpack(state);
                estimate * remaining(now.wrapping_sub(at), decay_ms)
            }
        }
    }

    /// Takes in one call's round-trip time, `sample_us`, completed at `now`: above the decayed
    /// estimate it becomes the estimate; below, the estimate moves toward it by the share of
    /// `decay_ms` that passed since the last sample.
    pub(crate) fn observe(&self, sample_us: f64, now: u32, decay_ms: f64, default_us: f64) {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (prior, weight) = match current {
                0 => (default_us, 0.0),
                state => {
                    let (estimate, at) = unpack(state);
                    let left = remaining(now.wrapping_sub(at), decay_ms);
                    (estimate * left, left)
                }
            };
            let next = if sample_us >= prior {
                sample_us
            } else {
                prior * weight + sample_us * (1.0 - weight)
            };
            match self.state.compare_exchange_weak(
                current,
                pack(next, now),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: f64 = 10_000.0;
    const DEFAULT: f64 = 30_000.0;

    #[test]
    fn unsampled_reads_the_default() {
        let rtt = RttEstimate::default();
        assert_eq!(rtt.estimate_us(5, DECAY, DEFAULT), DEFAULT);
    }

    #[test]
    fn a_peak_replaces_the_estimate_at_once() {
        let rtt = RttEstimate::default();
        rtt.observe(1_000.0, 100, DECAY, DEFAULT);
        rtt.observe(80_000.0, 101, DECAY, DEFAULT);
        let now = rtt.estimate_us(101, DECAY, DEFAULT);
        assert!((now - 80_000.0).abs() < 1.0, "{now}");
    }

    #[test]
    fn lower_samples_pull_it_down_by_elapsed_time() {
        let soon = RttEstimate::default();
        soon.observe(80_000.0, 0, DECAY, DEFAULT);
        soon.observe(1_000.0, 10, DECAY, DEFAULT);
        let late = RttEstimate::default();
        late.observe(80_000.0, 0, DECAY, DEFAULT);
        late.observe(1_000.0, 20_000, DECAY, DEFAULT);
        let (soon, late) = (
            soon.estimate_us(20_000, DECAY, DEFAULT),
            late.estimate_us(20_000, DECAY, DEFAULT),
        );
        // Ten milliseconds into a ten-second decay, the peak still dominates; twenty seconds
        // on, the fast sample does.
        assert!(soon > 5_000.0, "{soon}");
        assert!((1_000.0..15_000.0).contains(&late), "{late}");
    }

    #[test]
    fn an_idle_estimate_decays_toward_zero() {
        let rtt = RttEstimate::default();
        rtt.observe(50_000.0, 0, DECAY, DEFAULT);
        let later = rtt.estimate_us(10_000, DECAY, DEFAULT);
        assert!(
            (later - 50_000.0 / std::f64::consts::E).abs() < 50.0,
            "{later}"
        );
        assert!(rtt.estimate_us(100_000, DECAY, DEFAULT) < 10.0);
    }
}
