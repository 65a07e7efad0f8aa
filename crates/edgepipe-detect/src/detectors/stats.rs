//! Small numeric helpers shared by the detectors.

use serde::{Deserialize, Serialize};

/// Largest magnitude a detector learns from; beyond it squares would overflow. Larger values
/// are scored but not learned.
pub(crate) const MAX_LEARNABLE: f64 = 1e100;

/// Whether a value can safely enter a detector's state.
pub(crate) fn learnable(x: f64) -> bool {
    x.is_finite() && x.abs() <= MAX_LEARNABLE
}

/// An exponentially weighted mean and variance whose weight starts as a running average
/// (`1/n`) and settles at `alpha`, so early values are not over-weighted by an arbitrary start.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub(crate) struct Ewm {
    pub(crate) n: u64,
    pub(crate) mean: f64,
    pub(crate) var: f64,
}

impl Ewm {
    pub(crate) fn update(&mut self, x: f64, alpha: f64) {
        self.n = self.n.saturating_add(1);
        let a = alpha.max(1.0 / self.n as f64);
        let d = x - self.mean;
        self.mean += a * d;
        // West's incremental form keeps the variance non-negative.
        self.var = (1.0 - a) * (self.var + a * d * d);
    }

    pub(crate) fn std(&self) -> f64 {
        self.var.max(0.0).sqrt()
    }
}

/// The standard normal upper tail `Q(z) = P(Z > z)` in natural log, accurate to about 1e-7
/// relative in `Q` and finite for every finite `z` (no underflow for large `z`).
pub(crate) fn ln_normal_tail(z: f64) -> f64 {
    // ln(erfc(x)/2) with x = z/√2, using the Chebyshev-fitted form of erfc from Numerical
    // Recipes (fractional error < 1.2e-7), kept in log space.
    let x = z / std::f64::consts::SQRT_2;
    let ax = x.abs();
    let t = 1.0 / (1.0 + 0.5 * ax);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let ln_erfc_abs = t.ln() - ax * ax + poly;
    if x >= 0.0 {
        ln_erfc_abs - std::f64::consts::LN_2
    } else {
        // erfc(-a) = 2 - erfc(a)
        (1.0 - 0.5 * ln_erfc_abs.exp()).ln()
    }
}

/// A fixed-capacity ring of the most recent values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(crate) struct Ring {
    pub(crate) buf: Vec<f64>,
    pub(crate) next: usize,
}

impl Ring {
    pub(crate) fn push(&mut self, x: f64, cap: usize) {
        if cap == 0 {
            return;
        }
        if self.buf.len() < cap {
            self.buf.push(x);
            self.next = self.buf.len() % cap;
        } else if let Some(slot) = self.buf.get_mut(self.next) {
            *slot = x;
            self.next = (self.next + 1) % cap;
        } else {
            self.next = 0;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.buf.capacity() * std::mem::size_of::<f64>()
    }

    /// Whether a restored ring respects `cap`.
    pub(crate) fn valid(&self, cap: usize) -> bool {
        self.buf.len() <= cap && (self.next < cap.max(1)) && self.buf.iter().all(|v| v.is_finite())
    }
}

/// Median of `v` (reorders it). `v` must not be empty.
pub(crate) fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    let mid = n / 2;
    let (lo, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if n % 2 == 1 {
        m
    } else {
        let below = lo.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (below + m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tail_is_accurate() {
        // Q(0) = 0.5, Q(1.96) ≈ 0.025, Q(-1.96) ≈ 0.975
        assert!((ln_normal_tail(0.0).exp() - 0.5).abs() < 1e-6);
        assert!((ln_normal_tail(1.959_964).exp() - 0.025).abs() < 1e-6);
        assert!((ln_normal_tail(-1.959_964).exp() - 0.975).abs() < 1e-6);
        // Far tail stays finite: ln Q(40) ≈ -804.6
        let l = ln_normal_tail(40.0);
        assert!(l.is_finite() && (l + 804.6).abs() < 1.0, "{l}");
    }

    #[test]
    fn ewm_starts_as_running_mean() {
        let mut e = Ewm::default();
        for x in [1.0, 2.0, 3.0] {
            e.update(x, 0.01);
        }
        assert!((e.mean - 2.0).abs() < 1e-12);
    }

    #[test]
    fn ring_and_median() {
        let mut r = Ring::default();
        for x in 0..10 {
            r.push(f64::from(x), 4);
        }
        let mut v = r.buf.clone();
        v.sort_by(f64::total_cmp);
        assert_eq!(v, vec![6.0, 7.0, 8.0, 9.0]);
        assert_eq!(median_in_place(&mut r.buf.clone()), 7.5);
        assert_eq!(median_in_place(&mut [3.0, 1.0, 2.0]), 2.0);
    }
}
