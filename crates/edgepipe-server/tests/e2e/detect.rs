//! The detection stage end to end: a spike sent over HTTP becomes one anomaly event in the
//! lake's `anomalies` table, kill -9 during checkpoints never makes it fire twice, and
//! `edgepipe eval nab` scores the public NAB split.

use std::time::Duration;

use crate::support::*;

fn post(srv: &Server, token: &str, body: &str) -> TestResult {
    let out = curl(&[
        "-f",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/x-ndjson",
        "--data-binary",
        body,
        &format!("http://{}/api/v1/ingest", srv.http),
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_spike_fires_once_through_kill9_during_checkpoints() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let token = add_device(&data, "pump")?;
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[detect]\ncheckpoint_interval = \"100ms\"\nlate_after = \"3h\"\n\
         [lake]\nflush_interval = \"200ms\"\n",
    )?;
    let cfg = config.to_str().ok_or("path")?;
    let mqtt = format!("127.0.0.1:{}", free_port()?);
    let http = format!("127.0.0.1:{}", free_port()?);
    let start = || Server::start_on(&data, &mqtt, &http, &["--config", cfg]);
    let base = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64
        - 3000)
        * 1000;
    let mut srv = start()?;
    // 2,000 readings in 8 batches; the spike is in batch 5; kill -9 right after each of the
    // first 6 batches, while the stage is between checkpoints.
    for b in 0..8usize {
        post(
            &srv,
            &token,
            &spike_readings(base, b * 250, (b + 1) * 250, 1_300),
        )?;
        if b < 6 {
            std::thread::sleep(Duration::from_millis(20 + (b as u64 * 37) % 120));
            srv.kill9()?;
            srv = start()?;
        }
    }
    let wal_end = || -> TestResult<(i64, i64)> {
        let v = srv.status()?;
        Ok((
            v["detect"]["checkpointed_wal_seq"].as_i64().unwrap_or(-1),
            v["wal"]["next_seq"].as_i64().unwrap_or(-2),
        ))
    };
    assert!(
        wait_until(Duration::from_secs(30), || wal_end()
            .map(|(a, b)| a == b)
            .unwrap_or(false)),
        "detection stage did not catch up: {:?}",
        wal_end()
    );
    let v = srv.query("SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM anomalies")?;
    assert_eq!(
        v["rows"][0]["n"], v["rows"][0]["ids"],
        "an event fired twice: {v}"
    );
    let spike_ts = base + 1_300 * 1000;
    let v = srv.query(&format!(
        "SELECT event_id, kind, score, value, model_version, replayed FROM anomalies \
             WHERE metric = 'temp' AND CAST(ts AS BIGINT) = {}",
        spike_ts * 1000
    ))?;
    assert_eq!(
        v["row_count"], 1,
        "the spike must raise exactly one event: {v}"
    );
    assert_eq!(v["rows"][0]["value"], 80.0, "{v}");
    assert_eq!(v["rows"][0]["replayed"], false, "{v}");
    let all = srv.query("SELECT count(*) AS n FROM anomalies WHERE kind = 'anomaly'")?;
    eprintln!("detect e2e: events {all}, spike {v}");
    srv.stop()?;
    Ok(())
}

#[test]
fn eval_nab_writes_nab_layout_and_reports_profile_scores() -> TestResult {
    let nab = std::env::var("EDGEPIPE_NAB_DIR").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/datasets/nab").into()
    });
    assert!(
        std::path::Path::new(&nab).join("labels").exists(),
        "NAB data not found at {nab}; set EDGEPIPE_NAB_DIR (.ci/run does)"
    );
    let dir = tempfile::tempdir()?;
    let out_dir = dir.path().join("out");
    let out = edgepipe(&[
        "eval",
        "nab",
        "--data",
        &nab,
        "--out",
        out_dir.to_str().ok_or("path")?,
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("standard"), "{text}");
    let files = walk(&out_dir.join("edgepipe"))?;
    assert!(files > 10, "expected NAB result files, found {files}");
    Ok(())
}

fn walk(dir: &std::path::Path) -> TestResult<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            n += walk(&p)?;
        } else if p.extension().is_some_and(|x| x == "csv") {
            n += 1;
        }
    }
    Ok(n)
}

/// `[detect.retrain]`: the server retrains from its own lake on schedule, scores the new
/// artifact (`<version>.eval`) and, with nothing promoted yet and no labels, promotes it; the
/// detection stage then runs that model.
#[test]
fn scheduled_retraining_promotes_a_model_the_stage_then_runs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let srv = Server::start_with_config(
        &data,
        "[detect]\ncheckpoint_interval = \"200ms\"\nlate_after = \"48h\"\n\
         [detect.retrain]\nevery = \"2s\"\nsince = \"1d\"\n[lake]\nflush_interval = \"1s\"\n",
    )?;
    ingest_as(
        srv.http,
        "pump-3",
        &spike_readings(now_ms() - 600_000, 0, 500, 400),
    )?;
    let t0 = std::time::Instant::now();
    let version = loop {
        if let Ok(v) = std::fs::read_to_string(data.join("models").join("CURRENT")) {
            break v.trim().to_owned();
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("no model promoted by scheduled retraining".into());
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(
        data.join("models").join(format!("{version}.eval")),
    )?)?;
    assert_eq!(eval["promoted"], true, "{eval}");
    assert!(eval["series"].as_u64().unwrap_or(0) >= 1, "{eval}");
    let t0 = std::time::Instant::now();
    loop {
        if srv.status()?["detect"]["model_version"] == version.as_str() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!("the stage never swapped in {version}").into());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    srv.stop()?;
    Ok(())
}

/// `quiet-1` reports temp and load every second for a minute (one reading also carries an
/// agent gap report), then stops; `busy-1` goes on at 4 Hz for 200 s, moving the stage's
/// silence clock (event time) past `quiet-1`'s usual interval. All of it stamped 50 minutes
/// ago. Returns the base timestamp once the detection stage has caught up.
fn feed_a_device_that_stops(srv: &Server) -> TestResult<i64> {
    let base = (now_ms() / 1000 - 3000) * 1000;
    let quiet: String = (0..60i64)
        .map(|i| {
            let gap = if i == 20 {
                ", \"agent.gap.main.count\": 3"
            } else {
                ""
            };
            format!(
                "{{\"ts\": {}, \"metrics\": {{\"temp\": {:.2}, \"load\": {:.2}{gap}}}}}\n",
                base + i * 1000 + 250,
                20.0 + (i % 7) as f64 / 10.0,
                0.5 + (i % 5) as f64 / 20.0
            )
        })
        .collect();
    ingest_as(srv.http, "quiet-1", &quiet)?;
    // One request (one WAL record) per second of `busy-1`: the silence clock moves per record.
    for sec in 0..200i64 {
        let busy: String = (0..4i64)
            .map(|q| {
                format!(
                    "{{\"ts\": {}, \"metrics\": {{\"temp\": {:.2}}}}}\n",
                    base + sec * 1000 + q * 250 + 30,
                    30.0 + ((sec + q) % 9) as f64 / 10.0
                )
            })
            .collect();
        ingest_as(srv.http, "busy-1", &busy)?;
    }
    let caught_up = || -> bool {
        srv.status()
            .map(|v| {
                v["detect"]["checkpointed_wal_seq"].as_i64().unwrap_or(-1)
                    == v["wal"]["next_seq"].as_i64().unwrap_or(-2)
            })
            .unwrap_or(false)
    };
    if !wait_until(Duration::from_secs(30), caught_up) {
        return Err("detection stage did not catch up".into());
    }
    Ok(base)
}

#[test]
fn a_device_that_stops_reporting_raises_one_silence_event_and_gap_reports_become_gap_events()
-> TestResult {
    // Readings 50 minutes old count as live with late_after = 3h. The stage checks for
    // silence when its clock enters a new second, so the event comes at most about a second
    // after the limit.
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let srv = Server::start_with_config(
        &data,
        "[detect]\ncheckpoint_interval = \"200ms\"\nlate_after = \"3h\"\n\
         [lake]\nflush_interval = \"500ms\"\n",
    )?;
    let base = feed_a_device_that_stops(&srv)?;
    let v = srv.query(
        "SELECT device_id, metric, CAST(ts AS BIGINT) AS ts_us, replayed FROM anomalies \
         WHERE kind = 'silence' ORDER BY ts",
    )?;
    assert_eq!(v["row_count"], 1, "one device-wide silence event: {v}");
    assert_eq!(v["rows"][0]["replayed"], false, "live: {v}");
    let row = &v["rows"][0];
    assert_eq!(row["device_id"], "quiet-1", "{v}");
    assert!(row["metric"].is_null(), "device-wide, not per metric: {v}");
    let last_quiet_ms = base + 59 * 1000 + 250;
    let after = row["ts_us"].as_i64().ok_or("ts")? / 1000 - last_quiet_ms;
    // The limit is max(5 x the 1 s interval, 10 s); checked once per second of event time.
    assert!(
        after > 10_000 && after <= 11_250,
        "silence reported {after} ms after the last reading: {v}"
    );
    let g = srv.query(
        "SELECT device_id, metric, value, CAST(ts AS BIGINT) AS ts_us FROM anomalies \
         WHERE kind = 'gap'",
    )?;
    assert_eq!(g["row_count"], 1, "one gap event: {g}");
    assert_eq!(g["rows"][0]["device_id"], "quiet-1", "{g}");
    assert_eq!(g["rows"][0]["metric"], "agent.gap.main.count", "{g}");
    assert_eq!(g["rows"][0]["value"], 3.0, "{g}");
    assert_eq!(
        g["rows"][0]["ts_us"].as_i64(),
        Some((base + 20 * 1000 + 250) * 1000),
        "{g}"
    );
    srv.stop()?;
    Ok(())
}

/// The same stop, in data the server receives 50 minutes after its event time with
/// late_after = 10m (a backlog, a demo's catch-up): the silence is recorded, marked replayed,
/// and opens no case, as anomalies in replayed data do; and the fleet page shows the devices
/// that sent the backlog as online, seen just now (receive time), with their newest reading's
/// old event time beside it.
#[test]
fn a_backlog_shows_online_by_receive_time_and_its_silence_opens_no_case() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let srv = Server::start_with_config(
        &data,
        "[detect]\ncheckpoint_interval = \"200ms\"\nlate_after = \"10m\"\n\
         [lake]\nflush_interval = \"500ms\"\n",
    )?;
    let base = feed_a_device_that_stops(&srv)?;
    let fleet = srv.api(&[&format!("http://{}/api/v1/fleet", srv.http)])?;
    let fleet: serde_json::Value = serde_json::from_slice(&fleet.stdout)?;
    let busy = fleet["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|x| x["device_id"] == "busy-1"))
        .ok_or_else(|| format!("busy-1 not in the fleet: {fleet}"))?;
    assert_eq!(busy["online"], true, "{busy}");
    let seen = busy["last_seen_ms"].as_i64().ok_or("last_seen_ms")?;
    assert!(
        now_ms() - seen < 60_000,
        "last seen {} ms ago: {busy}",
        now_ms() - seen
    );
    let newest = busy["last_reading_ts_ms"]
        .as_i64()
        .ok_or("last_reading_ts_ms")?;
    assert_eq!(newest, base + 199 * 1000 + 3 * 250 + 30, "{busy}");
    let v = srv.query("SELECT device_id, replayed FROM anomalies WHERE kind = 'silence'")?;
    assert_eq!(v["row_count"], 1, "the silence is still recorded: {v}");
    assert_eq!(v["rows"][0]["replayed"], true, "{v}");
    // Give the case manager time to act on anything it was handed, then look.
    std::thread::sleep(Duration::from_secs(2));
    let page = srv.api(&[&format!(
        "http://{}/api/v1/cases?category=silence&limit=100",
        srv.http
    )])?;
    let page: serde_json::Value = serde_json::from_slice(&page.stdout)?;
    assert_eq!(
        page["cases"].as_array().map(Vec::len),
        Some(0),
        "no silence case from replayed data: {page}"
    );
    srv.stop()?;
    Ok(())
}
