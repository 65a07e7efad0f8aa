//! `edgepipe eval csv`: any labelled CSV through the live [`Detector`] a server runs, one
//! series per value column of one device, in row order.
//!
//! The file has a header row, a timestamp column (`YYYY-MM-DD HH:MM:SS[.f]`, RFC 3339 without
//! offset, or integer milliseconds since the epoch), one or more numeric value columns and
//! optionally a label column (`1`/`true` = anomalous; contiguous labelled rows form one
//! window). Windows may instead come from a JSON file of `[start, end]` timestamp pairs. Empty
//! or non-numeric value cells are skipped (the series simply has no reading at that row).
//!
//! Reported: point-wise precision, recall and F1 (a row is predicted anomalous when any of its
//! readings reached its series' threshold), window detection (a window is detected when an
//! event fires inside it; the delay is from the window's start to the first such event), false
//! alarms (events outside every window) and their rate per day of data.

use std::path::{Path, PathBuf};

use edgepipe_types::{DeviceId, Metric};
use serde::Serialize;

use crate::nab::parse_timestamp;
use crate::{Detector, Error, Result, SeriesKey};
use edgepipe_types::TimestampMs;

/// A labelled CSV, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvData {
    /// Row timestamps (ms since the epoch), in file order.
    pub timestamps: Vec<TimestampMs>,
    /// Value columns: name and one value per row (`None` where the cell was empty or not a
    /// number).
    pub columns: Vec<(String, Vec<Option<f64>>)>,
    /// Anomaly windows as inclusive row ranges, in order.
    pub windows: Vec<(usize, usize)>,
}

impl CsvData {
    /// Per row: inside an anomaly window.
    pub fn labelled_rows(&self) -> Vec<bool> {
        let mut labelled = vec![false; self.timestamps.len()];
        for &(a, b) in &self.windows {
            labelled[a..=b].iter_mut().for_each(|l| *l = true);
        }
        labelled
    }
}

/// How to read the file.
#[derive(Debug, Clone, Default)]
pub struct CsvOptions {
    /// Timestamp column (default `timestamp`).
    pub timestamp_column: Option<String>,
    /// Label column (default `label` when the file has one).
    pub label_column: Option<String>,
    /// Value columns (default: every other column).
    pub value_columns: Option<Vec<String>>,
    /// A JSON file of `[start, end]` timestamp pairs, instead of a label column.
    pub windows_file: Option<PathBuf>,
}

fn csv_err(path: &Path, line: usize, reason: impl Into<String>) -> Error {
    Error::Csv {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// A timestamp cell: a date-time as NAB writes it, or integer epoch milliseconds.
fn parse_ts(s: &str) -> Option<TimestampMs> {
    let s = s.trim().trim_matches('"');
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    parse_timestamp(s.trim_end_matches('Z'))
}

fn is_label(s: &str) -> Option<bool> {
    match s.trim().trim_matches('"').to_ascii_lowercase().as_str() {
        "1" | "1.0" | "true" | "yes" | "anomaly" => Some(true),
        "0" | "0.0" | "false" | "no" | "normal" | "" => Some(false),
        _ => None,
    }
}

/// Reads `path` as `opts` says; every malformed row is an error naming its line.
pub fn read_csv(path: &Path, opts: &CsvOptions) -> Result<CsvData> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .ok_or_else(|| csv_err(path, 1, "empty file: a header row is needed"))?;
    let names: Vec<String> = header
        .split(',')
        .map(|h| h.trim().trim_matches('"').to_owned())
        .collect();
    let find = |name: &str| names.iter().position(|n| n == name);
    let ts_name = opts.timestamp_column.as_deref().unwrap_or("timestamp");
    let ts_col = find(ts_name).ok_or_else(|| {
        csv_err(
            path,
            1,
            format!("no timestamp column {ts_name:?} in {names:?}"),
        )
    })?;
    let label_col = match &opts.label_column {
        Some(l) => Some(
            find(l)
                .ok_or_else(|| csv_err(path, 1, format!("no label column {l:?} in {names:?}")))?,
        ),
        None => find("label"),
    };
    let value_cols: Vec<usize> = match &opts.value_columns {
        Some(cols) => cols
            .iter()
            .map(|c| {
                find(c)
                    .ok_or_else(|| csv_err(path, 1, format!("no value column {c:?} in {names:?}")))
            })
            .collect::<Result<_>>()?,
        None => (0..names.len())
            .filter(|&i| i != ts_col && Some(i) != label_col)
            .collect(),
    };
    if value_cols.is_empty() {
        return Err(csv_err(path, 1, "no value column"));
    }
    let mut timestamps = Vec::new();
    let mut columns: Vec<(String, Vec<Option<f64>>)> = value_cols
        .iter()
        .map(|&i| (names[i].clone(), Vec::new()))
        .collect();
    let mut labels = Vec::new();
    for (n, line) in lines {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != names.len() {
            return Err(csv_err(
                path,
                n + 1,
                format!("{} cells, the header has {}", cells.len(), names.len()),
            ));
        }
        let ts = parse_ts(cells[ts_col])
            .ok_or_else(|| csv_err(path, n + 1, format!("bad timestamp {:?}", cells[ts_col])))?;
        if timestamps.last().is_some_and(|&last| ts < last) {
            return Err(csv_err(path, n + 1, "timestamps go backwards"));
        }
        timestamps.push(ts);
        for (k, &i) in value_cols.iter().enumerate() {
            let v = cells[i].trim().trim_matches('"').parse::<f64>().ok();
            columns[k].1.push(v.filter(|v| v.is_finite()));
        }
        if let Some(l) = label_col {
            labels.push(
                is_label(cells[l])
                    .ok_or_else(|| csv_err(path, n + 1, format!("bad label {:?}", cells[l])))?,
            );
        }
    }
    if timestamps.is_empty() {
        return Err(csv_err(path, 2, "no data rows"));
    }
    let windows = match &opts.windows_file {
        Some(w) => windows_from_file(w, &timestamps)?,
        None => windows_from_labels(&labels),
    };
    Ok(CsvData {
        timestamps,
        columns,
        windows,
    })
}

/// Contiguous runs of labelled rows.
fn windows_from_labels(labels: &[bool]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &l) in labels.iter().enumerate() {
        match (l, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, i - 1));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, labels.len() - 1));
    }
    out
}

/// `[[start, end], ...]` (timestamps as in the data) mapped to the rows they cover.
fn windows_from_file(path: &Path, timestamps: &[TimestampMs]) -> Result<Vec<(usize, usize)>> {
    let bad = |reason: String| Error::Labels {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let pairs: Vec<(serde_json::Value, serde_json::Value)> =
        serde_json::from_str(&text).map_err(|e| bad(format!("not [[start, end], ...]: {e}")))?;
    let ts_of = |v: &serde_json::Value| -> Result<TimestampMs> {
        match v {
            serde_json::Value::Number(n) => n.as_i64().ok_or_else(|| bad(format!("{n} is not ms"))),
            serde_json::Value::String(s) => {
                parse_ts(s).ok_or_else(|| bad(format!("bad timestamp {s:?}")))
            }
            other => Err(bad(format!("{other} is not a timestamp"))),
        }
    };
    let mut out = Vec::new();
    for (a, b) in &pairs {
        let (a, b) = (ts_of(a)?, ts_of(b)?);
        let first = timestamps.partition_point(|&t| t < a);
        let last = timestamps.partition_point(|&t| t <= b);
        if first < last {
            out.push((first, last - 1));
        }
    }
    Ok(out)
}

/// What the detector did with the file: per row, the highest score of its readings and
/// whether any reached its threshold; every event with the row it fired on.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRun {
    /// Highest score of the row's readings (0 when none was scored).
    pub scores: Vec<f64>,
    /// Some reading of the row reached its series' threshold.
    pub anomalous: Vec<bool>,
    /// Rows on which an event (series or device) fired.
    pub event_rows: Vec<usize>,
    /// Rows on which a single series' event (the univariate ensemble) fired.
    pub series_event_rows: Vec<usize>,
    /// Rows on which a device event (the multivariate model) fired.
    pub device_event_rows: Vec<usize>,
}

/// Scores every reading of `data` in row order as device `device`, one series per column.
pub fn run(detector: &mut Detector, data: &CsvData, device: &DeviceId) -> Result<CsvRun> {
    let keys: Vec<SeriesKey> = data
        .columns
        .iter()
        .map(|(name, _)| {
            let metric = Metric::new(name.clone())
                .map_err(|e| Error::Params(format!("column {name:?} is no metric name: {e}")))?;
            Ok(SeriesKey::new(device.clone(), metric))
        })
        .collect::<Result<_>>()?;
    let n = data.timestamps.len();
    let mut out = CsvRun {
        scores: vec![0.0; n],
        anomalous: vec![false; n],
        event_rows: Vec::new(),
        series_event_rows: Vec::new(),
        device_event_rows: Vec::new(),
    };
    for (row, &ts) in data.timestamps.iter().enumerate() {
        let (mut series, mut device) = (false, false);
        for (key, (_, values)) in keys.iter().zip(&data.columns) {
            let Some(v) = values[row] else { continue };
            let s = detector.score(key, ts, v);
            out.scores[row] = out.scores[row].max(s.score);
            out.anomalous[row] |= s.anomalous;
            series |= s.event.is_some();
            device |= s.device_event.is_some();
        }
        if series || device {
            out.event_rows.push(row);
        }
        if series {
            out.series_event_rows.push(row);
        }
        if device {
            out.device_event_rows.push(row);
        }
    }
    Ok(out)
}

/// The scores of one run against the file's windows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CsvReport {
    /// Data rows.
    pub rows: usize,
    /// Value columns (series).
    pub columns: usize,
    /// Rows predicted anomalous and labelled anomalous.
    pub true_positives: usize,
    /// Rows predicted anomalous outside every window.
    pub false_positives: usize,
    /// Labelled rows not predicted.
    pub false_negatives: usize,
    /// Point-wise precision (`None` with no prediction).
    pub precision: Option<f64>,
    /// Point-wise recall (`None` with no labelled row).
    pub recall: Option<f64>,
    /// Point-wise F1.
    pub f1: Option<f64>,
    /// Anomaly windows.
    pub windows: usize,
    /// Windows with an event inside.
    pub windows_detected: usize,
    /// Median delay from a detected window's start to its first event, ms.
    pub median_delay_ms: Option<i64>,
    /// Events outside every window.
    pub false_alarms: usize,
    /// False alarms per day of data.
    pub false_alarms_per_day: Option<f64>,
    /// The same window and false-alarm counts for the single-series ensemble's events alone.
    pub univariate: ModelReport,
    /// ... and for the per-device multivariate model's events alone.
    pub multivariate: ModelReport,
}

/// Windows found and false alarms of one kind of event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelReport {
    /// Windows with such an event inside.
    pub windows_detected: usize,
    /// Median delay from a detected window's start to its first such event, ms.
    pub median_delay_ms: Option<i64>,
    /// Such events outside every window.
    pub false_alarms: usize,
}

fn model_report(data: &CsvData, labelled: &[bool], rows: &[usize]) -> ModelReport {
    let mut delays = Vec::new();
    for &(a, b) in &data.windows {
        if let Some(&row) = rows.iter().find(|&&r| r >= a && r <= b) {
            delays.push(data.timestamps[row] - data.timestamps[a]);
        }
    }
    delays.sort_unstable();
    ModelReport {
        windows_detected: delays.len(),
        median_delay_ms: delays.get(delays.len() / 2).copied(),
        false_alarms: rows.iter().filter(|&&r| !labelled[r]).count(),
    }
}

/// Scores `run` against `data`'s windows.
pub fn report(data: &CsvData, run: &CsvRun) -> CsvReport {
    let n = data.timestamps.len();
    let labelled = data.labelled_rows();
    let (mut tp, mut fp, mut fneg) = (0, 0, 0);
    for (&pred, &lab) in run.anomalous.iter().zip(&labelled) {
        match (pred, lab) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            (false, false) => {}
        }
    }
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fneg);
    let f1 = match (precision, recall) {
        (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
        (Some(_), Some(_)) => Some(0.0),
        _ => None,
    };
    let all = model_report(data, &labelled, &run.event_rows);
    let span_ms = data.timestamps[n - 1] - data.timestamps[0];
    CsvReport {
        rows: n,
        columns: data.columns.len(),
        true_positives: tp,
        false_positives: fp,
        false_negatives: fneg,
        precision,
        recall,
        f1,
        windows: data.windows.len(),
        windows_detected: all.windows_detected,
        median_delay_ms: all.median_delay_ms,
        false_alarms: all.false_alarms,
        false_alarms_per_day: (span_ms > 0)
            .then(|| all.false_alarms as f64 * 86_400_000.0 / span_ms as f64),
        univariate: model_report(data, &labelled, &run.series_event_rows),
        multivariate: model_report(data, &labelled, &run.device_event_rows),
    }
}

/// Writes `timestamp,score,anomalous,event,label` per row (timestamps in ms).
pub fn write_scores(path: &Path, data: &CsvData, run: &CsvRun) -> Result<()> {
    use std::fmt::Write as _;
    let labelled = data.labelled_rows();
    let mut events = vec![false; data.timestamps.len()];
    for &r in &run.event_rows {
        events[r] = true;
    }
    let mut s = String::from("timestamp,score,anomalous,event,label\n");
    for i in 0..data.timestamps.len() {
        let _ = writeln!(
            s,
            "{},{:.6},{},{},{}",
            data.timestamps[i],
            run.scores[i],
            u8::from(run.anomalous[i]),
            u8::from(events[i]),
            u8::from(labelled[i])
        );
    }
    std::fs::write(path, s).map_err(|source| Error::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
