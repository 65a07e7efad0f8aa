//! Pipeline alarms: the pipeline watching itself. Every `check_interval` it looks at the WAL's
//! disk use, each consumer's lag, the WAL's fsync health and the notification backlog; a
//! condition over its limit raises a `pipeline` case (device `pipeline:<what>`), so operators
//! see it where they see everything else. While the condition holds it raises one event per
//! minute (joining the same case); when it clears, the case resolves itself after the quiet
//! window.

use edgepipe_types::config::Problem;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgepipe_cases::{CaseEvent, CaseStore, Category, SqlCaseStore};
use edgepipe_types::SharedClock;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// `[alarms]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmsConfig {
    /// Raise pipeline alarms.
    pub enabled: bool,
    /// How often the conditions are checked.
    #[serde(with = "edgepipe_types::duration_serde")]
    pub check_interval: Duration,
    /// WAL disk use above this fraction of `wal.max_bytes`.
    pub wal_disk_fraction: f64,
    /// A WAL consumer (lake, detect) this many records behind.
    pub max_consumer_lag_records: u64,
    /// A notification still undelivered after this long.
    #[serde(with = "edgepipe_types::duration_serde")]
    pub notification_max_age: Duration,
}

impl Default for AlarmsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            check_interval: Duration::from_secs(10),
            wal_disk_fraction: 0.8,
            max_consumer_lag_records: 1_000_000,
            notification_max_age: Duration::from_secs(600),
        }
    }
}

impl AlarmsConfig {
    /// Every problem, with its key path.
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if !(self.wal_disk_fraction > 0.0 && self.wal_disk_fraction <= 1.0) {
            p.push(Problem::new(
                "alarms.wal_disk_fraction",
                format!("{} is not in (0, 1]", self.wal_disk_fraction),
            ));
        }
        if self.check_interval.is_zero() {
            p.push(Problem::new("alarms.check_interval", "must be more than 0"));
        }
        p
    }
}

/// What the alarm loop reads.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The readings WAL.
    pub wal: edgepipe_wal::Wal,
    /// Its disk budget.
    pub wal_max_bytes: u64,
    /// The lake writer's committed position.
    pub fresh: edgepipe_lake::FreshBuffer,
    /// The detection stage's checkpointed position.
    pub detect: Arc<crate::stages::detect::DetectMetrics>,
    /// Whether the detection stage runs.
    pub detect_enabled: bool,
}

/// One condition over its limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Alarm {
    /// `wal_disk`, `wal_fsync`, `lake_lag`, `detect_lag`, `notifications`.
    pub what: &'static str,
    /// The measured value.
    pub value: f64,
    /// Its limit.
    pub limit: f64,
    /// For people.
    pub message: String,
}

/// The conditions over their limits now.
pub async fn check(cfg: &AlarmsConfig, w: &Watched, store: &SqlCaseStore, now: i64) -> Vec<Alarm> {
    let mut out = Vec::new();
    let st = w.wal.stats();
    let limit = cfg.wal_disk_fraction * w.wal_max_bytes as f64;
    if st.disk_bytes as f64 > limit {
        out.push(Alarm {
            what: "wal_disk",
            value: st.disk_bytes as f64,
            limit,
            message: format!(
                "WAL uses {} of its {} byte budget (alarm above {:.0} %)",
                st.disk_bytes,
                w.wal_max_bytes,
                cfg.wal_disk_fraction * 100.0
            ),
        });
    }
    if w.wal.is_poisoned() {
        out.push(Alarm {
            what: "wal_fsync",
            value: 1.0,
            limit: 0.0,
            message: "an fsync of the WAL failed: the server refuses new readings until restarted"
                .into(),
        });
    }
    let mut lag = vec![("lake_lag", st.next_seq.saturating_sub(w.fresh.committed()))];
    if w.detect_enabled {
        lag.push((
            "detect_lag",
            st.next_seq
                .saturating_sub(w.detect.position.load(Ordering::Relaxed)),
        ));
    }
    for (what, records) in lag {
        if records > cfg.max_consumer_lag_records {
            out.push(Alarm {
                what,
                value: records as f64,
                limit: cfg.max_consumer_lag_records as f64,
                message: format!(
                    "{} is {records} WAL records behind (alarm above {})",
                    what.trim_end_matches("_lag"),
                    cfg.max_consumer_lag_records
                ),
            });
        }
    }
    if let Ok(o) = store.outbox_stats(now).await {
        let max_age = i64::try_from(cfg.notification_max_age.as_millis()).unwrap_or(i64::MAX);
        if let Some(age) = o.oldest_pending_ms.filter(|a| *a > max_age) {
            out.push(Alarm {
                what: "notifications",
                value: age as f64,
                limit: max_age as f64,
                message: format!(
                    "{} notifications waiting, the oldest for {} s ({} failing)",
                    o.pending,
                    age / 1000,
                    o.failing
                ),
            });
        }
    }
    out
}

/// Checks every `check_interval` until `stop`, raising a pipeline case event per alarm per
/// minute.
pub async fn run(
    cfg: AlarmsConfig,
    w: Watched,
    store: Arc<SqlCaseStore>,
    waker: Arc<tokio::sync::Notify>,
    clock: SharedClock,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.check_interval) => {}
            _ = stop.cancelled() => return,
        }
        let now = clock.now_ms();
        let alarms = check(&cfg, &w, &store, now).await;
        if alarms.is_empty() {
            continue;
        }
        let events: Vec<CaseEvent> = alarms
            .iter()
            .map(|a| CaseEvent {
                id: format!("pipeline-{}-{}", a.what, now / 60_000),
                category: Category::Pipeline,
                device_id: format!("pipeline:{}", a.what),
                metric: None,
                metrics: vec![],
                ts: now,
                kind: a.what.to_owned(),
                score: 1.0,
                model_version: "pipeline".into(),
                explanation: serde_json::json!({
                    "message": a.message, "value": a.value, "limit": a.limit,
                }),
            })
            .collect();
        for a in &alarms {
            tracing::warn!(
                alarm = a.what,
                value = a.value,
                limit = a.limit,
                "{}",
                a.message
            );
        }
        match store.ingest(&events, now).await {
            Ok(out) if out.notifications > 0 => waker.notify_one(),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "alarms: raising a pipeline case failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgepipe_types::{Clock, SystemClock};

    #[tokio::test]
    async fn conditions_over_their_limits_raise_pipeline_cases() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let wal = edgepipe_wal::Wal::open(
            dir.path().join("wal"),
            edgepipe_wal::WalConfig::test_config(),
        )?;
        for _ in 0..50 {
            wal.append(vec![7u8; 1000]).await?;
        }
        let store = SqlCaseStore::open(
            &format!("sqlite://{}/c.db", dir.path().display()),
            edgepipe_cases::CasesConfig::default(),
        )
        .await?;
        let watched = Watched {
            wal: wal.clone(),
            // 50 kB written against a 60 kB budget: over 80 %.
            wal_max_bytes: 60_000,
            fresh: edgepipe_lake::FreshBuffer::default(),
            detect: Arc::default(),
            detect_enabled: true,
        };
        let cfg = AlarmsConfig {
            max_consumer_lag_records: 10,
            ..AlarmsConfig::default()
        };
        let alarms = check(&cfg, &watched, &store, SystemClock.now_ms()).await;
        let what: Vec<&str> = alarms.iter().map(|a| a.what).collect();
        assert_eq!(what, ["wal_disk", "lake_lag", "detect_lag"], "{alarms:?}");
        assert!(
            alarms[1].message.contains("50 WAL records behind"),
            "{}",
            alarms[1].message
        );
        // Within limits: nothing.
        let calm = AlarmsConfig {
            wal_disk_fraction: 1.0,
            max_consumer_lag_records: 1000,
            ..AlarmsConfig::default()
        };
        let w2 = Watched {
            wal_max_bytes: 10_000_000,
            ..watched
        };
        assert!(
            check(&calm, &w2, &store, SystemClock.now_ms())
                .await
                .is_empty()
        );
        store.close().await;
        wal.close();
        Ok(())
    }
}
