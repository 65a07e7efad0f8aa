//! The validation rules every decoder applies (JSON, the fast JSON path, line protocol, topic
//! mappings, the batch envelope): timestamps within [`Limits`], string lengths, finite floats,
//! valid metric names, and no key named twice. A leaf: it uses neither decoder.

use edgepipe_types::Metric;

use crate::{Error, Limits, Result};

/// The smallest (in byte order) key of `items` that occurs more than once, if any. Small
/// objects (the usual reading object and its metrics) are checked pairwise without allocating;
/// larger ones by sorting their keys.
pub(crate) fn smallest_duplicate<'f, T>(
    items: &'f [T],
    key: impl Fn(&'f T) -> &'f str,
) -> Option<&'f str> {
    const PAIRWISE_MAX: usize = 16;
    if items.len() <= PAIRWISE_MAX {
        let mut found: Option<&str> = None;
        for (i, a) in items.iter().enumerate() {
            let a = key(a);
            if items[i + 1..].iter().any(|b| key(b) == a) && found.is_none_or(|f| a < f) {
                found = Some(a);
            }
        }
        return found;
    }
    let mut keys: Vec<&str> = items.iter().map(key).collect();
    keys.sort_unstable();
    keys.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// Checks a timestamp against the limits.
pub(crate) fn check_ts(ts: i64, now_ms: i64, limits: &Limits) -> Result<()> {
    if ts > now_ms.saturating_add(limits.max_future_skew_ms) {
        return Err(Error::TsInFuture {
            ts,
            now_ms,
            ahead_ms: ts.saturating_sub(now_ms),
            limit_ms: limits.max_future_skew_ms,
        });
    }
    if ts < limits.min_ts_ms {
        return Err(Error::TsTooOld {
            ts,
            min_ts_ms: limits.min_ts_ms,
        });
    }
    Ok(())
}

/// Checks a string value against `max_string_len`.
pub(crate) fn check_str(what: impl FnOnce() -> String, s: &str, limits: &Limits) -> Result<()> {
    if s.len() > limits.max_string_len {
        return Err(Error::StringTooLong {
            what: what(),
            len: s.len(),
            limit: limits.max_string_len,
        });
    }
    Ok(())
}

/// Checks that a float is finite.
pub(crate) fn check_finite(metric: &str, v: f64) -> Result<f64> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::NonFinite {
            metric: metric.to_owned(),
            value: v.to_string(),
        })
    }
}

/// Validates a metric name.
pub(crate) fn metric(name: &str) -> Result<Metric> {
    Metric::new(name).map_err(Error::InvalidMetric)
}
