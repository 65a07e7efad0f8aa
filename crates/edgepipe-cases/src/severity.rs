//! Severity from score, duration, breadth and per-metric criticality.

use std::collections::BTreeMap;

use crate::model::{Category, Millis, Severity};

/// The severity of a case with these aggregates.
///
/// - score (the detector's calibrated anomaly score in [0, 1]): ≥ 0.9 → medium, ≥ 0.7 → low,
///   below → info;
/// - duration (first to last event time): ≥ 5 min +1, ≥ 1 h +2;
/// - breadth: ≥ 2 metrics +1, ≥ 4 metrics +2 (capped at +2 together with duration);
/// - the highest configured criticality among the metrics, −1..+2;
/// - silence and gaps start at medium, pipeline cases at high (the pipeline itself is at risk).
pub fn severity_of(
    category: Category,
    max_score: f64,
    first_ts: Millis,
    last_ts: Millis,
    metrics: &[String],
    criticality: &BTreeMap<String, i64>,
) -> Severity {
    let base: i64 = match category {
        Category::Silence | Category::Gap => 3,
        Category::Pipeline => 4,
        Category::Anomaly if max_score >= 0.9 => 3,
        Category::Anomaly if max_score >= 0.7 => 2,
        Category::Anomaly => 1,
    };
    let dur = last_ts.saturating_sub(first_ts);
    let duration: i64 = if dur >= 3_600_000 {
        2
    } else if dur >= 300_000 {
        1
    } else {
        0
    };
    let breadth: i64 = match metrics.len() {
        0 | 1 => 0,
        2 | 3 => 1,
        _ => 2,
    };
    let crit = metrics
        .iter()
        .filter_map(|m| criticality.get(m).copied())
        .max()
        .unwrap_or(0)
        .clamp(-1, 2);
    Severity::from_level(base + (duration + breadth).min(2) + crit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn grows_with_score_duration_breadth_and_criticality() {
        let none = BTreeMap::new();
        let a = Category::Anomaly;
        let t = m(&["t"]);
        assert_eq!(severity_of(a, 0.6, 0, 0, &t, &none), Severity::Info);
        assert_eq!(severity_of(a, 0.8, 0, 0, &t, &none), Severity::Low);
        assert_eq!(severity_of(a, 0.95, 0, 0, &t, &none), Severity::Medium);
        assert_eq!(severity_of(a, 0.95, 0, 600_000, &t, &none), Severity::High);
        let four = m(&["a", "b", "c", "d"]);
        assert_eq!(
            severity_of(a, 0.95, 0, 7_200_000, &four, &none),
            Severity::Critical
        );
        let crit = BTreeMap::from([("p".to_owned(), 2), ("h".to_owned(), -1)]);
        assert_eq!(severity_of(a, 0.8, 0, 0, &m(&["p"]), &crit), Severity::High);
        assert_eq!(severity_of(a, 0.8, 0, 0, &m(&["h"]), &crit), Severity::Info);
        assert_eq!(
            severity_of(Category::Pipeline, 0.0, 0, 0, &[], &none),
            Severity::High
        );
    }
}
