//! Behaviour suite of the case store, run against SQLite and PostgreSQL (the real server on
//! 127.0.0.1:5432; each run gets its own database, dropped at the end).

use crate::model::*;
use crate::store::{CaseStore, SqlCaseStore};
use crate::{CasesConfig, Error};

const MIN: i64 = 60_000;

fn cfg() -> CasesConfig {
    serde_json::from_value(serde_json::json!({
        "window": "10m",
        "flap_window": "30m",
        "channels": [
            {"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/", "secret": "s"},
            {"name": "oncall", "type": "webhook", "url": "http://127.0.0.1:9/", "secret": "s"}
        ],
        "routes": [
            {"channel": "ops"},
            {"channel": "oncall", "min_severity": "high", "events": ["opened", "escalated"]}
        ],
        "criticality": {"pressure": 2}
    }))
    .expect("test config")
}

fn ev(id: &str, device: &str, metric: &str, ts: i64, score: f64) -> CaseEvent {
    CaseEvent {
        id: id.into(),
        category: Category::Anomaly,
        device_id: device.into(),
        metric: Some(metric.into()),
        metrics: vec![],
        ts,
        kind: "anomaly".into(),
        score,
        model_version: "m1-test".into(),
        explanation: serde_json::json!({"fired": ["pewma"], "expected": [1.0, 2.0]}),
    }
}

/// A fresh store of each kind.
struct Backend {
    name: &'static str,
    url: String,
    _dir: Option<tempfile::TempDir>,
    pg_db: Option<String>,
}

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl Backend {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/cases.db", dir.path().display());
        Self {
            name: "sqlite",
            url,
            _dir: Some(dir),
            pg_db: None,
        }
    }

    async fn postgres() -> Self {
        sqlx::any::install_default_drivers();
        use rand::Rng;
        let db = format!("edgepipe_cases_{:016x}", rand::rng().random::<u64>());
        let admin = sqlx::AnyPool::connect(PG_ADMIN)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (started before the session and by .ci/run)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        Self {
            name: "postgres",
            url: format!("postgres://postgres@127.0.0.1:5432/{db}"),
            _dir: None,
            pg_db: Some(db),
        }
    }

    async fn open(&self, cfg: CasesConfig) -> SqlCaseStore {
        SqlCaseStore::open(&self.url, cfg)
            .await
            .unwrap_or_else(|e| panic!("{}: open: {e}", self.name))
    }

    async fn drop_db(self) {
        if let Some(db) = self.pg_db
            && let Ok(admin) = sqlx::AnyPool::connect(PG_ADMIN).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
            )))
            .execute(&admin)
            .await;
            admin.close().await;
        }
    }
}

async fn suite(b: &Backend) {
    correlation_and_dedup(b).await;
    concurrent_events_open_one_case(b).await;
    lifecycle_and_invalid_transitions(b).await;
    auto_resolve_and_flapping(b).await;
    escalation_notifies_once(b).await;
    outbox_lifecycle(b).await;
    labels_from_verdicts(b).await;
    list_filters_and_pages(b).await;
    reopens_after_restart(b).await;
    users_and_audit(b).await;
    // Last: it tampers with the (shared) audit log.
    audit_chain_names_the_first_tampered_entry(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_sqlite() {
    let b = Backend::sqlite().await;
    suite(&b).await;
    b.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_postgres() {
    let b = Backend::postgres().await;
    suite(&b).await;
    b.drop_db().await;
}

/// Each step uses its own devices, so steps do not see each other's cases.
async fn correlation_and_dedup(b: &Backend) {
    let s = b.open(cfg()).await;
    let t = 1_700_000_000_000;
    let out = s
        .ingest(
            &[
                ev("c1", "corr-a", "temp", t, 0.995),
                ev("c2", "corr-a", "vib", t + MIN, 0.995),
                ev("c3", "corr-b", "temp", t, 0.995),
            ],
            t,
        )
        .await
        .expect("ingest");
    assert_eq!(out.accepted, 3, "{}", b.name);
    assert_eq!(out.opened.len(), 2, "{}: two devices, two cases", b.name);
    // Redelivery after a crash: the same ids again change nothing.
    let again = s
        .ingest(&[ev("c1", "corr-a", "temp", t, 0.995)], t + 1)
        .await
        .expect("ingest");
    assert_eq!((again.accepted, again.duplicates), (0, 1), "{}", b.name);
    let page = s
        .list(&CaseFilter {
            device_id: Some("corr-a".into()),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(page.cases.len(), 1, "{}", b.name);
    let c = &page.cases[0];
    assert_eq!(c.anomaly_count, 2);
    assert_eq!(c.metrics, vec!["temp".to_owned(), "vib".to_owned()]);
    assert_eq!(c.title, "Anomaly on corr-a: temp, vib");
    let d = s.get(c.id).await.expect("get");
    assert_eq!(d.anomalies.len(), 2);
    assert_eq!(d.anomalies[0].explanation["fired"][0], "pewma");
    assert_eq!(d.timeline[0].action, "opened");
    assert!(d.timeline.iter().any(|e| e.action == "metrics_added"));
    assert!(matches!(
        s.get(999_999).await,
        Err(Error::NotFound(999_999))
    ));
    // Event time past the window while the case is still open (a backlog arriving faster
    // than real time): within the flap window the event continues the case; past it the
    // case closes automatically and the event opens a new one.
    let b_case = out.opened[1];
    let o = s
        .ingest(&[ev("c4", "corr-b", "temp", t + 20 * MIN, 0.995)], t + 2)
        .await
        .expect("ingest");
    assert_eq!(o.attached, vec![b_case], "{}", b.name);
    let o = s
        .ingest(&[ev("c5", "corr-b", "temp", t + 55 * MIN, 0.995)], t + 3)
        .await
        .expect("ingest");
    assert_eq!(o.opened.len(), 1, "{}", b.name);
    let old = s.get(b_case).await.expect("get");
    assert!(old.case.auto_resolved);
    assert!(old.timeline.iter().any(|e| e.action == "auto_resolved"
        && e.detail["reason"] == "no event within the flap window (event time)"));
    // An investigated case is never closed by the system, however late the next event.
    let inv = s
        .ingest(&[ev("c6", "corr-inv", "temp", t, 0.995)], t)
        .await
        .expect("ingest")
        .opened[0];
    s.act(inv, &Action::Investigate, "bob", t + 1)
        .await
        .expect("investigate");
    let o = s
        .ingest(&[ev("c7", "corr-inv", "temp", t + 300 * MIN, 0.995)], t + 2)
        .await
        .expect("ingest");
    assert_eq!(o.attached, vec![inv], "{}", b.name);
    s.close().await;
}

/// ThingsBoard's known failure: concurrent events creating duplicate alarms. Several writers
/// (separate pools, as separate processes would be) race on one device.
async fn concurrent_events_open_one_case(b: &Backend) {
    let t = 1_700_000_000_000;
    let mut tasks = Vec::new();
    for w in 0..6 {
        let store = b.open(cfg()).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let id = format!("race-{w}-{i}");
                store
                    .ingest(&[ev(&id, "race-dev", "temp", t + i, 0.995)], t)
                    .await
                    .expect("concurrent ingest");
            }
            store.close().await;
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let s = b.open(cfg()).await;
    let page = s
        .list(&CaseFilter {
            device_id: Some("race-dev".into()),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        page.cases.len(),
        1,
        "{}: one case, not one per writer",
        b.name
    );
    assert_eq!(page.cases[0].anomaly_count, 60, "{}", b.name);
    s.close().await;
}

async fn lifecycle_and_invalid_transitions(b: &Backend) {
    let s = b.open(cfg()).await;
    let t = 1_700_000_000_000;
    let out = s
        .ingest(&[ev("l1", "life", "temp", t, 0.995)], t)
        .await
        .expect("ingest");
    let id = out.opened[0];
    let c = s
        .act(id, &Action::Acknowledge, "alice", t + 1)
        .await
        .expect("ack");
    assert_eq!(c.state, CaseState::Acknowledged);
    let err = s
        .act(id, &Action::Acknowledge, "alice", t + 2)
        .await
        .expect_err("ack twice");
    assert!(
        matches!(&err, Error::InvalidTransition { state, action, .. } if state == "acknowledged" && action == "acknowledge"),
        "{err}"
    );
    s.act(
        id,
        &Action::Assign {
            assignee: Some("bob".into()),
        },
        "alice",
        t + 3,
    )
    .await
    .expect("assign");
    s.act(
        id,
        &Action::Comment {
            text: "looking at the pump".into(),
        },
        "bob",
        t + 4,
    )
    .await
    .expect("comment");
    assert!(matches!(
        s.act(id, &Action::Comment { text: "  ".into() }, "bob", t + 4)
            .await,
        Err(Error::Invalid(_))
    ));
    s.act(id, &Action::Investigate, "bob", t + 5)
        .await
        .expect("investigate");
    let resolve = Action::Resolve {
        outcome: Outcome::Confirmed,
        root_cause: Some("bearing wear".into()),
        note: None,
    };
    let c = s.act(id, &resolve, "bob", t + 6).await.expect("resolve");
    assert_eq!(c.state, CaseState::Resolved);
    assert_eq!(c.root_cause.as_deref(), Some("bearing wear"));
    assert!(matches!(
        s.act(id, &Action::Investigate, "bob", t + 7).await,
        Err(Error::InvalidTransition { .. })
    ));
    // A manual verdict stands: new data opens a new case.
    let out2 = s
        .ingest(&[ev("l2", "life", "temp", t + 8, 0.995)], t + 8)
        .await
        .expect("ingest");
    assert_eq!(out2.opened.len(), 1);
    // Reopening the old one while the new one is open is refused.
    let err = s
        .act(id, &Action::Reopen { note: None }, "bob", t + 9)
        .await
        .expect_err("second open case");
    assert!(err.to_string().contains("is open"), "{err}");
    s.act(out2.opened[0], &resolve, "bob", t + 10)
        .await
        .expect("resolve");
    let c = s
        .act(
            id,
            &Action::Reopen {
                note: Some("came back".into()),
            },
            "bob",
            t + 11,
        )
        .await
        .expect("reopen");
    assert_eq!((c.state, c.reopen_count), (CaseState::Open, 1));
    let d = s.get(id).await.expect("get");
    let actions: Vec<&str> = d.timeline.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "opened",
            "acknowledge",
            "assign",
            "comment",
            "investigate",
            "resolve",
            "reopen"
        ]
    );
    assert_eq!(d.timeline[1].actor, "alice");
    assert_eq!(d.timeline[3].detail["text"], "looking at the pump");
    assert_eq!(d.case.assignee.as_deref(), Some("bob"));
    s.close().await;
}

async fn auto_resolve_and_flapping(b: &Backend) {
    let s = b.open(cfg()).await;
    let t = 1_700_000_000_000;
    let a = s
        .ingest(&[ev("f1", "flap", "temp", t, 0.995)], t)
        .await
        .expect("ingest")
        .opened[0];
    // Six minutes long: its severity already counts the duration, so the flap below does not
    // escalate it.
    s.ingest(
        &[ev("f1b", "flap", "temp", t + 6 * MIN, 0.995)],
        t + 6 * MIN,
    )
    .await
    .expect("ingest");
    let inv = s
        .ingest(&[ev("f2", "flap-inv", "temp", t, 0.995)], t)
        .await
        .expect("ingest")
        .opened[0];
    s.act(inv, &Action::Investigate, "alice", t)
        .await
        .expect("investigate");
    assert!(
        !s.auto_resolve(t + 15 * MIN)
            .await
            .expect("auto")
            .contains(&a)
    );
    let resolved = s.auto_resolve(t + 17 * MIN).await.expect("auto");
    assert!(resolved.contains(&a), "{}", b.name);
    assert!(!resolved.contains(&inv), "investigating cases stay open");
    let c = s.get(a).await.expect("get").case;
    assert!(c.auto_resolved);
    assert_eq!(c.outcome, Some(Outcome::Cleared));
    // Back within the flap window: the same case, not a new one, and no new "opened".
    let out = s
        .ingest(
            &[ev("f3", "flap", "temp", t + 18 * MIN, 0.995)],
            t + 18 * MIN,
        )
        .await
        .expect("ingest");
    assert_eq!(out.reopened, vec![a], "{}", b.name);
    assert!(out.opened.is_empty());
    assert_eq!(out.notifications, 0, "a flap is not notified again");
    let c = s.get(a).await.expect("get").case;
    assert_eq!((c.state, c.flap_count), (CaseState::Open, 1));
    // Quiet again, then back after the flap window: a new case.
    s.auto_resolve(t + 30 * MIN).await.expect("auto");
    let out = s
        .ingest(
            &[ev("f4", "flap", "temp", t + 70 * MIN, 0.995)],
            t + 70 * MIN,
        )
        .await
        .expect("ingest");
    assert_eq!(out.opened.len(), 1);
    assert_ne!(out.opened[0], a);
    s.close().await;
}

async fn escalation_notifies_once(b: &Backend) {
    let s = b.open(cfg()).await;
    let t = 1_700_000_000_000;
    let out = s
        .ingest(&[ev("e1", "esc", "temp", t, 0.995)], t)
        .await
        .expect("ingest");
    // Low severity: only the catch-all route.
    assert_eq!(out.notifications, 1, "{}", b.name);
    let id = out.opened[0];
    // pressure is critical (+2) and a second metric (+1): low → critical, which also reaches
    // on-call.
    let out = s
        .ingest(&[ev("e2", "esc", "pressure", t + 1000, 0.995)], t + 1000)
        .await
        .expect("ingest");
    assert_eq!(out.notifications, 2, "{}", b.name);
    let out = s
        .ingest(&[ev("e3", "esc", "pressure", t + 2000, 0.995)], t + 2000)
        .await
        .expect("ingest");
    assert_eq!(out.notifications, 0, "same severity: no repeat");
    let d = s.get(id).await.expect("get");
    assert_eq!(
        d.case.severity,
        Severity::Critical,
        "low + breadth + critical metric"
    );
    assert_eq!(
        d.timeline
            .iter()
            .filter(|e| e.action == "escalated")
            .count(),
        1
    );
    s.close().await;
}

async fn outbox_lifecycle(b: &Backend) {
    // A store of its own, so the outbox holds only this step's notifications.
    let b2 = match b.name {
        "sqlite" => Backend::sqlite().await,
        _ => Backend::postgres().await,
    };
    let s = b2.open(cfg()).await;
    let t = 1_700_000_000_000;
    let id = s
        .ingest(&[ev("o1", "ob", "temp", t, 0.995)], t)
        .await
        .expect("ingest")
        .opened[0];
    s.act(
        id,
        &Action::Resolve {
            outcome: Outcome::Confirmed,
            root_cause: None,
            note: None,
        },
        "alice",
        t + 1,
    )
    .await
    .expect("resolve");
    let due = s.outbox_due(t + 1, 100).await.expect("due");
    let events: Vec<(&str, &str)> = due
        .iter()
        .map(|m| (m.event.as_str(), m.channel.as_str()))
        .collect();
    assert_eq!(
        events,
        [("opened", "ops"), ("resolved", "ops")],
        "{}",
        b.name
    );
    assert_eq!(due[0].payload["case"]["id"], id);
    assert_ne!(due[0].idempotency_key, due[1].idempotency_key);
    s.outbox_failed(&[due[0].id], t + 10_000, "HTTP 503")
        .await
        .expect("failed");
    s.outbox_delivered(&[due[1].id], t + 2)
        .await
        .expect("delivered");
    let st = s.outbox_stats(t + 3).await.expect("stats");
    assert_eq!(
        (st.pending, st.failing, st.delivered),
        (1, 1, 1),
        "{}",
        b.name
    );
    assert!(s.outbox_due(t + 5_000, 100).await.expect("due").is_empty());
    let again = s.outbox_due(t + 10_000, 100).await.expect("due");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    s.close().await;
    b2.drop_db().await;
}

async fn labels_from_verdicts(b: &Backend) {
    let s = b.open(cfg()).await;
    let t = 1_700_000_000_000;
    let before = s.labels_since(0, 10_000).await.expect("labels").len();
    let id = s
        .ingest(
            &[
                ev("lb1", "lab", "temp", t, 0.991),
                ev("lb2", "lab", "temp", t + 5000, 0.997),
                ev("lb3", "lab", "vib", t + 2000, 0.993),
            ],
            t,
        )
        .await
        .expect("ingest")
        .opened[0];
    s.act(
        id,
        &Action::Resolve {
            outcome: Outcome::FalsePositive,
            root_cause: Some("sensor recalibration".into()),
            note: None,
        },
        "alice",
        t + 10_000,
    )
    .await
    .expect("resolve");
    let all = s.labels_since(0, 10_000).await.expect("labels");
    let labels: Vec<&Label> = all[before..].iter().collect();
    assert_eq!(labels.len(), 2, "{}: one label per metric", b.name);
    let temp = labels
        .iter()
        .find(|l| l.metric.as_deref() == Some("temp"))
        .expect("temp");
    assert_eq!((temp.start_ts, temp.end_ts), (t, t + 5000));
    assert!((temp.max_score - 0.997).abs() < 1e-12);
    assert_eq!(temp.label, "false_positive");
    assert_eq!(temp.category, Category::Anomaly);
    assert_eq!(temp.root_cause.as_deref(), Some("sensor recalibration"));
    let last = labels.iter().map(|l| l.id).max().expect("ids");
    assert!(s.labels_since(last, 10).await.expect("labels").is_empty());
    s.close().await;
}

async fn list_filters_and_pages(b: &Backend) {
    let s = b.open(cfg()).await;
    let t = 1_700_000_000_000;
    let mut evs = Vec::new();
    for d in 0..25 {
        evs.push(ev(
            &format!("pg{d}"),
            &format!("page-{d:02}"),
            "temp",
            t,
            0.995,
        ));
    }
    evs.push(ev("pgp", "page-00", "pressure", t, 0.9995));
    s.ingest(&evs, t).await.expect("ingest");
    let mut seen = Vec::new();
    let mut f = CaseFilter {
        limit: Some(10),
        states: vec![CaseState::Open],
        ..Default::default()
    };
    loop {
        let page = s.list(&f).await.expect("list");
        seen.extend(
            page.cases
                .iter()
                .filter(|c| c.device_id.starts_with("page-"))
                .map(|c| c.id),
        );
        match page.next {
            Some(n) => f.after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25, "{}: every case once across pages", b.name);
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");
    let high = s
        .list(&CaseFilter {
            min_severity: Some(Severity::High),
            device_id: Some("page-00".into()),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(high.cases.len(), 1);
    assert!(matches!(
        s.list(&CaseFilter {
            after: Some("x".into()),
            ..Default::default()
        })
        .await,
        Err(Error::Invalid(_))
    ));
    let by_dev = s.open_by_device().await.expect("open by device");
    assert!(by_dev.iter().any(|(d, n, _)| d == "page-00" && *n == 1));
    s.close().await;
}

async fn reopens_after_restart(b: &Backend) {
    let t = 1_700_000_000_000;
    let id = {
        let s = b.open(cfg()).await;
        let id = s
            .ingest(&[ev("r1", "restart", "temp", t, 0.995)], t)
            .await
            .expect("ingest")
            .opened[0];
        s.set_meta("labels_exported", "7").await.expect("meta");
        s.close().await;
        id
    };
    let s = b.open(cfg()).await;
    let out = s
        .ingest(&[ev("r2", "restart", "temp", t + 1, 0.995)], t + 1)
        .await
        .expect("ingest");
    assert_eq!(out.attached, vec![id], "{}", b.name);
    assert_eq!(
        s.get_meta("labels_exported")
            .await
            .expect("meta")
            .as_deref(),
        Some("7")
    );
    s.close().await;
}

async fn users_and_audit(b: &Backend) {
    use crate::store::Role;
    let s = b.open(cfg()).await;
    let tok = s
        .user_put("alice", Role::Operator, false, "admin")
        .await
        .expect("add");
    assert!(tok.starts_with("ept_") && tok.len() == 68);
    let u = s
        .authenticate(&tok)
        .await
        .expect("auth")
        .expect("known token");
    assert_eq!((u.name.as_str(), u.role), ("alice", Role::Operator));
    assert!(s.authenticate("ept_wrong").await.expect("auth").is_none());
    assert!(matches!(
        s.user_put("alice", Role::Admin, false, "admin").await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        s.user_put("bad name", Role::Admin, false, "admin").await,
        Err(Error::Invalid(_))
    ));
    let tok2 = s
        .user_put("alice", Role::Viewer, true, "admin")
        .await
        .expect("rotate");
    assert!(
        s.authenticate(&tok).await.expect("auth").is_none(),
        "old token revoked"
    );
    s.user_set_disabled("alice", true, "admin")
        .await
        .expect("disable");
    assert!(
        s.authenticate(&tok2).await.expect("auth").is_none(),
        "disabled"
    );
    let t = 1_700_000_000_000;
    let id = s
        .ingest(&[ev("au1", "audit", "temp", t, 0.995)], t)
        .await
        .expect("ingest")
        .opened[0];
    s.act(id, &Action::Acknowledge, "carol", t + 1)
        .await
        .expect("ack");
    let log = s.audit_log(None, 10).await.expect("audit");
    assert_eq!(log[0].action, "case.acknowledge", "{}", b.name);
    assert_eq!(
        (log[0].actor.as_str(), log[0].target.clone()),
        ("carol", format!("case:{id}"))
    );
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    for a in ["user.add", "user.rotate_token", "user.disable"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    s.close().await;
}

#[tokio::test]
async fn bad_urls_are_named() {
    let e = SqlCaseStore::open("mysql://x", CasesConfig::default())
        .await
        .expect_err("unsupported");
    assert!(
        e.to_string().contains("sqlite://PATH or postgres://"),
        "{e}"
    );
    let e = SqlCaseStore::open(
        "sqlite:///nonexistent-dir/x/cases.db",
        CasesConfig::default(),
    )
    .await
    .expect_err("unopenable");
    assert!(e.to_string().contains("case store"), "{e}");
}

/// Concurrent appends keep one chain; an edited entry, a removed one and a cut tail are each
/// named by `audit_verify`.
async fn audit_chain_names_the_first_tampered_entry(b: &Backend) {
    let s = b.open(cfg()).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                s.audit(
                    &format!("writer-{w}"),
                    "test.append",
                    &format!("n:{i}"),
                    serde_json::json!({"i": i}),
                )
                .await
                .expect("audit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let r = s.audit_verify().await.expect("verify");
    assert_eq!(r.broken, None, "{}: {r:?}", b.name);
    assert!(r.entries >= 80, "{}: {r:?}", b.name);
    let pool = sqlx::AnyPool::connect(&b.url).await.expect("connect");
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM audit_log WHERE hash <> '' ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("ids");
    let (mid, last) = (ids[ids.len() / 2], ids[ids.len() - 1]);
    // An edit.
    let actor: String = sqlx::query_scalar("SELECT actor FROM audit_log WHERE id = $1")
        .bind(mid)
        .fetch_one(&pool)
        .await
        .expect("actor");
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE id = $1")
        .bind(mid)
        .execute(&pool)
        .await
        .expect("edit");
    let r = s.audit_verify().await.expect("verify");
    let (at, why) = r.broken.expect("the edit is found");
    assert_eq!(at, mid, "{}", b.name);
    assert!(why.contains("edited"), "{why}");
    sqlx::query("UPDATE audit_log SET actor = $1 WHERE id = $2")
        .bind(actor)
        .bind(mid)
        .execute(&pool)
        .await
        .expect("restore");
    assert_eq!(s.audit_verify().await.expect("verify").broken, None);
    // A cut tail.
    sqlx::query("DELETE FROM audit_log WHERE id = $1")
        .bind(last)
        .execute(&pool)
        .await
        .expect("cut");
    let (at, why) = s
        .audit_verify()
        .await
        .expect("verify")
        .broken
        .expect("the cut is found");
    assert_eq!(at, 0, "{}: {why}", b.name);
    assert!(why.contains("cut from the end"), "{why}");
    // A removed entry in the middle: the next one's link breaks.
    sqlx::query("DELETE FROM audit_log WHERE id = $1")
        .bind(mid)
        .execute(&pool)
        .await
        .expect("delete");
    let (at, why) = s
        .audit_verify()
        .await
        .expect("verify")
        .broken
        .expect("the gap is found");
    let next = ids.iter().copied().find(|i| *i > mid).expect("next");
    assert_eq!(at, next, "{}: {why}", b.name);
    assert!(why.contains("removed"), "{why}");
    pool.close().await;
}
