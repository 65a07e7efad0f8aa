//! Model artifacts: `edgepipe models train|list|promote`. Training reads each series' history
//! from the lake, fits [`ModelParams`] (level, spread, period, reporting interval, threshold per
//! series), and stores the artifact as `<data>/models/<version>.json`, the version being a hash
//! of its content. Promoting writes the version to `<data>/models/CURRENT` (atomically); the
//! running detection stage notices the change at its next checkpoint and hot-swaps the
//! parameters without losing detector state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, Float64Array, Int64Array, StringArray};
use edgepipe_detect::{EnsembleConfig, FitOptions, ModelParams, SeriesKey};
use edgepipe_types::{DeviceId, Metric};

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
    let dir = models_dir(data_dir);
    let tmp = dir.join("CURRENT.tmp");
    std::fs::write(&tmp, format!("{version}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join("CURRENT"))?;
    std::fs::File::open(&dir)?.sync_all()?;
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

/// Fits an artifact from the lake's readings newer than `since` and stores it. Returns the
/// version and the number of series fitted.
pub async fn train(
    data_dir: &Path,
    engine: &edgepipe_query::QueryEngine,
    since: std::time::Duration,
) -> anyhow::Result<(String, usize, usize)> {
    let secs = since.as_secs();
    let sql = format!(
        "SELECT device_id, metric, CAST(ts AS BIGINT) AS ts_us, value FROM readings \
         WHERE ts >= now() - INTERVAL '{secs} seconds' AND value IS NOT NULL \
         ORDER BY device_id, metric, ts"
    );
    let out = engine.query(&sql).await?;
    let mut histories: BTreeMap<SeriesKey, Vec<(i64, f64)>> = BTreeMap::new();
    let mut rows = 0usize;
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
        for i in 0..b.num_rows() {
            if val.is_null(i) {
                continue;
            }
            let key = SeriesKey::new(DeviceId::new(dev.value(i))?, Metric::new(met.value(i))?);
            histories
                .entry(key)
                .or_default()
                .push((ts.value(i).div_euclid(1000), val.value(i)));
            rows += 1;
        }
    }
    let params = ModelParams::fit(
        EnsembleConfig::default(),
        histories.iter().map(|(k, v)| (k.clone(), v.as_slice())),
        &FitOptions::default(),
    )?;
    let version = crate::detect::model_version(&params);
    let dir = models_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{version}.json"));
    let tmp = dir.join(format!("{version}.json.tmp"));
    std::fs::write(&tmp, params.to_json())?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok((version, params.series.len(), rows))
}
