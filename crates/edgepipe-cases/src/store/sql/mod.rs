//! [`SqlCaseStore`]: the case store on SQLite (default, one file) or PostgreSQL, through
//! sqlx's `Any` driver. The SQL is shared; the dialects differ only in their DDL (see
//! `migrations`) and in how a write transaction takes its lock: SQLite `BEGIN IMMEDIATE` (one
//! writer at a time, no upgrade deadlocks), PostgreSQL `LOCK TABLE cases IN EXCLUSIVE MODE`
//! for correlation (readers go on). Together with the `open_key` unique column (set while a
//! case is open, cleared when it closes) this makes "one open case per device and category"
//! hold under concurrent writers, whichever process they run in.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row, Transaction};

use super::CaseStore;
use super::migrations::{self, Dialect};
use crate::config::{CasesConfig, redact};
use crate::model::{
    Action, Case, CaseAnomaly, CaseDetail, CaseEvent, CaseFilter, CasePage, CaseState, Category,
    Evidence, IngestOutcome, Label, Millis, OutboxMessage, OutboxStats, Outcome, Severity,
    TimelineEntry,
};
use crate::severity::severity_of;
use crate::{Error, Result, now_ms};

mod case_store;

const CASE_COLUMNS: &str = "id, category, device_id, state, severity, notified_severity, title, \
     metrics, assignee, opened_at, updated_at, first_event_ts, last_event_ts, last_seen_at, \
     resolved_at, outcome, auto_resolved, root_cause, anomaly_count, max_score, reopen_count, \
     flap_count, version";

/// The case store over SQL.
#[derive(Debug, Clone)]
pub struct SqlCaseStore {
    pool: AnyPool,
    dialect: Dialect,
    cfg: Arc<CasesConfig>,
}

/// A case row with the columns only the store needs.
#[derive(Debug, Clone)]
struct Row_ {
    case: Case,
    notified_severity: i64,
}

impl SqlCaseStore {
    /// Opens (creating when needed) the store at `url` (`sqlite://PATH` or `postgres://...`)
    /// and brings its schema up to date. `cfg` supplies correlation and routing.
    pub async fn open(url: &str, cfg: CasesConfig) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(Error::BadUrl {
                    url: url.to_owned(),
                    reason: "no file path".into(),
                });
            }
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = if path.contains("mode=") {
                url.to_owned()
            } else {
                format!("{url}{sep}mode=rwc")
            };
            (Dialect::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_owned())
        } else {
            return Err(Error::BadUrl {
                url: redact(url),
                reason: "expected sqlite://PATH or postgres://...".into(),
            });
        };
        let opts = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { 4 } else { 8 })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL: readers never block the writer; FULL: a committed outbox
                        // entry survives power loss, not only a process crash.
                        for p in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA busy_timeout = 10000",
                            "PRAGMA foreign_keys = ON",
                        ] {
                            sqlx::query(p).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            });
        let pool = opts.connect(&url).await.map_err(|e| match e {
            sqlx::Error::Configuration(c) => Error::BadUrl {
                url: redact(&url),
                reason: c.to_string(),
            },
            e => Error::Store(e),
        })?;
        let store = Self {
            pool,
            dialect,
            cfg: Arc::new(cfg),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub(super) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The configuration the store correlates and routes with.
    pub fn config(&self) -> &CasesConfig {
        &self.cfg
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if self.dialect == Dialect::Postgres {
            // Two servers starting at once must not both migrate (nor race on CREATE TABLE):
            // a transaction-scoped advisory lock with a fixed key serializes them.
            sqlx::query("SELECT 1 AS one FROM (SELECT pg_advisory_xact_lock(7215830012)) AS l")
                .fetch_one(&mut *tx)
                .await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS edgepipe_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let current: i64 =
            sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM edgepipe_schema")
                .fetch_one(&mut *tx)
                .await?
                .try_get("v")?;
        if current > migrations::latest() {
            return Err(Error::SchemaTooNew {
                found: current,
                known: migrations::latest(),
            });
        }
        for (version, stmts) in migrations::pending(self.dialect, current) {
            for s in stmts {
                sqlx::query(AssertSqlSafe(s)).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO edgepipe_schema (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            tracing::info!(version, "case store: schema migrated");
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn begin_write(&self) -> Result<Transaction<'static, sqlx::Any>> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        })
    }

    async fn lock_cases(&self, tx: &mut Transaction<'static, sqlx::Any>) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("LOCK TABLE cases IN EXCLUSIVE MODE")
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    fn severity(&self, c: &Case) -> Severity {
        severity_of(
            c.category,
            c.max_score,
            c.first_event_ts,
            c.last_event_ts,
            &c.metrics,
            &self.cfg.criticality,
        )
    }

    async fn load(&self, tx: &mut Transaction<'static, sqlx::Any>, id: i64) -> Result<Row_> {
        let sql = format!("SELECT {CASE_COLUMNS} FROM cases WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(Error::NotFound(id))?;
        row_to_case(&row)
    }

    /// Writes every column of `c` back (bumping nothing: callers set `version`).
    async fn save(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        r: &Row_,
        open: bool,
    ) -> Result<()> {
        let c = &r.case;
        let open_key = open.then(|| open_key(c.category, &c.device_id));
        sqlx::query(
            "UPDATE cases SET state = $1, severity = $2, notified_severity = $3, title = $4, \
             metrics = $5, assignee = $6, updated_at = $7, first_event_ts = $8, \
             last_event_ts = $9, last_seen_at = $10, resolved_at = $11, outcome = $12, \
             auto_resolved = $13, root_cause = $14, anomaly_count = $15, max_score = $16, \
             reopen_count = $17, flap_count = $18, version = $19, open_key = $20 WHERE id = $21",
        )
        .bind(c.state.as_str())
        .bind(c.severity.level())
        .bind(r.notified_severity)
        .bind(c.title.clone())
        .bind(serde_json::to_string(&c.metrics)?)
        .bind(c.assignee.clone())
        .bind(c.updated_at)
        .bind(c.first_event_ts)
        .bind(c.last_event_ts)
        .bind(c.last_seen_at)
        .bind(c.resolved_at)
        .bind(c.outcome.map(|o| o.as_str()))
        .bind(i64::from(c.auto_resolved))
        .bind(c.root_cause.clone())
        .bind(c.anomaly_count)
        .bind(c.max_score)
        .bind(c.reopen_count)
        .bind(c.flap_count)
        .bind(c.version)
        .bind(open_key)
        .bind(c.id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn timeline(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        case_id: i64,
        at: Millis,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO case_timeline (case_id, at, actor, action, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(case_id)
        .bind(at)
        .bind(actor.to_owned())
        .bind(action.to_owned())
        .bind(detail.to_string())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Enqueues the notification of `event` about `c` for every channel routed to it.
    async fn notify(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        c: &Case,
        event: &str,
        now: Millis,
    ) -> Result<u64> {
        let channels = self.cfg.route(event, c.severity, &c.device_id);
        let mut n = 0;
        for ch in channels {
            let key = format!("case-{}-v{}-{event}-{ch}", c.id, c.version);
            let payload = serde_json::json!({
                "event": event,
                "idempotency_key": key,
                "case": c,
            });
            sqlx::query(
                "INSERT INTO outbox (case_id, channel, idempotency_key, event, payload, created_at, due_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (idempotency_key) DO NOTHING",
            )
            .bind(c.id)
            .bind(ch.to_owned())
            .bind(key)
            .bind(event.to_owned())
            .bind(payload.to_string())
            .bind(now)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            n += 1;
        }
        Ok(n)
    }

    async fn ingest_one(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        ev: &CaseEvent,
        now: Millis,
        out: &mut IngestOutcome,
    ) -> Result<()> {
        let seen = sqlx::query("SELECT case_id FROM case_anomalies WHERE event_id = $1")
            .bind(ev.id.clone())
            .fetch_optional(&mut **tx)
            .await?;
        if seen.is_some() {
            out.duplicates += 1;
            return Ok(());
        }
        let score = if ev.score.is_finite() { ev.score } else { 1.0 };
        let metrics = ev.all_metrics();
        let key = open_key(ev.category, &ev.device_id);
        let sql = format!("SELECT {CASE_COLUMNS} FROM cases WHERE open_key = $1");
        let open = sqlx::query(AssertSqlSafe(sql))
            .bind(key.clone())
            .fetch_optional(&mut **tx)
            .await?;
        let window = ms(self.cfg.window);
        let mut open = match open {
            Some(row) => Some(row_to_case(&row)?),
            None => None,
        };
        let flap = ms(self.cfg.flap_window).max(window);
        if let Some(r) = open.take_if(|r| {
            r.case.state != CaseState::Investigating
                && ev.ts > r.case.last_event_ts.saturating_add(flap)
        }) {
            // The stream has moved past the case in event time by more than the flap window
            // (data arriving faster than real time, e.g. a backlog, so the wall-clock
            // auto-resolver has not run): the case is over and this event starts the next.
            // Within the flap window the event continues the case, as a flap would reopen it.
            // A case someone is investigating is never closed by the system.
            self.close_quiet(tx, r, now, "no event within the flap window (event time)")
                .await?;
        }
        let case_id = if let Some(mut r) = open {
            let c = &mut r.case;
            let mut new_metrics = Vec::new();
            for m in &metrics {
                if !c.metrics.contains(m) {
                    c.metrics.push(m.clone());
                    new_metrics.push(m.clone());
                }
            }
            c.anomaly_count += 1;
            c.max_score = c.max_score.max(score);
            c.first_event_ts = c.first_event_ts.min(ev.ts);
            c.last_event_ts = c.last_event_ts.max(ev.ts);
            c.last_seen_at = now;
            c.title = title(c.category, &c.device_id, &c.metrics);
            c.severity = self.severity(c);
            c.updated_at = now;
            c.version += 1;
            let id = c.id;
            if !new_metrics.is_empty() {
                self.timeline(
                    tx,
                    id,
                    now,
                    "system",
                    "metrics_added",
                    serde_json::json!({ "metrics": new_metrics, "event_id": ev.id }),
                )
                .await?;
            }
            if r.case.severity.level() > r.notified_severity {
                self.timeline(
                    tx,
                    id,
                    now,
                    "system",
                    "escalated",
                    serde_json::json!({ "from": Severity::from_level(r.notified_severity), "to": r.case.severity }),
                )
                .await?;
                r.notified_severity = r.case.severity.level();
                out.notifications += self.notify(tx, &r.case, "escalated", now).await?;
            }
            self.save(tx, &r, true).await?;
            if !out.attached.contains(&id) {
                out.attached.push(id);
            }
            id
        } else if let Some(mut r) = self.flapping(tx, ev).await? {
            let c = &mut r.case;
            for m in &metrics {
                if !c.metrics.contains(m) {
                    c.metrics.push(m.clone());
                }
            }
            c.state = CaseState::Open;
            c.resolved_at = None;
            c.outcome = None;
            c.auto_resolved = false;
            c.flap_count += 1;
            c.reopen_count += 1;
            c.anomaly_count += 1;
            c.max_score = c.max_score.max(score);
            c.last_event_ts = c.last_event_ts.max(ev.ts);
            c.last_seen_at = now;
            c.title = title(c.category, &c.device_id, &c.metrics);
            c.severity = self.severity(c);
            c.updated_at = now;
            c.version += 1;
            let id = c.id;
            self.timeline(
                tx,
                id,
                now,
                "system",
                "reopened",
                serde_json::json!({ "flapping": true, "event_id": ev.id, "flap_count": c.flap_count }),
            )
            .await?;
            // A flap is not news; a flap that got worse is.
            if r.case.severity.level() > r.notified_severity {
                r.notified_severity = r.case.severity.level();
                out.notifications += self.notify(tx, &r.case, "escalated", now).await?;
            }
            self.save(tx, &r, true).await?;
            out.reopened.push(id);
            id
        } else {
            let mut c = Case {
                id: 0,
                category: ev.category,
                device_id: ev.device_id.clone(),
                state: CaseState::Open,
                severity: Severity::Info,
                title: title(ev.category, &ev.device_id, &metrics),
                metrics,
                assignee: None,
                opened_at: now,
                updated_at: now,
                first_event_ts: ev.ts,
                last_event_ts: ev.ts,
                last_seen_at: now,
                resolved_at: None,
                outcome: None,
                auto_resolved: false,
                root_cause: None,
                anomaly_count: 1,
                max_score: score,
                reopen_count: 0,
                flap_count: 0,
                version: 1,
            };
            c.severity = self.severity(&c);
            let id: i64 = sqlx::query(
                "INSERT INTO cases (category, device_id, state, severity, notified_severity, title, \
                 metrics, opened_at, updated_at, first_event_ts, last_event_ts, last_seen_at, \
                 anomaly_count, max_score, version, open_key) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) RETURNING id",
            )
            .bind(c.category.as_str())
            .bind(c.device_id.clone())
            .bind(c.state.as_str())
            .bind(c.severity.level())
            .bind(c.severity.level())
            .bind(c.title.clone())
            .bind(serde_json::to_string(&c.metrics)?)
            .bind(now)
            .bind(now)
            .bind(c.first_event_ts)
            .bind(c.last_event_ts)
            .bind(now)
            .bind(1_i64)
            .bind(c.max_score)
            .bind(1_i64)
            .bind(key)
            .fetch_one(&mut **tx)
            .await?
            .try_get("id")?;
            c.id = id;
            self.timeline(
                tx,
                id,
                now,
                "system",
                "opened",
                serde_json::json!({ "event_id": ev.id, "severity": c.severity }),
            )
            .await?;
            out.notifications += self.notify(tx, &c, "opened", now).await?;
            out.opened.push(id);
            id
        };
        sqlx::query(
            "INSERT INTO case_anomalies (event_id, case_id, metric, ts, kind, score, model_version, explanation) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(ev.id.clone())
        .bind(case_id)
        .bind(ev.metric.clone())
        .bind(ev.ts)
        .bind(ev.kind.clone())
        .bind(score)
        .bind(ev.model_version.clone())
        .bind(ev.explanation.to_string())
        .execute(&mut **tx)
        .await?;
        out.accepted += 1;
        Ok(())
    }

    /// Resolves a quiet case automatically (outcome `cleared`, marked automatic).
    async fn close_quiet(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        mut r: Row_,
        now: Millis,
        reason: &str,
    ) -> Result<()> {
        let c = &mut r.case;
        let from = c.state;
        c.state = CaseState::Resolved;
        c.resolved_at = Some(now);
        c.outcome = Some(Outcome::Cleared);
        c.auto_resolved = true;
        c.updated_at = now;
        c.version += 1;
        let case = c.clone();
        self.timeline(
            tx,
            case.id,
            now,
            "system",
            "auto_resolved",
            serde_json::json!({
                "from": from.as_str(),
                "reason": reason,
                "quiet_ms": now - case.last_seen_at,
                "last_event_ts": case.last_event_ts,
            }),
        )
        .await?;
        self.notify(tx, &case, "resolved", now).await?;
        self.save(tx, &r, false).await
    }

    /// The latest closed case of `ev`'s device and category, if it was resolved automatically
    /// and its last event is within the flap window before `ev` (event time).
    async fn flapping(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        ev: &CaseEvent,
    ) -> Result<Option<Row_>> {
        let since = ev.ts.saturating_sub(ms(self.cfg.flap_window));
        let sql = format!(
            "SELECT {CASE_COLUMNS} FROM cases WHERE device_id = $2 AND category = $1 \
             AND last_event_ts >= $3 AND open_key IS NULL ORDER BY last_event_ts DESC, id DESC LIMIT 1"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(ev.category.as_str())
            .bind(ev.device_id.clone())
            .bind(since)
            .fetch_optional(&mut **tx)
            .await?;
        match row {
            Some(row) => {
                let r = row_to_case(&row)?;
                // Only an automatic resolve is undone by new data; an operator's verdict
                // stands and new data opens a new case.
                Ok(r.case.auto_resolved.then_some(r))
            }
            None => Ok(None),
        }
    }

    async fn write_labels(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        c: &Case,
        outcome: Outcome,
        actor: &str,
        now: Millis,
    ) -> Result<()> {
        let label = match outcome {
            Outcome::Confirmed => "confirmed",
            Outcome::FalsePositive => "false_positive",
            Outcome::Cleared => return Ok(()),
        };
        let rows = sqlx::query(
            "SELECT metric, MIN(ts) AS s, MAX(ts) AS e, MAX(score) AS m FROM case_anomalies \
             WHERE case_id = $1 GROUP BY metric ORDER BY metric",
        )
        .bind(c.id)
        .fetch_all(&mut **tx)
        .await?;
        let mut per_metric: Vec<(Option<String>, i64, i64, f64)> = Vec::new();
        for r in &rows {
            per_metric.push((
                r.try_get("metric")?,
                r.try_get("s")?,
                r.try_get("e")?,
                r.try_get("m")?,
            ));
        }
        if per_metric.is_empty() {
            per_metric.push((None, c.first_event_ts, c.last_event_ts, c.max_score));
        }
        for (metric, s, e, m) in per_metric {
            sqlx::query(
                "INSERT INTO labels (case_id, device_id, metric, start_ts, end_ts, label, max_score, root_cause, actor, created_at, category) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(c.id)
            .bind(c.device_id.clone())
            .bind(metric)
            .bind(s)
            .bind(e)
            .bind(label)
            .bind(m)
            .bind(c.root_cause.clone())
            .bind(actor.to_owned())
            .bind(now)
            .bind(c.category.as_str())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

fn open_key(category: Category, device: &str) -> String {
    format!("{}|{device}", category.as_str())
}

fn title(category: Category, device: &str, metrics: &[String]) -> String {
    let what = match category {
        Category::Anomaly => "Anomaly",
        Category::Silence => "Silence",
        Category::Gap => "Data gap",
        Category::Pipeline => "Pipeline",
    };
    if metrics.is_empty() {
        format!("{what} on {device}")
    } else {
        let mut m = metrics
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if metrics.len() > 5 {
            m.push_str(&format!(" and {} more", metrics.len() - 5));
        }
        format!("{what} on {device}: {m}")
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn json_col(r: &AnyRow, col: &str) -> Result<serde_json::Value> {
    let s: String = r.try_get(col)?;
    serde_json::from_str(&s).map_err(|e| Error::Corrupt(format!("{col}: {e}")))
}

fn row_to_case(r: &AnyRow) -> Result<Row_> {
    let category: String = r.try_get("category")?;
    let state: String = r.try_get("state")?;
    let outcome: Option<String> = r.try_get("outcome")?;
    let metrics: String = r.try_get("metrics")?;
    let case = Case {
        id: r.try_get("id")?,
        category: Category::parse(&category)
            .ok_or_else(|| Error::Corrupt(format!("category {category:?}")))?,
        device_id: r.try_get("device_id")?,
        state: CaseState::parse(&state)
            .ok_or_else(|| Error::Corrupt(format!("state {state:?}")))?,
        severity: Severity::from_level(r.try_get("severity")?),
        title: r.try_get("title")?,
        metrics: serde_json::from_str(&metrics)
            .map_err(|e| Error::Corrupt(format!("metrics: {e}")))?,
        assignee: r.try_get("assignee")?,
        opened_at: r.try_get("opened_at")?,
        updated_at: r.try_get("updated_at")?,
        first_event_ts: r.try_get("first_event_ts")?,
        last_event_ts: r.try_get("last_event_ts")?,
        last_seen_at: r.try_get("last_seen_at")?,
        resolved_at: r.try_get("resolved_at")?,
        outcome: match outcome.as_deref() {
            None => None,
            Some("confirmed") => Some(Outcome::Confirmed),
            Some("false_positive") => Some(Outcome::FalsePositive),
            Some("cleared") => Some(Outcome::Cleared),
            Some(o) => return Err(Error::Corrupt(format!("outcome {o:?}"))),
        },
        auto_resolved: r.try_get::<i64, _>("auto_resolved")? != 0,
        root_cause: r.try_get("root_cause")?,
        anomaly_count: r.try_get("anomaly_count")?,
        max_score: r.try_get("max_score")?,
        reopen_count: r.try_get("reopen_count")?,
        flap_count: r.try_get("flap_count")?,
        version: r.try_get("version")?,
    };
    Ok(Row_ {
        case,
        notified_severity: r.try_get("notified_severity")?,
    })
}
