//! `edgepipe bench cases` (also `cargo run --release -p edgepipe-cases --example bench-cases`,
//! which builds without the query engine): the case layer's two targets, measured on the real
//! components.
//!
//! 1. Latency at load: anomaly events arrive at `--rate` per second (in small batches, as the
//!    detection stage hands them over) for `--seconds`; for every event the time until its
//!    case change is committed (anomaly → case), and for every opened case the time until a
//!    webhook receiver on a loopback socket has the signed notification (→ webhook sent).
//! 2. Listing: `--cases` cases stored in SQLite (most of them resolved, as in a store that has
//!    lived a while), then the open-case listings the dashboard and API run, each `--runs`
//!    times.
//!
//! Returns one JSON object with medians and p99s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::notify::Notifier;
use crate::{
    CaseEvent, CaseFilter, CaseState, CaseStore, CasesConfig, Category, Severity, SqlCaseStore,
    now_ms,
};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct BenchArgs {
    /// Anomaly events per second.
    pub rate: u64,
    /// Seconds of events.
    pub seconds: u64,
    /// Cases stored for the listing part.
    pub cases: u64,
    /// Runs per listing query.
    pub runs: usize,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn event(i: u64, device: usize, ts: i64) -> CaseEvent {
    CaseEvent {
        id: format!("bench-{i}"),
        category: Category::Anomaly,
        device_id: format!("dev-{device:07}"),
        metric: Some(["temp", "power", "vibration"][(i % 3) as usize].to_owned()),
        metrics: vec![],
        ts,
        kind: "anomaly".into(),
        score: 0.9,
        model_version: "bench".into(),
        explanation: serde_json::json!({"fired": ["pewma"]}),
    }
}

/// A webhook receiver: records the arrival time of each opened case's notification.
async fn receiver(arrivals: Arc<Mutex<HashMap<i64, Instant>>>) -> std::io::Result<String> {
    crate::loopback::webhook_receiver(0, move |(_, body)| {
        let now = Instant::now();
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return;
        };
        let items = match v["event"].as_str() {
            Some("digest") => v["notifications"].as_array().cloned().unwrap_or_default(),
            _ => vec![v],
        };
        let mut a = arrivals.lock().unwrap_or_else(|p| p.into_inner());
        for n in items {
            if n["event"] == "opened"
                && let Some(id) = n["case"]["id"].as_i64()
            {
                a.entry(id).or_insert(now);
            }
        }
    })
    .await
}

/// Runs the benchmark (progress on stderr) and returns its results.
pub async fn run(a: BenchArgs) -> crate::Result<serde_json::Value> {
    let io = |e: std::io::Error| crate::Error::Invalid(format!("bench: {e}"));
    let dir = tempfile::tempdir().map_err(io)?;
    let arrivals: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let url = receiver(arrivals.clone()).await.map_err(io)?;
    let cfg: CasesConfig = serde_json::from_value(serde_json::json!({
        "window": "10m",
        "channels": [{"name": "hook", "type": "webhook", "url": url, "secret": "bench"}],
    }))?;
    let store = Arc::new(
        SqlCaseStore::open(
            &format!("sqlite://{}", dir.path().join("latency.db").display()),
            cfg.clone(),
        )
        .await?,
    );
    let notifier = Notifier::new(store.clone(), Arc::new(cfg))?;
    let waker = notifier.waker();
    let stop = tokio_util::sync::CancellationToken::new();
    let ntask = tokio::spawn(notifier.run(Duration::from_secs(1), stop.clone()));

    // Part 1: events at a steady rate, in batches every 10 ms; every third event is for a new
    // device (a new case), the others join open cases.
    let batch_every = Duration::from_millis(10);
    let per_batch = ((a.rate as f64) * batch_every.as_secs_f64()).max(1.0) as u64;
    let total = a.rate * a.seconds;
    let mut case_ms = Vec::with_capacity(total as usize);
    let mut opened_at: HashMap<i64, Instant> = HashMap::new();
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut next = t0;
    let ts0 = now_ms();
    while sent < total {
        tokio::time::sleep_until(next.into()).await;
        next += batch_every;
        let created = Instant::now();
        let evs: Vec<CaseEvent> = (sent..(sent + per_batch).min(total))
            .map(|i| event(i, (i / 3) as usize, ts0 + i as i64))
            .collect();
        sent += evs.len() as u64;
        let out = store.ingest(&evs, now_ms()).await?;
        let done = created.elapsed().as_secs_f64() * 1000.0;
        case_ms.extend(std::iter::repeat_n(done, evs.len()));
        for id in out.opened {
            opened_at.insert(id, created);
        }
        waker.notify_one();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // Let the last notifications arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let n = arrivals.lock().unwrap_or_else(|p| p.into_inner()).len();
        if n >= opened_at.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let _ = ntask.await;
    let arr = arrivals.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut hook_ms: Vec<f64> = opened_at
        .iter()
        .filter_map(|(id, t)| {
            arr.get(id)
                .map(|r| r.duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    let delivered = hook_ms.len();
    let cases_opened = opened_at.len();

    // Part 2: listing with many cases stored.
    let list_cfg = CasesConfig::default();
    let big = SqlCaseStore::open(
        &format!("sqlite://{}", dir.path().join("big.db").display()),
        list_cfg,
    )
    .await?;
    let bar = indicatif::ProgressBar::new(a.cases);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({per_sec}, {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("storing cases");
    let t_load = Instant::now();
    let day = 86_400_000;
    let mut i = 0u64;
    while i < a.cases {
        let n = 5_000.min(a.cases - i);
        // Each event opens a case for a new device; 95 % of them get resolved right away (in
        // batches, as the auto-resolver would), 5 % stay open.
        let evs: Vec<CaseEvent> = (i..i + n)
            .map(|k| {
                let mut e = event(k, k as usize, ts0 - day + k as i64);
                e.id = format!("list-{k}");
                if k % 7 == 0 {
                    e.category = Category::Silence;
                }
                e.score = if k % 10 == 0 { 0.95 } else { 0.75 };
                e
            })
            .collect();
        big.ingest(&evs, ts0 - day).await?;
        i += n;
        bar.set_position(i);
    }
    bar.set_message("resolving 95 %");
    // Everything quiet since yesterday resolves; then 5 % get a fresh event and reopen.
    loop {
        let ids = big.auto_resolve(ts0).await?;
        if ids.is_empty() {
            break;
        }
    }
    let reopen: Vec<CaseEvent> = (0..a.cases)
        .filter(|k| k % 20 == 0)
        .map(|k| {
            let mut e = event(k, k as usize, ts0 - day + k as i64 + 60_000);
            e.id = format!("list-again-{k}");
            if k % 7 == 0 {
                e.category = Category::Silence;
            }
            e
        })
        .collect();
    for chunk in reopen.chunks(5_000) {
        big.ingest(chunk, ts0 - day + 1).await?;
    }
    bar.finish_and_clear();
    let load_s = t_load.elapsed().as_secs_f64();
    let open_states = vec![
        CaseState::Open,
        CaseState::Acknowledged,
        CaseState::Investigating,
    ];
    let filters: Vec<(&str, CaseFilter)> = vec![
        (
            "open cases, newest 50",
            CaseFilter {
                states: open_states.clone(),
                limit: Some(50),
                ..Default::default()
            },
        ),
        (
            "open cases of severity medium or higher, newest 50",
            CaseFilter {
                states: open_states.clone(),
                min_severity: Some(Severity::Medium),
                limit: Some(50),
                ..Default::default()
            },
        ),
        (
            "open silence cases, newest 50",
            CaseFilter {
                states: open_states.clone(),
                category: Some(Category::Silence),
                limit: Some(50),
                ..Default::default()
            },
        ),
        (
            "one device's cases",
            CaseFilter {
                device_id: Some(format!("dev-{:07}", a.cases / 2)),
                limit: Some(50),
                ..Default::default()
            },
        ),
        (
            "open cases, page 20 (cursor)",
            CaseFilter {
                states: open_states,
                limit: Some(50),
                after: Some((a.cases as i64 - 20 * 50 * 20).max(1).to_string()),
                ..Default::default()
            },
        ),
    ];
    let mut listing = Vec::new();
    for (name, f) in filters {
        let mut ms = Vec::new();
        let mut rows = 0;
        for _ in 0..a.runs {
            let t = Instant::now();
            let page = big.list(&f).await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            rows = page.cases.len();
        }
        listing.push(serde_json::json!({
            "query": name, "rows": rows,
            "median_ms": pct(&mut ms.clone(), 0.5), "p99_ms": pct(&mut ms, 0.99),
        }));
    }
    let open_total: i64 = big.open_by_device().await?.iter().map(|x| x.1).sum();
    let out = serde_json::json!({
        "latency": {
            "events": total,
            "rate_target_per_s": a.rate,
            "rate_achieved_per_s": total as f64 / elapsed,
            "cases_opened": cases_opened,
            "webhooks_received": delivered,
            "anomaly_to_case_ms": {"p50": pct(&mut case_ms.clone(), 0.5), "p99": pct(&mut case_ms.clone(), 0.99), "max": pct(&mut case_ms, 1.0)},
            "anomaly_to_webhook_ms": {"p50": pct(&mut hook_ms.clone(), 0.5), "p99": pct(&mut hook_ms.clone(), 0.99), "max": pct(&mut hook_ms, 1.0)},
        },
        "listing": {
            "cases_stored": a.cases,
            "open_cases": open_total,
            "load_seconds": load_s,
            "queries": listing,
        },
    });
    big.close().await;
    store.close().await;
    Ok(out)
}
