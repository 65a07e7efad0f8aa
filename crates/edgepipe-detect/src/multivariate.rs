//! Multivariate detection over one device's metrics together: a streaming PCA of the
//! standardised metric vector, scored by Hotelling's T² (an unusual combination *inside* the
//! usual subspace) and the Q statistic / squared prediction error (a vector that leaves the
//! subspace: metrics that usually move together no longer do), each against an approximate
//! 99.99 % quantile. The explanation names the metrics that contribute most.
//!
//! State is bounded by `max_metrics` (at most [`MAX_METRICS`]): per-metric mean and variance,
//! an `m × m` covariance and its eigenvectors, so about 1.3 KiB per device at 8 metrics.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::detectors::stats::{Ewm, learnable};

/// Most metrics of one device that the multivariate model covers (later ones are ignored).
pub const MAX_METRICS: usize = 8;

/// Configuration of the per-device multivariate model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MultivariateConfig {
    /// Whether devices with two or more metrics get a multivariate model.
    pub enabled: bool,
    /// Metrics per device in the model (2..=8); a device's first metrics, in arrival order.
    pub max_metrics: usize,
    /// Weight of each new row in the means, variances and covariance.
    pub alpha: f64,
    /// Rows learned before the model may alarm.
    pub warmup: u32,
    /// Share of the variance the principal subspace keeps (0..1).
    pub variance_kept: f64,
    /// Rows between eigen-decompositions of the covariance.
    pub refit_every: u32,
    /// Level (statistic / its 99.99 % limit) at which a row is anomalous.
    pub threshold: f64,
    /// Rows after an alarm during which the model does not alarm again.
    pub refractory: u32,
}

impl Default for MultivariateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_metrics: MAX_METRICS,
            alpha: 0.01,
            warmup: 200,
            variance_kept: 0.9,
            refit_every: 32,
            // Twice the 99.99 % limit: at 1.0 the simulator's fleet (correlated load and
            // weather factors, rounded sensors) gave ~570 false alarms in 20 device-days
            // (precision 0.62); at 2.0, 3 to 7 (`edgepipe eval sim`, seeds 7, 42, 123, 9).
            threshold: 2.0,
            // Rows: one alarm per incident rather than one every 20 rows while it lasts.
            refractory: 300,
        }
    }
}

impl MultivariateConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        if !(2..=MAX_METRICS).contains(&self.max_metrics) {
            errs.push(Error::InvalidConfig {
                field: "multivariate.max_metrics",
                reason: format!("{} is not in 2..={MAX_METRICS}", self.max_metrics),
            });
        }
        crate::detectors::check_unit(errs, "multivariate.alpha", self.alpha);
        crate::detectors::check_unit(errs, "multivariate.variance_kept", self.variance_kept);
        crate::detectors::check_positive(errs, "multivariate.threshold", self.threshold);
        if self.refit_every == 0 {
            errs.push(Error::InvalidConfig {
                field: "multivariate.refit_every",
                reason: "must be at least 1".into(),
            });
        }
    }
}

/// The verdict on one row of a device's metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct RowVerdict {
    /// max(T² / limit, Q / limit): 1.0 = at the 99.99 % limit.
    pub level: f64,
    /// Whether `level` reached the configured threshold (outside warm-up and refractory).
    pub alarm: bool,
    /// Hotelling's T² in the principal subspace.
    pub t2: f64,
    /// Squared prediction error outside it.
    pub q: f64,
    /// Each metric's share of the statistic that dominated (same order as the row), and its
    /// standardised deviation; empty when `level` is below the threshold.
    pub contributions: Vec<(f64, f64)>,
}

/// Streaming PCA state of one device.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Pca {
    m: usize,
    rows: u64,
    stats: Vec<Ewm>,
    /// Covariance of the standardised vector, row-major `m × m`.
    cov: Vec<f64>,
    /// Eigenvectors (row `i` is component `i`), sorted by decreasing eigenvalue.
    vecs: Vec<f64>,
    vals: Vec<f64>,
    /// Components kept.
    k: usize,
    /// Limits of T² and Q at 99.99 %, worked out at each decomposition.
    limits: (f64, f64),
    refractory: u32,
}

impl Pca {
    /// A model over `m` metrics (clamped to 2..=MAX_METRICS).
    pub fn new(m: usize) -> Self {
        let m = m.clamp(2, MAX_METRICS);
        Self {
            m,
            stats: vec![Ewm::default(); m],
            cov: vec![0.0; m * m],
            ..Self::default()
        }
    }

    /// Metrics covered.
    pub fn metrics(&self) -> usize {
        self.m
    }

    /// Rows learned.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes of heap state.
    pub fn heap_bytes(&self) -> usize {
        self.stats.capacity() * std::mem::size_of::<Ewm>()
            + (self.cov.capacity() + self.vecs.capacity() + self.vals.capacity())
                * std::mem::size_of::<f64>()
    }

    /// Scores a row (one value per metric, in model order), then learns it. A row with a
    /// non-finite or unlearnably large value is neither scored nor learned.
    pub fn update(&mut self, cfg: &MultivariateConfig, row: &[f64]) -> Option<RowVerdict> {
        let m = self.m;
        if row.len() != m || !row.iter().all(|v| learnable(*v)) {
            return None;
        }
        // Fixed-size scratch: no allocation per row.
        let mut zbuf = [0.0f64; MAX_METRICS];
        for ((z, &x), s) in zbuf.iter_mut().zip(row).zip(&self.stats) {
            let sd = s.std().max(1e-9 * (1.0 + s.mean.abs()));
            *z = if s.n < 2 { 0.0 } else { (x - s.mean) / sd };
        }
        let z = &zbuf[..m];
        let verdict = (self.k > 0 && self.vals.len() == m).then(|| self.score(z, cfg.threshold));
        // Learn: the covariance of the standardised vector, then the per-metric statistics.
        let a = cfg.alpha.max(1.0 / (self.rows as f64 + 1.0));
        if self.rows >= 2 {
            let mut zc = [0.0f64; MAX_METRICS];
            for (c, v) in zc.iter_mut().zip(z) {
                *c = v.clamp(-10.0, 10.0);
            }
            for i in 0..m {
                for j in 0..m {
                    let c = &mut self.cov[i * m + j];
                    *c += a * (zc[i] * zc[j] - *c);
                }
            }
        }
        for (s, &x) in self.stats.iter_mut().zip(row) {
            s.update(x, cfg.alpha);
        }
        self.rows = self.rows.saturating_add(1);
        if self.rows >= 8 && self.rows.is_multiple_of(u64::from(cfg.refit_every.max(1))) {
            self.refit(cfg);
        }
        let mut verdict = verdict?;
        let ready = self.rows > u64::from(cfg.warmup);
        if self.refractory > 0 {
            self.refractory -= 1;
        } else if ready && verdict.level >= cfg.threshold {
            verdict.alarm = true;
            self.refractory = cfg.refractory;
        }
        Some(verdict)
    }

    /// Scores the standardised row `z`; contributions are only worked out for a row at or
    /// above `threshold` (the rest never need explaining).
    fn score(&self, z: &[f64], threshold: f64) -> RowVerdict {
        let m = self.m;
        let k = self.k.min(m - 1);
        let mut t2 = 0.0;
        let mut proj = [0.0f64; MAX_METRICS];
        let mut t2_parts = [0.0f64; MAX_METRICS];
        for i in 0..k {
            let u = &self.vecs[i * m..(i + 1) * m];
            let t: f64 = u.iter().zip(z).map(|(a, b)| a * b).sum();
            let lam = self.vals[i].max(1e-6);
            t2 += t * t / lam;
            for j in 0..m {
                proj[j] += t * u[j];
                t2_parts[j] += t / lam * u[j] * z[j];
            }
        }
        let mut resid = [0.0f64; MAX_METRICS];
        for ((r, a), b) in resid.iter_mut().zip(z).zip(&proj) {
            *r = a - b;
        }
        let resid = &resid[..m];
        let q: f64 = resid.iter().map(|r| r * r).sum();
        let (t2_lim, q_lim) = self.limits;
        let (lt, lq) = (t2 / t2_lim, q / q_lim);
        let level = lt.max(lq);
        let level = if level.is_finite() { level } else { 0.0 };
        let contributions = if level >= threshold {
            let parts: Vec<f64> = if lq >= lt {
                resid.iter().map(|r| r * r).collect()
            } else {
                t2_parts[..m].iter().map(|v| v.max(0.0)).collect()
            };
            let total: f64 = parts.iter().sum::<f64>().max(1e-300);
            parts
                .iter()
                .zip(z)
                .map(|(p, zj)| (p / total, *zj))
                .collect()
        } else {
            Vec::new()
        };
        RowVerdict {
            level,
            alarm: false,
            t2,
            q,
            contributions,
        }
    }

    fn refit(&mut self, cfg: &MultivariateConfig) {
        let m = self.m;
        let Some((vals, vecs)) = jacobi_eigen(&self.cov, m) else {
            return;
        };
        let total: f64 = vals.iter().map(|v| v.max(0.0)).sum();
        if !(total > 0.0 && total.is_finite()) {
            return;
        }
        let mut acc = 0.0;
        let mut k = m - 1;
        for (i, v) in vals.iter().enumerate() {
            acc += v.max(0.0);
            if acc >= cfg.variance_kept * total {
                k = (i + 1).min(m - 1);
                break;
            }
        }
        self.vals = vals;
        self.vecs = vecs;
        self.k = k.max(1);
        self.limits = self.limits_now();
    }

    /// The 99.99 % limits of T² and Q for the current decomposition: T² ~ chi²(k); Q ~
    /// g·chi²(h) with g, h matched to the discarded eigenvalues' first two moments (Box's
    /// approximation).
    fn limits_now(&self) -> (f64, f64) {
        let k = self.k.min(self.m - 1);
        let rest = self.vals.get(k..).unwrap_or_default();
        let theta1: f64 = rest.iter().map(|v| v.max(0.0)).sum();
        let theta2: f64 = rest.iter().map(|v| v.max(0.0).powi(2)).sum();
        let floor = 1e-3 * self.m as f64;
        let q_lim = if theta1 > 1e-9 && theta2 > 1e-18 {
            let g = theta2 / theta1;
            let h = theta1 * theta1 / theta2;
            (g * chi2_quantile(h)).max(floor)
        } else {
            floor
        };
        (chi2_quantile(k as f64), q_lim)
    }

    pub(crate) fn valid(&self, cfg: &MultivariateConfig) -> bool {
        let m = self.m;
        (2..=cfg.max_metrics.clamp(2, MAX_METRICS)).contains(&m)
            && self.stats.len() == m
            && self.cov.len() == m * m
            && (self.vals.is_empty() || (self.vals.len() == m && self.vecs.len() == m * m))
            && self.k < m
            && self.limits.0.is_finite()
            && self.limits.1.is_finite()
            && self
                .cov
                .iter()
                .chain(&self.vals)
                .chain(&self.vecs)
                .all(|v| v.is_finite())
            && self
                .stats
                .iter()
                .all(|s| s.mean.is_finite() && s.var.is_finite())
    }
}

/// Approximate 99.99 % quantile of chi² with `k` (possibly fractional) degrees of freedom
/// (Wilson–Hilferty).
fn chi2_quantile(k: f64) -> f64 {
    let k = k.max(0.1);
    let z = 3.719; // standard normal 99.99 %
    let a = 2.0 / (9.0 * k);
    (k * (1.0 - a + z * a.sqrt()).powi(3)).max(1e-6)
}

/// Eigen-decomposition of the symmetric `m × m` matrix `a` (row-major) by cyclic Jacobi
/// rotations: eigenvalues in decreasing order and the matching eigenvectors as rows.
fn jacobi_eigen(a: &[f64], m: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    if a.len() != m * m || !a.iter().all(|v| v.is_finite()) {
        return None;
    }
    let mut a = a.to_vec();
    let mut v = vec![0.0; m * m];
    for i in 0..m {
        v[i * m + i] = 1.0;
    }
    for _sweep in 0..50 {
        let (mut off, mut diag) = (0.0, 0.0);
        for i in 0..m {
            for j in 0..m {
                let v = a[i * m + j] * a[i * m + j];
                if i == j {
                    diag += v;
                } else {
                    off += v;
                }
            }
        }
        // Relative tolerance (off-diagonal entries about 1e-10 of the diagonal); quadratic
        // convergence makes the last sweeps cheap.
        if off <= 1e-20 * diag || off < 1e-300 {
            break;
        }
        for p in 0..m {
            for q in p + 1..m {
                let apq = a[p * m + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * m + q] - a[p * m + p]) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                // Numerical Recipes' rotation; for huge theta, t ≈ 1 / (2 theta).
                let t = if theta.abs() > 1e150 {
                    0.5 / theta
                } else {
                    sign / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..m {
                    let akp = a[k * m + p];
                    let akq = a[k * m + q];
                    a[k * m + p] = c * akp - s * akq;
                    a[k * m + q] = s * akp + c * akq;
                }
                for k in 0..m {
                    let apk = a[p * m + k];
                    let aqk = a[q * m + k];
                    a[p * m + k] = c * apk - s * aqk;
                    a[q * m + k] = s * apk + c * aqk;
                }
                for k in 0..m {
                    let vkp = v[k * m + p];
                    let vkq = v[k * m + q];
                    v[k * m + p] = c * vkp - s * vkq;
                    v[k * m + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| a[j * m + j].total_cmp(&a[i * m + i]));
    let vals: Vec<f64> = order.iter().map(|&i| a[i * m + i]).collect();
    let mut vecs = vec![0.0; m * m];
    for (row, &i) in order.iter().enumerate() {
        for k in 0..m {
            // Column i of v is the eigenvector of eigenvalue a[i][i].
            vecs[row * m + k] = v[k * m + i];
        }
    }
    (vals.iter().chain(&vecs).all(|x| x.is_finite())).then_some((vals, vecs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalises() {
        let a = [4.0, 1.0, 0.0, 1.0, 3.0, 0.5, 0.0, 0.5, 1.0];
        let (vals, vecs) = jacobi_eigen(&a, 3).expect("eigen");
        assert!(vals[0] >= vals[1] && vals[1] >= vals[2]);
        for i in 0..3 {
            let u = &vecs[i * 3..i * 3 + 3];
            // A u = λ u
            for r in 0..3 {
                let au: f64 = (0..3).map(|c| a[r * 3 + c] * u[c]).sum();
                assert!(
                    (au - vals[i] * u[r]).abs() < 1e-9,
                    "{au} vs {}",
                    vals[i] * u[r]
                );
            }
        }
    }

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }

    #[test]
    fn broken_correlation_alarms_and_names_the_metric() {
        let cfg = MultivariateConfig::default();
        let mut pca = Pca::new(3);
        let mut seed = 5;
        let mut alarms_before = 0;
        for i in 0..3000 {
            let load = (i as f64 / 30.0).sin() * 10.0 + lcg(&mut seed);
            // temperature follows load, current follows load; all three move together.
            let row = [
                load,
                20.0 + 0.5 * load + 0.2 * lcg(&mut seed),
                2.0 * load + 0.3 * lcg(&mut seed),
            ];
            if pca.update(&cfg, &row).is_some_and(|v| v.alarm) {
                alarms_before += 1;
            }
        }
        assert!(alarms_before <= 3, "{alarms_before} false alarms");
        // Each value is within its usual range, but temperature no longer follows load.
        let load = 8.0;
        let v = pca
            .update(&cfg, &[load, 20.0 - 0.5 * load, 2.0 * load])
            .expect("verdict");
        assert!(v.alarm, "{v:?}");
        let top = v
            .contributions
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
            .map(|(i, _)| i);
        assert_eq!(top, Some(1), "{v:?}");
    }

    #[test]
    fn non_finite_rows_are_skipped() {
        let cfg = MultivariateConfig::default();
        let mut pca = Pca::new(2);
        assert!(pca.update(&cfg, &[f64::NAN, 1.0]).is_none());
        assert!(pca.update(&cfg, &[1.0]).is_none());
        assert_eq!(pca.rows(), 0);
        assert!(pca.valid(&cfg));
    }
}
