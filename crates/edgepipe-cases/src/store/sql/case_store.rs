//! [`CaseStore`] over SQL: the case lifecycle (ingest of events, actions, listing, evidence,
//! the outbox and labels) on the store's shared statements and transactions.

use super::*;

#[async_trait]
impl CaseStore for SqlCaseStore {
    async fn ingest(&self, events: &[CaseEvent], now: Millis) -> Result<IngestOutcome> {
        if events.is_empty() {
            return Ok(IngestOutcome::default());
        }
        let mut tx = self.begin_write().await?;
        self.lock_cases(&mut tx).await?;
        let mut out = IngestOutcome::default();
        for ev in events {
            self.ingest_one(&mut tx, ev, now, &mut out).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn act(&self, id: i64, action: &Action, actor: &str, now: Millis) -> Result<Case> {
        match action {
            Action::Comment { text } if text.trim().is_empty() => {
                return Err(Error::Invalid("comment text is empty".into()));
            }
            Action::Comment { text } if text.len() > 10_000 => {
                return Err(Error::Invalid(format!(
                    "comment is {} bytes; at most 10000",
                    text.len()
                )));
            }
            Action::Assign { assignee: Some(a) } if a.trim().is_empty() || a.len() > 200 => {
                return Err(Error::Invalid(
                    "assignee must be 1 to 200 characters (or null to unassign)".into(),
                ));
            }
            _ => {}
        }
        if actor.is_empty() {
            return Err(Error::Invalid("actor is empty".into()));
        }
        let mut tx = self.begin_write().await?;
        self.lock_cases(&mut tx).await?;
        let mut r = self.load(&mut tx, id).await?;
        let from = r.case.state;
        let Some(to) = from.after(action) else {
            return Err(Error::InvalidTransition {
                id,
                state: from.as_str().to_owned(),
                action: action.name().to_owned(),
                allowed: from.allowed().to_owned(),
            });
        };
        let mut detail = serde_json::to_value(action)?;
        let mut notify_event = None;
        let c = &mut r.case;
        match action {
            Action::Resolve {
                outcome,
                root_cause,
                ..
            } => {
                c.resolved_at = Some(now);
                c.outcome = Some(*outcome);
                c.auto_resolved = false;
                c.root_cause = root_cause.clone();
                notify_event = Some("resolved");
            }
            Action::Reopen { .. } => {
                let key = open_key(c.category, &c.device_id);
                let other = sqlx::query("SELECT id FROM cases WHERE open_key = $1")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(o) = other {
                    let other: i64 = o.try_get("id")?;
                    return Err(Error::InvalidTransition {
                        id,
                        state: from.as_str().to_owned(),
                        action: format!(
                            "reopen while case {other} of the same device and category is open"
                        ),
                        allowed: "comment, assign; or work on the open case".into(),
                    });
                }
                c.resolved_at = None;
                c.outcome = None;
                c.auto_resolved = false;
                c.reopen_count += 1;
                c.last_seen_at = now;
                notify_event = Some("reopened");
            }
            Action::Assign { assignee } => c.assignee = assignee.clone(),
            Action::Acknowledge | Action::Investigate | Action::Comment { .. } => {}
        }
        if let serde_json::Value::Object(m) = &mut detail {
            m.insert("from".into(), from.as_str().into());
            m.insert("to".into(), to.as_str().into());
        }
        c.state = to;
        c.updated_at = now;
        c.version += 1;
        let case = c.clone();
        self.timeline(&mut tx, id, now, actor, action.name(), detail.clone())
            .await?;
        crate::store::audit::audit_in(
            &mut tx,
            actor,
            &format!("case.{}", action.name()),
            &format!("case:{id}"),
            detail,
            now,
        )
        .await?;
        if let Action::Resolve { outcome, .. } = action {
            self.write_labels(&mut tx, &case, *outcome, actor, now)
                .await?;
        }
        if let Some(ev) = notify_event {
            self.notify(&mut tx, &case, ev, now).await?;
        }
        self.save(&mut tx, &r, !to.is_terminal()).await?;
        tx.commit().await?;
        Ok(case)
    }

    async fn auto_resolve(&self, now: Millis) -> Result<Vec<i64>> {
        let quiet_since = now.saturating_sub(ms(self.cfg.window));
        let mut tx = self.begin_write().await?;
        self.lock_cases(&mut tx).await?;
        let sql = format!(
            "SELECT {CASE_COLUMNS} FROM cases WHERE open_key IS NOT NULL \
             AND state IN ('open', 'acknowledged') AND last_seen_at < $1 \
             ORDER BY last_seen_at LIMIT 1000"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(quiet_since)
            .fetch_all(&mut *tx)
            .await?;
        let mut ids = Vec::new();
        for row in rows {
            let r = row_to_case(&row)?;
            ids.push(r.case.id);
            self.close_quiet(&mut tx, r, now, "no event for the window")
                .await?;
        }
        tx.commit().await?;
        Ok(ids)
    }

    async fn get(&self, id: i64) -> Result<CaseDetail> {
        let mut tx = self.pool.begin().await?;
        let case = self.load(&mut tx, id).await?.case;
        let mut anomalies = Vec::new();
        for r in sqlx::query(
            "SELECT event_id, metric, ts, kind, score, model_version, explanation FROM case_anomalies \
             WHERE case_id = $1 ORDER BY ts, event_id LIMIT 1000",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        {
            anomalies.push(CaseAnomaly {
                event_id: r.try_get("event_id")?,
                metric: r.try_get("metric")?,
                ts: r.try_get("ts")?,
                kind: r.try_get("kind")?,
                score: r.try_get("score")?,
                model_version: r.try_get("model_version")?,
                explanation: json_col(&r, "explanation")?,
            });
        }
        let mut timeline = Vec::new();
        for r in sqlx::query(
            "SELECT at, actor, action, detail FROM case_timeline WHERE case_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        {
            timeline.push(TimelineEntry {
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                detail: json_col(&r, "detail")?,
            });
        }
        let mut evidence = Vec::new();
        for r in sqlx::query(
            "SELECT kind, created_at, body FROM case_evidence WHERE case_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        {
            evidence.push(Evidence {
                kind: r.try_get("kind")?,
                created_at: r.try_get("created_at")?,
                body: json_col(&r, "body")?,
            });
        }
        tx.commit().await?;
        Ok(CaseDetail {
            case,
            anomalies,
            timeline,
            evidence,
        })
    }

    async fn list(&self, f: &CaseFilter) -> Result<CasePage> {
        let limit = i64::from(f.limit.unwrap_or(50).clamp(1, 1000));
        let after: Option<i64> = match &f.after {
            Some(a) => Some(a.parse().map_err(|_| {
                Error::Invalid(format!("cursor {a:?} is not one this API returned"))
            })?),
            None => None,
        };
        // Built from fixed fragments; every value is bound.
        let open_only = !f.states.is_empty() && f.states.iter().all(|s| !s.is_terminal());
        // SQLite's planner prefers the (state, …) indexes and sorts every open case; walking
        // the partial index of open cases newest first stops after one page (measured with
        // 1M cases: ~115 ms → ~1 ms). PostgreSQL plans this itself.
        let from = if open_only && f.device_id.is_none() && self.dialect == Dialect::Sqlite {
            "cases INDEXED BY cases_open_id"
        } else {
            "cases"
        };
        let mut sql = format!("SELECT {CASE_COLUMNS} FROM {from} WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if !f.states.is_empty() {
            if open_only {
                // Only open cases: the partial index over them (newest first) answers this
                // without touching the closed ones, however many there are.
                sql.push_str(" AND open_key IS NOT NULL");
            }
            let ps: Vec<String> = f.states.iter().map(|_| next()).collect();
            sql.push_str(&format!(" AND state IN ({})", ps.join(", ")));
        }
        if f.min_severity.is_some() {
            sql.push_str(&format!(" AND severity >= {}", next()));
        }
        if f.device_id.is_some() {
            sql.push_str(&format!(" AND device_id = {}", next()));
        }
        if f.category.is_some() {
            sql.push_str(&format!(" AND category = {}", next()));
        }
        if f.assignee.is_some() {
            sql.push_str(&format!(" AND assignee = {}", next()));
        }
        if after.is_some() {
            sql.push_str(&format!(" AND id < {}", next()));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", next()));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for s in &f.states {
            q = q.bind(s.as_str());
        }
        if let Some(s) = f.min_severity {
            q = q.bind(s.level());
        }
        if let Some(d) = &f.device_id {
            q = q.bind(d.clone());
        }
        if let Some(c) = f.category {
            q = q.bind(c.as_str());
        }
        if let Some(a) = &f.assignee {
            q = q.bind(a.clone());
        }
        if let Some(a) = after {
            q = q.bind(a);
        }
        q = q.bind(limit + 1);
        let rows = q.fetch_all(&self.pool).await?;
        let mut cases = Vec::with_capacity(rows.len());
        for r in &rows {
            cases.push(row_to_case(r)?.case);
        }
        let more = cases.len() as i64 > limit;
        cases.truncate(limit as usize);
        let next = if more {
            cases.last().map(|c| c.id.to_string())
        } else {
            None
        };
        Ok(CasePage { cases, next })
    }

    async fn open_by_device(&self) -> Result<Vec<(String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT device_id, COUNT(*) AS n, MAX(severity) AS s FROM cases \
             WHERE open_key IS NOT NULL GROUP BY device_id ORDER BY device_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("device_id")?, r.try_get("n")?, r.try_get("s")?)))
            .collect()
    }

    async fn add_evidence(&self, id: i64, e: &Evidence) -> Result<()> {
        sqlx::query(
            "INSERT INTO case_evidence (case_id, kind, created_at, body) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(e.kind.clone())
        .bind(e.created_at)
        .bind(e.body.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn outbox_due(&self, now: Millis, limit: u32) -> Result<Vec<OutboxMessage>> {
        let rows = sqlx::query(
            "SELECT id, case_id, channel, idempotency_key, event, payload, created_at, attempts \
             FROM outbox WHERE pending = 1 AND due_at <= $1 ORDER BY id LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxMessage {
                    id: r.try_get("id")?,
                    case_id: r.try_get("case_id")?,
                    channel: r.try_get("channel")?,
                    idempotency_key: r.try_get("idempotency_key")?,
                    event: r.try_get("event")?,
                    payload: json_col(r, "payload")?,
                    created_at: r.try_get("created_at")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    async fn outbox_delivered(&self, ids: &[i64], now: Millis) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE outbox SET pending = 0, delivered_at = $1, attempts = attempts + 1 WHERE id = $2",
            )
            .bind(now)
            .bind(*id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn outbox_failed(&self, ids: &[i64], retry_at: Millis, error: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let error: String = error.chars().take(1000).collect();
        for id in ids {
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, due_at = $1, last_error = $2 WHERE id = $3",
            )
            .bind(retry_at)
            .bind(error.clone())
            .bind(*id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn outbox_stats(&self, now: Millis) -> Result<OutboxStats> {
        let r = sqlx::query(
            "SELECT \
               COALESCE(SUM(CASE WHEN pending = 1 THEN 1 ELSE 0 END), 0) AS pending, \
               COALESCE(SUM(CASE WHEN pending = 1 AND attempts > 0 THEN 1 ELSE 0 END), 0) AS failing, \
               COALESCE(SUM(CASE WHEN pending = 0 THEN 1 ELSE 0 END), 0) AS delivered, \
               MIN(CASE WHEN pending = 1 THEN created_at END) AS oldest \
             FROM outbox",
        )
        .fetch_one(&self.pool)
        .await?;
        let oldest: Option<i64> = r.try_get("oldest")?;
        Ok(OutboxStats {
            pending: r.try_get("pending")?,
            failing: r.try_get("failing")?,
            delivered: r.try_get("delivered")?,
            oldest_pending_ms: oldest.map(|o| now - o),
        })
    }

    async fn labels_since(&self, after: i64, limit: u32) -> Result<Vec<Label>> {
        let rows = sqlx::query(
            "SELECT id, case_id, device_id, metric, start_ts, end_ts, label, max_score, root_cause, actor, created_at, category \
             FROM labels WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Label {
                    id: r.try_get("id")?,
                    case_id: r.try_get("case_id")?,
                    device_id: r.try_get("device_id")?,
                    metric: r.try_get("metric")?,
                    start_ts: r.try_get("start_ts")?,
                    end_ts: r.try_get("end_ts")?,
                    label: r.try_get("label")?,
                    max_score: r.try_get("max_score")?,
                    root_cause: r.try_get("root_cause")?,
                    actor: r.try_get("actor")?,
                    created_at: r.try_get("created_at")?,
                    category: {
                        let c: String = r.try_get("category")?;
                        Category::parse(&c)
                            .ok_or_else(|| Error::Corrupt(format!("label category {c:?}")))?
                    },
                })
            })
            .collect()
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        let r = sqlx::query("SELECT value FROM edgepipe_meta WHERE key = $1")
            .bind(key.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match r {
            Some(r) => Some(r.try_get("value")?),
            None => None,
        })
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO edgepipe_meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key.to_owned())
        .bind(value.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
