//! Loading NAB's data and label files.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use edgepipe_types::TimestampMs;

use crate::{Error, Result};

/// How many rows at the start of a file are probationary (not scored):
/// `min(floor(0.15 * n), 750)`.
pub fn probationary_len(rows: usize) -> usize {
    // Computed in f64 exactly as NAB does, so rounding matches on every length.
    let p = (0.15 * rows as f64).floor().min(750.0);
    p as usize
}

/// One anomaly window, as row indices into its data file (both ends inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First row of the window.
    pub start: usize,
    /// Last row of the window.
    pub end: usize,
}

/// Where a scored row sits relative to the windows of its file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RowKind {
    /// In the probationary period: never scored.
    Probation,
    /// Inside window number `.0` of the corpus (corpus-wide index).
    InWindow(usize),
    /// Outside every window: a detection here is a false positive.
    Outside,
}

/// A row's kind and its unweighted sweep score: the scaled sigmoid of its position relative to
/// the current (inside) or preceding (outside) window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowInfo {
    pub(crate) kind: RowKind,
    pub(crate) unweighted: f64,
}

/// One data file of the corpus with its windows.
#[derive(Debug, Clone)]
pub struct NabFile {
    /// Category folder, e.g. `realTraffic`.
    pub category: String,
    /// File name without `.csv`, e.g. `speed_6005`.
    pub name: String,
    /// Timestamps in milliseconds (naive times taken as UTC), one per row, in file order.
    pub timestamps: Vec<TimestampMs>,
    /// Timestamps exactly as written in the file.
    pub raw_timestamps: Vec<String>,
    /// Values exactly as written in the file.
    pub raw_values: Vec<String>,
    /// Parsed values, one per row.
    pub values: Vec<f64>,
    /// Anomaly windows as row ranges, in time order.
    pub windows: Vec<Window>,
    pub(crate) rows: Vec<RowInfo>,
}

impl NabFile {
    /// The label key of the file: `<category>/<name>.csv`.
    pub fn relative_path(&self) -> String {
        format!("{}/{}.csv", self.category, self.name)
    }

    /// Whether row `i` lies inside a window (NAB's `label` column).
    pub fn in_window(&self, i: usize) -> bool {
        self.windows.iter().any(|w| w.start <= i && i <= w.end)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the file has no rows.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// NAB data and windows: the files under `data/` and `labels/combined_windows.json`.
#[derive(Debug, Clone)]
pub struct NabCorpus {
    /// The data files, sorted by relative path.
    pub files: Vec<NabFile>,
    /// Total number of windows over all files.
    pub window_count: usize,
}

impl NabCorpus {
    /// Loads `DIR/data/<category>/<file>.csv` and `DIR/labels/combined_windows.json`.
    ///
    /// Every data file must have an entry in the window file (an empty list is fine); every
    /// window boundary must be a timestamp of its file.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let labels_path = dir.join("labels").join("combined_windows.json");
        let text =
            fs::read_to_string(&labels_path).map_err(|e| Error::io("read", &labels_path, e))?;
        let labels: BTreeMap<String, Vec<(String, String)>> =
            serde_json::from_str(&text).map_err(|e| Error::Labels {
                path: labels_path.clone(),
                reason: e.to_string(),
            })?;

        let data_dir = dir.join("data");
        let mut files = Vec::new();
        let mut window_count = 0;
        for category in sorted_entries(&data_dir, true)? {
            let cat_dir = data_dir.join(&category);
            for file_name in sorted_entries(&cat_dir, false)? {
                let Some(name) = file_name.strip_suffix(".csv") else {
                    continue;
                };
                let key = format!("{category}/{file_name}");
                let windows = labels.get(&key).ok_or_else(|| Error::Labels {
                    path: labels_path.clone(),
                    reason: format!("no entry for data file {key}"),
                })?;
                let mut file = read_data_file(&cat_dir.join(&file_name), &category, name)?;
                let (rows, wins) =
                    classify_rows(&file.timestamps, windows, window_count).map_err(|reason| {
                        Error::Labels {
                            path: labels_path.clone(),
                            reason: format!("{key}: {reason}"),
                        }
                    })?;
                window_count += wins.len();
                file.rows = rows;
                file.windows = wins;
                files.push(file);
            }
        }
        Ok(Self {
            files,
            window_count,
        })
    }

    /// The files whose category satisfies `keep`, with windows renumbered, so the subset scores
    /// like a corpus of its own (leave-one-category-out and split-half evaluation).
    pub fn subset(&self, mut keep: impl FnMut(&NabFile) -> bool) -> Self {
        let mut files = Vec::new();
        let mut window_count = 0;
        for file in &self.files {
            if !keep(file) {
                continue;
            }
            let mut f = file.clone();
            let first = f.rows.iter().find_map(|r| match r.kind {
                RowKind::InWindow(w) => Some(w),
                _ => None,
            });
            if let Some(first) = first {
                for r in &mut f.rows {
                    if let RowKind::InWindow(w) = r.kind {
                        r.kind = RowKind::InWindow(w - first + window_count);
                    }
                }
            }
            window_count += f.windows.len();
            files.push(f);
        }
        Self {
            files,
            window_count,
        }
    }

    /// This corpus followed by `other`'s files (windows renumbered after this corpus' own), for
    /// scoring NAB's files and generated families together.
    pub fn merged(mut self, other: NabCorpus) -> Self {
        let offset = self.window_count;
        for mut f in other.files {
            for r in &mut f.rows {
                if let RowKind::InWindow(w) = r.kind {
                    r.kind = RowKind::InWindow(w + offset);
                }
            }
            self.files.push(f);
        }
        self.window_count += other.window_count;
        self
    }

    /// The distinct categories, sorted.
    pub fn categories(&self) -> Vec<String> {
        let mut c: Vec<String> = self.files.iter().map(|f| f.category.clone()).collect();
        c.dedup();
        c
    }

    /// Total rows over all files.
    pub fn row_count(&self) -> usize {
        self.files.iter().map(NabFile::len).sum()
    }
}

fn sorted_entries(dir: &Path, want_dirs: bool) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let ft = entry
            .file_type()
            .map_err(|e| Error::io("stat", entry.path(), e))?;
        if ft.is_dir() == want_dirs
            && let Some(name) = entry.file_name().to_str()
        {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

fn read_data_file(path: &Path, category: &str, name: &str) -> Result<NabFile> {
    let text = fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let csv_err = |line: usize, reason: String| Error::Csv {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, l)| l.trim()).unwrap_or_default();
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let ts_col = cols.iter().position(|c| *c == "timestamp");
    let val_col = cols.iter().position(|c| *c == "value");
    let (Some(ts_col), Some(val_col)) = (ts_col, val_col) else {
        return Err(csv_err(
            1,
            format!("header {header:?} lacks timestamp,value"),
        ));
    };
    let mut file = NabFile {
        category: category.to_owned(),
        name: name.to_owned(),
        timestamps: Vec::new(),
        raw_timestamps: Vec::new(),
        raw_values: Vec::new(),
        values: Vec::new(),
        windows: Vec::new(),
        rows: Vec::new(),
    };
    for (i, line) in lines {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(ts), Some(v)) = (fields.get(ts_col), fields.get(val_col)) else {
            return Err(csv_err(i + 1, "missing column".into()));
        };
        let t = parse_timestamp(ts.trim())
            .ok_or_else(|| csv_err(i + 1, format!("bad timestamp {ts:?}")))?;
        let x: f64 = v
            .trim()
            .parse()
            .map_err(|_| csv_err(i + 1, format!("bad value {v:?}")))?;
        file.timestamps.push(t);
        file.raw_timestamps.push((*ts).to_owned());
        file.raw_values.push((*v).to_owned());
        file.values.push(x);
    }
    Ok(file)
}

/// Parses `YYYY-MM-DD HH:MM:SS[.ffffff]` (a naive time, taken as UTC) to milliseconds since the
/// Unix epoch.
pub fn parse_timestamp(s: &str) -> Option<TimestampMs> {
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (time, None),
    };
    let mut t = hms.splitn(3, ':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let second: i64 = t.next().unwrap_or("0").parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || !(0..24).contains(&hour)
        || !(0..60).contains(&minute)
        || !(0..61).contains(&second)
    {
        return None;
    }
    let millis = match frac {
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            let digits: String = f.chars().chain("000".chars()).take(3).collect();
            digits.parse::<i64>().ok()?
        }
        Some(_) => return None,
        None => 0,
    };
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// NAB's scaled sigmoid: `2σ(−5y) − 1`, clamped to −1 for `y > 3`.
pub(crate) fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// Walks a file's rows the way NAB's sweeper does: a window is entered on the row whose timestamp
/// equals its start and left on the row whose timestamp equals its end; its width and right
/// index come from the first occurrence of those timestamps.
fn classify_rows(
    timestamps: &[TimestampMs],
    windows: &[(String, String)],
    first_window_id: usize,
) -> std::result::Result<(Vec<RowInfo>, Vec<Window>), String> {
    let mut limits = Vec::with_capacity(windows.len());
    for (a, b) in windows {
        let pa = parse_timestamp(a).ok_or_else(|| format!("bad window start {a:?}"))?;
        let pb = parse_timestamp(b).ok_or_else(|| format!("bad window end {b:?}"))?;
        let ia = timestamps
            .iter()
            .position(|t| *t == pa)
            .ok_or_else(|| format!("window start {a} is not a timestamp of the file"))?;
        let ib = timestamps
            .iter()
            .position(|t| *t == pb)
            .ok_or_else(|| format!("window end {b} is not a timestamp of the file"))?;
        if ib < ia {
            return Err(format!("window [{a}, {b}] ends before it starts"));
        }
        limits.push((pa, pb, ia, ib));
    }
    let probation = probationary_len(timestamps.len());
    let mut rows = Vec::with_capacity(timestamps.len());
    let mut next = 0usize;
    // (window number in file, end timestamp, right index, width)
    let mut current: Option<(usize, TimestampMs, usize, f64)> = None;
    let mut previous: Option<(usize, f64)> = None;
    for (i, &t) in timestamps.iter().enumerate() {
        if let Some(&(start, end, ia, ib)) = limits.get(next)
            && t == start
        {
            current = Some((next, end, ib, (ib - ia + 1) as f64));
            next += 1;
        }
        let (kind, unweighted) = match current {
            Some((n, _, right, width)) => {
                let y = -((right as f64) - (i as f64) + 1.0) / width;
                (RowKind::InWindow(first_window_id + n), scaled_sigmoid(y))
            }
            None => {
                let u = match previous {
                    Some((right, width)) if width > 1.0 => {
                        scaled_sigmoid((i as f64 - right as f64).abs() / (width - 1.0))
                    }
                    // A one-row window would divide by zero in NAB; treat the row as far away.
                    Some(_) | None => -1.0,
                };
                (RowKind::Outside, u)
            }
        };
        let kind = if i < probation {
            RowKind::Probation
        } else {
            kind
        };
        rows.push(RowInfo { kind, unweighted });
        if let Some((_, end, right, width)) = current
            && t == end
        {
            previous = Some((right, width));
            current = None;
        }
    }
    if next != limits.len() {
        return Err(format!(
            "only {next} of {} windows were entered while walking the file",
            limits.len()
        ));
    }
    let wins = limits
        .iter()
        .map(|&(_, _, start, end)| Window { start, end })
        .collect();
    Ok((rows, wins))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nab_timestamps() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_timestamp("2014-04-10 07:15:00.000000"),
            parse_timestamp("2014-04-10 07:15:00")
        );
        assert_eq!(
            parse_timestamp("2000-03-01 00:00:01"),
            Some(951_868_801_000)
        );
        assert_eq!(parse_timestamp("2000-13-01 00:00:01"), None);
        assert_eq!(parse_timestamp("garbage"), None);
    }

    #[test]
    fn probation_matches_nab() {
        assert_eq!(probationary_len(4032), 604);
        assert_eq!(probationary_len(10_000), 750);
        assert_eq!(probationary_len(3), 0);
    }

    #[test]
    fn classify_marks_window_and_after() {
        let ts: Vec<i64> = (0..100).map(|i| i * 60_000).collect();
        let w = vec![(
            "1970-01-01 00:40:00".to_owned(),
            "1970-01-01 00:49:00".to_owned(),
        )];
        let (rows, wins) = classify_rows(&ts, &w, 0).expect("classify");
        assert_eq!(wins, vec![Window { start: 40, end: 49 }]);
        assert_eq!(rows[10].kind, RowKind::Probation);
        assert_eq!(rows[20].kind, RowKind::Outside);
        assert_eq!(rows[20].unweighted, -1.0);
        assert_eq!(rows[40].kind, RowKind::InWindow(0));
        // Left edge of a window scores the maximum.
        assert!((rows[40].unweighted - scaled_sigmoid(-1.0)).abs() < 1e-12);
        assert_eq!(rows[50].kind, RowKind::Outside);
        assert!(rows[50].unweighted < 0.0 && rows[50].unweighted > -0.5);
    }
}
