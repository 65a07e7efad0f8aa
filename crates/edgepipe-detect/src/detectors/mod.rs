//! The individual streaming detectors. Each one keeps a small, bounded state, is updated with one
//! value at a time (causal: a value is scored against the state *before* it is learned) and
//! returns a [`Signal`]: its surprise in units of its own firing level, so `1.0` means "this
//! detector fires" and values are comparable across detectors.
//!
//! Every state type is `serde`-serialisable; restoring it continues bit-identically.

mod cusum;
mod drift;
mod ewma;
mod flatline;
mod limits;
mod logdrop;
mod mad;
mod pewma;
mod rate;
mod seasonal;
pub(crate) mod stats;

pub(crate) use ewma::{check_non_negative, check_positive, check_unit};

pub use cusum::{Cusum, CusumConfig};
pub use drift::{Drift, DriftConfig, DriftTrend};
pub use ewma::{EwmaZ, EwmaZConfig};
pub use flatline::{Flatline, FlatlineConfig};
pub use limits::{Limits, LimitsConfig};
pub use logdrop::{LogDrop, LogDropConfig};
pub use mad::{MAX_MAD_WINDOW, RobustMad, RobustMadConfig};
pub use pewma::{Pewma, PewmaConfig};
pub use rate::{RateOfChange, RateOfChangeConfig};
pub use seasonal::{MAX_SEASONAL_BUFFER, Seasonal, SeasonalConfig};

/// Largest surprise a detector reports: a million times its firing level is as anomalous as
/// anything gets, and the cap keeps downstream statistics finite.
pub const MAX_LEVEL: f64 = 1e6;

/// One detector's verdict on one value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Signal {
    /// Surprise relative to the detector's firing level: `>= 1.0` means the detector fires.
    /// Always finite, in `[0, MAX_LEVEL]`.
    pub level: f64,
    /// The range of values the detector expected, when it models one.
    pub expected: Option<(f64, f64)>,
}

impl Signal {
    pub(crate) fn new(level: f64, expected: Option<(f64, f64)>) -> Self {
        let level = if level.is_nan() {
            0.0
        } else {
            level.clamp(0.0, MAX_LEVEL)
        };
        Self { level, expected }
    }

    pub(crate) fn quiet() -> Self {
        Self::default()
    }
}

/// Which detector, for explanations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// [`EwmaZ`].
    EwmaZ,
    /// [`Pewma`].
    Pewma,
    /// [`RobustMad`].
    RobustMad,
    /// [`Cusum`].
    Cusum,
    /// [`Flatline`].
    Flatline,
    /// [`RateOfChange`].
    RateOfChange,
    /// [`Limits`].
    Limits,
    /// [`Seasonal`].
    Seasonal,
    /// [`EwmaZ`] of the fast-smoothed series (sustained moderate shifts).
    SmoothZ,
    /// A rise of the recent spread (or spike density) over the baseline's.
    Volatility,
    /// [`LogDrop`].
    LogDrop,
    /// [`Drift`].
    Drift,
}

impl DetectorKind {
    /// All kinds, in bit order of [`Fired`].
    pub const ALL: [DetectorKind; 12] = [
        DetectorKind::EwmaZ,
        DetectorKind::Pewma,
        DetectorKind::RobustMad,
        DetectorKind::Cusum,
        DetectorKind::Flatline,
        DetectorKind::RateOfChange,
        DetectorKind::Limits,
        DetectorKind::Seasonal,
        DetectorKind::SmoothZ,
        DetectorKind::Volatility,
        DetectorKind::LogDrop,
        DetectorKind::Drift,
    ];

    /// A stable lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::EwmaZ => "ewma_z",
            DetectorKind::Pewma => "pewma",
            DetectorKind::RobustMad => "robust_mad",
            DetectorKind::Cusum => "cusum",
            DetectorKind::Flatline => "flatline",
            DetectorKind::RateOfChange => "rate_of_change",
            DetectorKind::Limits => "limits",
            DetectorKind::Seasonal => "seasonal",
            DetectorKind::SmoothZ => "smooth_z",
            DetectorKind::Volatility => "volatility",
            DetectorKind::LogDrop => "log_drop",
            DetectorKind::Drift => "drift",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of detectors (which ones fired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Fired(u16);

impl Fired {
    /// Adds `kind` to the set.
    pub fn insert(&mut self, kind: DetectorKind) {
        self.0 |= kind.bit();
    }
    /// Whether `kind` is in the set.
    pub fn contains(self, kind: DetectorKind) -> bool {
        self.0 & kind.bit() != 0
    }
    /// Whether no detector fired.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The detectors in the set, in [`DetectorKind::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = DetectorKind> {
        DetectorKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}
