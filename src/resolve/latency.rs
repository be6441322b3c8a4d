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

/// Milliseconds from stamp `at` to stamp `now`; zero when `at` is the later one (a thread that
/// read the clock before another stored a newer sample).
fn elapsed(at: u32, now: u32) -> u32 {
    match now.wrapping_sub(at) {
        ahead if ahead > u32::MAX / 2 => 0,
        elapsed => elapsed,
    }
}

/// The later of two stamps.
fn later(a: u32, b: u32) -> u32 {
    if elapsed(a, b) > 0 {
        b
    } else {
        a
    }
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
                estimate * remaining(elapsed(at, now), decay_ms)
            }
        }
    }

    /// Takes in one call's round-trip time, `sample_us`, completed at `now`: at or above the
    /// decayed estimate it becomes the estimate (the peak); below, the last estimate moves
    /// toward it by the share of `decay_ms` that passed since the last sample (the average), so
    /// a peak fades over `decay_ms` while calls keep coming.
    pub(crate) fn observe(&self, sample_us: f64, now: u32, decay_ms: f64) {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (next, at) = match current {
                0 => (sample_us, now),
                state => {
                    let (estimate, at) = unpack(state);
                    let left = remaining(elapsed(at, now), decay_ms);
                    let next = if sample_us >= estimate * left {
                        sample_us
                    } else {
                        estimate * left + sample_us * (1.0 - left)
                    };
                    (next, later(at, now))
                }
            };
            match self.state.compare_exchange_weak(
                current,
                pack(next, at),
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
        rtt.observe(1_000.0, 100, DECAY);
        rtt.observe(80_000.0, 101, DECAY);
        let now = rtt.estimate_us(101, DECAY, DEFAULT);
        assert!((now - 80_000.0).abs() < 1.0, "{now}");
    }

    #[test]
    fn under_steady_calls_a_peak_fades_over_the_decay() {
        let rtt = RttEstimate::default();
        rtt.observe(80_000.0, 0, DECAY);
        // A 1 ms call every 100 ms for one decay period (10 s).
        for step in 1..=100 {
            rtt.observe(1_000.0, step * 100, DECAY);
        }
        // 80 ms x e^-1 + 1 ms x (1 - e^-1): the peak keeps its share e^-1 after one decay.
        let e = std::f64::consts::E;
        let expected = 80_000.0 / e + 1_000.0 * (1.0 - 1.0 / e);
        let now = rtt.estimate_us(10_000, DECAY, DEFAULT);
        assert!(
            (now - expected).abs() < expected * 0.001,
            "{now} vs {expected}"
        );
    }

    #[test]
    fn a_sample_stamped_before_the_last_one_counts_as_simultaneous() {
        let rtt = RttEstimate::default();
        rtt.observe(20_000.0, 1_000, DECAY);
        // A caller that read the clock before the sample above was stored.
        rtt.observe(5_000.0, 990, DECAY);
        let now = rtt.estimate_us(1_000, DECAY, DEFAULT);
        assert!((now - 20_000.0).abs() < 1.0, "the peak stays: {now}");
        assert!(rtt.estimate_us(990, DECAY, DEFAULT) > 19_000.0);
    }

    #[test]
    fn an_idle_estimate_decays_toward_zero() {
        let rtt = RttEstimate::default();
        rtt.observe(50_000.0, 0, DECAY);
        let later = rtt.estimate_us(10_000, DECAY, DEFAULT);
        assert!(
            (later - 50_000.0 / std::f64::consts::E).abs() < 50.0,
            "{later}"
        );
        assert!(rtt.estimate_us(100_000, DECAY, DEFAULT) < 10.0);
    }
}
