//! Model artifacts: `edgepipe models train|list|promote`. Training reads each series' history
//! from the lake, fits [`ModelParams`] (level, spread, period, reporting interval, threshold per
//! series), and stores the artifact as `<data>/models/<version>.json`, the version being a hash
//! of its content. Promoting writes the version to `<data>/models/CURRENT` (atomically); the
//! running detection stage notices the change at its next checkpoint and hot-swaps the
//! parameters without losing detector state.
//!
//! Operators' verdicts (the lake's `labels` table, written when a case is resolved as
//! confirmed or false positive) take part: series with labelled false positives get a
//! threshold above what those intervals scored (unless a confirmed interval of the series
//! would go quiet), and every new artifact is scored on the labels (precision, recall, F1,
//! detection delay) next to the promoted one; the scores are kept in `<version>.eval`, and
//! `--auto-promote` (or `[detect.retrain] auto_promote`) promotes only an artifact that does
//! better. `[detect.retrain] every` retrains on a schedule inside the server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{Array, Float64Array, Int64Array, StringArray};
use edgepipe_detect::eval::{
    LabelScore, LabelledInterval, raise_thresholds_for_false_positives, score_on_labels,
};
use edgepipe_detect::{EnsembleConfig, FitOptions, ModelParams, SeriesKey};
use edgepipe_types::{DeviceId, Metric, SharedClock};
use serde::{Deserialize, Serialize};

/// `[detect.retrain]`: fit a new model artifact from the lake on a schedule, evaluate it on
/// operators' labels against the promoted one, and promote it when it does better.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrainConfig {
    /// How often to retrain ("0s" = never; `edgepipe models train` still works by hand).
    #[serde(with = "edgepipe_lake::duration_serde")]
    pub every: Duration,
    /// History to fit on.
    #[serde(with = "edgepipe_lake::duration_serde")]
    pub since: Duration,
    /// Promote the new artifact when its score on the labels beats the promoted one's (with
    /// no labels at all: only when nothing is promoted yet).
    pub auto_promote: bool,
}

impl Default for RetrainConfig {
    fn default() -> Self {
        Self {
            every: Duration::ZERO,
            since: Duration::from_secs(30 * 86_400),
            auto_promote: true,
        }
    }
}

/// The version string of a parameter set: the first 12 hex digits of the SHA-256 of its JSON.
pub fn model_version(params: &ModelParams) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(params).unwrap_or_default();
    let h = sha2::Sha256::digest(&json);
    format!("m{}-{}", params.version, &hex::encode(h)[..12])
}

/// The models directory of a data directory.
pub fn models_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models")
}

/// The promoted version, if any.
pub fn current_version(data_dir: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(models_dir(data_dir).join("CURRENT")) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Loads an artifact by version.
pub fn load(data_dir: &Path, version: &str) -> anyhow::Result<ModelParams> {
    anyhow::ensure!(
        !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "model version {version:?} is not a version name"
    );
    let path = models_dir(data_dir).join(format!("{version}.json"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("model {version}: {}: {e}", path.display()))?;
    Ok(ModelParams::from_json(&text)?)
}

/// Promotes `version` (it must exist).
pub fn promote(data_dir: &Path, version: &str) -> anyhow::Result<()> {
    load(data_dir, version)?;
    edgepipe_wal::durable::replace_file(
        &models_dir(data_dir).join("CURRENT"),
        format!("{version}\n").as_bytes(),
    )?;
    Ok(())
}

/// Artifacts on disk: (version, series fitted, promoted).
pub fn list(data_dir: &Path) -> anyhow::Result<Vec<(String, usize, bool)>> {
    let current = current_version(data_dir)?;
    let mut out = Vec::new();
    let dir = models_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for e in entries {
        let p = e?.path();
        let Some(v) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let series = load(data_dir, v).map(|m| m.series.len()).unwrap_or(0);
        out.push((v.to_owned(), series, current.as_deref() == Some(v)));
    }
    out.sort();
    Ok(out)
}

/// When `train` promotes what it fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promote {
    /// Never (promote by hand later).
    Never,
    /// Always.
    Always,
    /// When its score on operators' labels beats the promoted model's (with no labels at all:
    /// only when nothing is promoted yet).
    IfBetter,
}

/// What `train` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    /// The new artifact's version.
    pub version: String,
    /// Series fitted.
    pub series: usize,
    /// Readings read.
    pub readings: usize,
    /// Operators' labelled intervals (latest verdict per case and metric) in the window.
    pub labels: usize,
    /// Series whose threshold was raised above their labelled false positives.
    pub raised: Vec<(String, f64)>,
    /// The new artifact's score on the labels.
    pub score: LabelScore,
    /// What it was compared with: the promoted version (or "defaults") and its score.
    pub baseline: (String, LabelScore),
    /// Whether the new artifact was promoted.
    pub promoted: bool,
}

/// Operators' verdicts on anomaly cases ending after `since_secs` ago: the latest (highest
/// label id) per case and metric.
async fn labels(
    engine: &edgepipe_query::QueryEngine,
    since_secs: u64,
) -> anyhow::Result<Vec<LabelledInterval>> {
    let sql = format!(
        "SELECT case_id, device_id, metric, CAST(ts AS BIGINT) AS ts_us, \
         CAST(end_ts AS BIGINT) AS end_us, label, label_id \
         FROM labels WHERE metric IS NOT NULL AND category = 'anomaly' \
         AND end_ts >= now() - INTERVAL '{since_secs} seconds'"
    );
    let out = engine.query(&sql).await?;
    let mut latest: BTreeMap<(i64, String), (i64, LabelledInterval)> = BTreeMap::new();
    for b in &out.batches {
        let col = |i: usize| b.column(i).as_any();
        let int = |i: usize, name: &str| {
            col(i)
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| anyhow::anyhow!("labels.{name} is not int64"))
        };
        let text = |i: usize, name: &str| {
            col(i)
                .downcast_ref::<StringArray>()
                .ok_or_else(|| anyhow::anyhow!("labels.{name} is not utf8"))
        };
        let (case, dev, met) = (
            int(0, "case_id")?,
            text(1, "device_id")?,
            text(2, "metric")?,
        );
        let (ts, end, label, ids) = (
            int(3, "ts")?,
            int(4, "end_ts")?,
            text(5, "label")?,
            int(6, "label_id")?,
        );
        for i in 0..b.num_rows() {
            let confirmed = match label.value(i) {
                "confirmed" => true,
                "false_positive" => false,
                _ => continue,
            };
            let key = SeriesKey::new(DeviceId::new(dev.value(i))?, Metric::new(met.value(i))?);
            let l = LabelledInterval {
                key,
                start_ms: ts.value(i).div_euclid(1000),
                end_ms: end.value(i).div_euclid(1000),
                confirmed,
            };
            let slot = (case.value(i), met.value(i).to_owned());
            if latest.get(&slot).is_none_or(|(id, _)| ids.value(i) > *id) {
                latest.insert(slot, (ids.value(i), l));
            }
        }
    }
    Ok(latest.into_values().map(|(_, l)| l).collect())
}

/// A detection counts for a labelled interval up to this long after its end.
const LABEL_GRACE_MS: i64 = 60_000;

/// Fits an artifact from the lake's readings newer than `since`, raises the thresholds of
/// series with labelled false positives, scores it on operators' labels against the promoted
/// artifact (or the defaults), stores it (with its evaluation in `<version>.eval`) and
/// promotes it as `promote` says.
pub async fn train(
    data_dir: &Path,
    engine: &edgepipe_query::QueryEngine,
    since: std::time::Duration,
    now_ms: i64,
    promote: Promote,
) -> anyhow::Result<TrainReport> {
    let secs = since.as_secs();
    // One query per 6 hours of history rather than one sorted scan of all of it: bounded
    // memory per query, and the compaction swap lock is held briefly each time.
    let now = now_ms;
    let start = now.saturating_sub(i64::try_from(since.as_millis()).unwrap_or(i64::MAX));
    let mut histories: BTreeMap<SeriesKey, Vec<(i64, f64)>> = BTreeMap::new();
    let mut rows = 0usize;
    let mut a = start;
    while a < now {
        let b = (a + 6 * 3_600_000).min(now);
        let sql = format!(
            "SELECT device_id, metric, CAST(ts AS BIGINT) AS ts_us, value FROM readings \
             WHERE ts >= to_timestamp_millis({a}) AND ts < to_timestamp_millis({b}) \
             AND value IS NOT NULL"
        );
        let out = engine.query(&sql).await?;
        for b in &out.batches {
            let col = |i: usize| b.column(i).as_any();
            let dev = col(0)
                .downcast_ref::<StringArray>()
                .ok_or_else(|| anyhow::anyhow!("device_id is not utf8"))?;
            let met = col(1)
                .downcast_ref::<StringArray>()
                .ok_or_else(|| anyhow::anyhow!("metric is not utf8"))?;
            let ts = col(2)
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| anyhow::anyhow!("ts is not int64"))?;
            let val = col(3)
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| anyhow::anyhow!("value is not float64"))?;
            let mut last: Option<SeriesKey> = None;
            for i in 0..b.num_rows() {
                if val.is_null(i) {
                    continue;
                }
                let same = last.as_ref().is_some_and(|k| {
                    k.device.as_str() == dev.value(i) && k.metric.as_str() == met.value(i)
                });
                if !same {
                    last = Some(SeriesKey::new(
                        DeviceId::new(dev.value(i))?,
                        Metric::new(met.value(i))?,
                    ));
                }
                if let Some(k) = &last {
                    if !histories.contains_key(k) {
                        histories.insert(k.clone(), Vec::new());
                    }
                    if let Some(h) = histories.get_mut(k) {
                        h.push((ts.value(i).div_euclid(1000), val.value(i)));
                    }
                }
                rows += 1;
            }
        }
        a = b;
    }
    let labelled = labels(engine, secs).await?;
    let current = current_version(data_dir)?;
    let (baseline_name, baseline_params) = match &current {
        Some(v) => (v.clone(), load(data_dir, v)?),
        None => ("defaults".to_owned(), ModelParams::default()),
    };
    // Fitting and the replays are CPU work: off the async workers.
    let (params, raised, score, baseline_score) = tokio::task::spawn_blocking(move || {
        for h in histories.values_mut() {
            h.sort_by_key(|p| p.0);
        }
        let fit = FitOptions::default();
        let mut params = ModelParams::fit(
            EnsembleConfig::default(),
            histories.iter().map(|(k, v)| (k.clone(), v.as_slice())),
            &fit,
        )?;
        let raised = raise_thresholds_for_false_positives(
            &mut params,
            &histories,
            &labelled,
            fit.margin,
            LABEL_GRACE_MS,
        )?;
        let score = score_on_labels(&params, &histories, &labelled, LABEL_GRACE_MS)?;
        let base = score_on_labels(&baseline_params, &histories, &labelled, LABEL_GRACE_MS)?;
        Ok::<_, anyhow::Error>((params, raised, score, base))
    })
    .await??;
    let labels_n = score.confirmed + score.false_positive;
    let baseline = (baseline_name, baseline_score);
    let version = model_version(&params);
    let dir = models_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    write_synced(
        &dir,
        &format!("{version}.json"),
        params.to_json().as_bytes(),
    )?;
    let promoted = match promote {
        Promote::Never => false,
        Promote::Always => true,
        Promote::IfBetter if labels_n == 0 => current.is_none(),
        Promote::IfBetter => score.improves_on(&baseline.1),
    };
    let report = TrainReport {
        version: version.clone(),
        series: params.series.len(),
        readings: rows,
        labels: labels_n,
        raised: raised.iter().map(|(k, t)| (k.to_string(), *t)).collect(),
        score,
        baseline,
        promoted,
    };
    write_synced(
        &dir,
        &format!("{version}.eval"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    if promoted {
        self::promote(data_dir, &version)?;
    }
    prune(data_dir, KEEP_ARTIFACTS)?;
    Ok(report)
}

/// Artifacts kept besides the promoted one; older ones (and their evaluations) are deleted.
pub const KEEP_ARTIFACTS: usize = 10;

/// Deletes all but the newest `keep` artifacts, never the promoted one.
pub fn prune(data_dir: &Path, keep: usize) -> anyhow::Result<()> {
    let current = current_version(data_dir)?;
    let dir = models_dir(data_dir);
    let mut found = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(v) = name.strip_suffix(".json") else {
            continue;
        };
        if current.as_deref() == Some(v) {
            continue;
        }
        found.push((e.metadata()?.modified()?, v.to_owned()));
    }
    found.sort();
    let n = found.len().saturating_sub(keep);
    for (_, v) in found.into_iter().take(n) {
        std::fs::remove_file(dir.join(format!("{v}.json")))?;
        match std::fs::remove_file(dir.join(format!("{v}.eval"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

fn write_synced(dir: &Path, name: &str, data: &[u8]) -> anyhow::Result<()> {
    // Temp file, fdatasync, rename, fsync of the directory: the artifact survives a crash
    // right after `train` returns (the directory fsync makes the rename itself durable).
    Ok(edgepipe_wal::durable::replace_file(&dir.join(name), data)?)
}

/// The evaluation stored next to an artifact by `train`, if any.
pub fn evaluation(data_dir: &Path, version: &str) -> Option<serde_json::Value> {
    let text =
        std::fs::read_to_string(models_dir(data_dir).join(format!("{version}.eval"))).ok()?;
    serde_json::from_str(&text).ok()
}

/// Retrains every `cfg.every` (see [`RetrainConfig`]) until `stop` is cancelled.
pub async fn retrain_loop(
    data_dir: PathBuf,
    engine: edgepipe_query::QueryEngine,
    cfg: RetrainConfig,
    clock: SharedClock,
    stop: tokio_util::sync::CancellationToken,
) {
    if cfg.every.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.every) => {}
            _ = stop.cancelled() => return,
        }
        if stop.is_cancelled() {
            return;
        }
        let how = if cfg.auto_promote {
            Promote::IfBetter
        } else {
            Promote::Never
        };
        match train(&data_dir, &engine, cfg.since, clock.now_ms(), how).await {
            Ok(r) => tracing::info!(
                version = %r.version,
                series = r.series,
                labels = r.labels,
                f1 = r.score.f1,
                baseline = %r.baseline.0,
                baseline_f1 = r.baseline.1.f1,
                promoted = r.promoted,
                "models: retrained"
            ),
            Err(e) => tracing::error!(error = %e, "models: scheduled retraining failed"),
        }
    }
}
