//! Cases end to end: the simulator's labelled fleet becomes cases (one per incident, counted),
//! a notification storm reaches a webhook receiver (Python's `http.server` and `hmac` verify
//! every signature) exactly once per idempotency key in normal operation and at least once
//! through kill -9 of the server, the case API keeps its roles, and every operation of the
//! OpenAPI document exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::support::*;

struct Receiver {
    child: Child,
    out: std::path::PathBuf,
    port: u16,
}

impl Receiver {
    fn start(dir: &Path, secret: &str) -> TestResult<Self> {
        let port = free_port()?;
        let out = dir.join("webhook.jsonl");
        let child = python_peer("webhook_receiver.py")
            .args([&port.to_string(), secret])
            .arg(&out)
            .spawn()?;
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err("webhook receiver did not start".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, out, port })
    }

    fn received(&self) -> TestResult<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        Ok(text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One gap report (an agent's `agent.gap.<stream>.count` reading) per device: each opens a
/// gap case at once (no warm-up), so `devices` reports make a storm of `devices`
/// notifications.
fn gap_storm(srv: &Server, devices: std::ops::Range<usize>, ts: i64) -> TestResult {
    for d in devices {
        let body = format!("{{\"ts\": {ts}, \"metrics\": {{\"agent.gap.modbus.count\": 17}}}}\n");
        ingest_as(srv.http, &format!("storm-{d:04}"), &body)?;
    }
    Ok(())
}

fn storm_config(dir: &Path, receiver: &Receiver, digest_threshold: usize) -> TestResult<String> {
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[detect]\ncheckpoint_interval = \"200ms\"\nlate_after = \"48h\"\n\
             [cases]\ndigest_threshold = {digest_threshold}\nwindow = \"1h\"\n\
             [[cases.channels]]\nname = \"hook\"\ntype = \"webhook\"\n\
             url = \"http://127.0.0.1:{}/hook\"\nsecret = \"storm-secret\"\n",
            receiver.port
        ),
    )?;
    Ok(path.to_str().ok_or("path")?.to_owned())
}

fn wait_outbox_empty(
    srv: &Server,
    want_cases: i64,
    within: Duration,
) -> TestResult<serde_json::Value> {
    let t0 = Instant::now();
    loop {
        let st = srv.status()?;
        let c = &st["cases"];
        if c["cases_opened"].as_i64().unwrap_or(0) >= want_cases
            && c["outbox_pending"].as_i64() == Some(0)
        {
            return Ok(st);
        }
        if t0.elapsed() > within {
            return Err(format!("outbox not drained within {within:?}: {c}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_notification_storm_is_delivered_once_per_key_and_signed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rx = Receiver::start(dir.path(), "storm-secret")?;
    let cfg = storm_config(dir.path(), &rx, 25)?;
    let srv = Server::start(
        &dir.path().join("data"),
        &["--config", &cfg, "--auto-register"],
    )?;
    let now = now_ms();
    gap_storm(&srv, 0..120, now)?;
    wait_outbox_empty(&srv, 120, Duration::from_secs(60))?;
    let got = rx.received()?;
    assert!(
        got.iter().all(|n| n["signature_ok"] == true),
        "every signature verifies"
    );
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for n in &got {
        *per_key
            .entry(n["key"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    let repeated: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "no key twice in normal operation: {repeated:?}"
    );
    let cases: BTreeSet<i64> = got.iter().filter_map(|n| n["case_id"].as_i64()).collect();
    assert_eq!(cases.len(), 120, "one opened notification per case");
    // One case per device: the storm devices' reports did not join each other's cases.
    let page = srv.api(&[&format!(
        "http://{}/api/v1/cases?category=gap&limit=1000",
        srv.http
    )])?;
    let page: serde_json::Value = serde_json::from_slice(&page.stdout)?;
    assert_eq!(page["cases"].as_array().map(Vec::len), Some(120));
    srv.stop()?;
    Ok(())
}

#[test]
fn notifications_survive_kill9_in_a_storm() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let rx = Receiver::start(dir.path(), "storm-secret")?;
    // No digests: every notification is its own request, so kills land between sends.
    let cfg = storm_config(dir.path(), &rx, 100_000)?;
    let mqtt = format!("127.0.0.1:{}", free_port()?);
    let http = format!("127.0.0.1:{}", free_port()?);
    let start = || Server::start_on(&data, &mqtt, &http, &["--config", &cfg, "--auto-register"]);
    let now = now_ms();
    let per_round = 60;
    let rounds = 6;
    for round in 0..rounds {
        let mut srv = start()?;
        gap_storm(&srv, round * per_round..(round + 1) * per_round, now)?;
        if round + 1 < rounds {
            // Kill while the notifier is busy with this round's storm.
            std::thread::sleep(Duration::from_millis(150 + 70 * round as u64));
            srv.kill9()?;
        } else {
            let st = wait_outbox_empty(&srv, 0, Duration::from_secs(90))?;
            let total = (rounds * per_round) as i64;
            let page = srv.api(&[&format!(
                "http://{}/api/v1/cases?category=gap&limit=1000",
                srv.http
            )])?;
            let page: serde_json::Value = serde_json::from_slice(&page.stdout)?;
            let cases = page["cases"].as_array().ok_or("cases")?;
            assert_eq!(
                cases.len() as i64,
                total,
                "one case per device, none lost, none doubled"
            );
            let got = rx.received()?;
            assert!(got.iter().all(|n| n["signature_ok"] == true));
            let keys: BTreeSet<&str> = got.iter().filter_map(|n| n["key"].as_str()).collect();
            for c in cases {
                let id = c["id"].as_i64().ok_or("id")?;
                let key = format!("case-{id}-v1-opened-hook");
                assert!(keys.contains(key.as_str()), "{key} never delivered");
            }
            let dups = got.len() - keys.len();
            println!(
                "kill -9 storm: {} cases, {} notifications received, {} distinct keys, {dups} redelivered after kills, outbox {}",
                cases.len(),
                got.len(),
                keys.len(),
                st["cases"]
            );
            srv.stop()?;
        }
    }
    Ok(())
}

#[test]
fn roles_gate_the_case_api() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let rx = Receiver::start(dir.path(), "storm-secret")?;
    let cfg = storm_config(dir.path(), &rx, 25)?;
    let srv = Server::start(&data, &["--config", &cfg, "--auto-register"])?;
    gap_storm(&srv, 0..1, now_ms())?;
    wait_outbox_empty(&srv, 1, Duration::from_secs(30))?;
    let viewer = add_user(&data, "vera", "viewer")?;
    let operator = add_user(&data, "otto", "operator")?;
    let as_user = |tok: &str,
                   method: &str,
                   path: &str,
                   body: Option<&str>|
     -> TestResult<(u16, serde_json::Value)> {
        let mut args = vec![
            "-s".to_owned(),
            "-o".to_owned(),
            "-".to_owned(),
            "-w".to_owned(),
            "\n%{http_code}".to_owned(),
            "-X".to_owned(),
            method.to_owned(),
            "-H".to_owned(),
            format!("Authorization: Bearer {tok}"),
        ];
        if let Some(b) = body {
            args.extend([
                "-H".into(),
                "Content-Type: application/json".into(),
                "-d".into(),
                b.into(),
            ]);
        }
        args.push(format!("http://{}{path}", srv.http));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = curl(&refs)?;
        let text = String::from_utf8(out.stdout)?;
        let (body, code) = text.rsplit_once('\n').ok_or("no status")?;
        Ok((
            code.parse()?,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        ))
    };
    let (code, list) = as_user(&viewer, "GET", "/api/v1/cases", None)?;
    assert_eq!(code, 200);
    let id = list["cases"][0]["id"].as_i64().ok_or("a case")?;
    let resolve = r#"{"action": "resolve", "outcome": "confirmed"}"#;
    let (code, err) = as_user(
        &viewer,
        "POST",
        &format!("/api/v1/cases/{id}/actions"),
        Some(resolve),
    )?;
    assert_eq!(
        (code, err["code"].as_str()),
        (403, Some("forbidden")),
        "{err}"
    );
    let (code, c) = as_user(
        &operator,
        "POST",
        &format!("/api/v1/cases/{id}/actions"),
        Some(r#"{"action": "acknowledge"}"#),
    )?;
    assert_eq!(
        (code, c["state"].as_str()),
        (200, Some("acknowledged")),
        "{c}"
    );
    let (code, err) = as_user(
        &operator,
        "POST",
        &format!("/api/v1/cases/{id}/actions"),
        Some(r#"{"action": "acknowledge"}"#),
    )?;
    assert_eq!(
        (code, err["code"].as_str()),
        (409, Some("invalid_transition")),
        "{err}"
    );
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot acknowledge")),
        "{err}"
    );
    let (code, err) = as_user(
        &operator,
        "POST",
        &format!("/api/v1/cases/{id}/actions"),
        Some(r#"{"action": "fly"}"#),
    )?;
    assert_eq!(
        (code, err["code"].as_str()),
        (400, Some("bad_request")),
        "{err}"
    );
    let (code, _) = as_user(
        &operator,
        "POST",
        "/api/v1/devices",
        Some(r#"{"id": "new-dev"}"#),
    )?;
    assert_eq!(code, 403, "only an admin manages devices");
    let (code, _) = as_user("ept_not-a-token", "GET", "/api/v1/cases", None)?;
    assert_eq!(code, 401);
    let (code, _) = as_user(&operator, "GET", "/api/v1/cases/999999", None)?;
    assert_eq!(code, 404);
    let (code, err) = as_user(&viewer, "GET", "/api/v1/cases?state=sleeping", None)?;
    assert_eq!(code, 400);
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("sleeping")),
        "{err}"
    );
    // The audit log names who did what.
    let out = srv.api(&[&format!("http://{}/api/v1/audit?limit=50", srv.http)])?;
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let entries = audit["entries"].as_array().ok_or("entries")?;
    assert!(entries.iter().any(|e| e["actor"] == "otto"
        && e["action"] == "case.acknowledge"
        && e["target"] == format!("case:{id}").as_str()));
    srv.stop()?;
    Ok(())
}

fn add_user(data: &Path, name: &str, role: &str) -> TestResult<String> {
    let out = Command::new(bin())
        .args(["users", "--data-dir"])
        .arg(data)
        .args(["add", name, "--role", role])
        .output()?;
    assert!(out.status.success(), "users add: {out:?}");
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .last()
        .ok_or("no token")?
        .trim()
        .to_owned())
}

/// The simulator's labelled fleet (an hour of fleet life in a minute) through the demo; every
/// labelled incident is matched with the cases of its device that overlap it.
#[test]
fn simulated_incidents_become_cases() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let labels = dir.path().join("labels.csv");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[detect]\nlate_after = \"48h\"\ncheckpoint_interval = \"1s\"\n\
         [cases]\nwindow = \"5m\"\nflap_window = \"5m\"\n",
    )?;
    run_demo(
        &data,
        &[
            "--devices",
            "10",
            "--metrics",
            "3",
            "--speedup",
            "60",
            "--start-ago",
            "1h",
            "--duration",
            "60s",
            "--labels",
            labels.to_str().ok_or("path")?,
            "--config",
            cfg.to_str().ok_or("path")?,
        ],
    )?;
    let out = Command::new(bin())
        .args(["cases", "--data-dir"])
        .arg(&data)
        .args(["list", "--limit", "1000", "--format", "json"])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let cases = listed.as_array().ok_or("an array of cases")?;
    assert!(!cases.is_empty(), "the fleet's incidents opened cases");
    let text = std::fs::read_to_string(&labels)?;
    // One incident per injected anomaly: a dropout is labelled once per metric.
    let mut incidents = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() >= 5 {
            let i = (
                f[0].to_owned(),
                f[2].parse::<i64>()?,
                f[3].parse::<i64>()?,
                f[4].to_owned(),
            );
            if !incidents.contains(&i) {
                incidents.push(i);
            }
        }
    }
    let slack = 5 * 60_000;
    let overlaps = |c: &serde_json::Value, dev: &str, s: i64, e: i64| {
        c["device_id"] == dev
            && c["first_event_ts"].as_i64().unwrap_or(0) <= e + slack
            && c["last_event_ts"].as_i64().unwrap_or(0) >= s
    };
    let mut per_incident = Vec::new();
    let mut missed = 0;
    for (dev, s, e, kind) in &incidents {
        let n = cases.iter().filter(|c| overlaps(c, dev, *s, *e)).count();
        if n == 0 {
            missed += 1;
            println!("  no case for {dev} {kind} [{s}, {e}) ms");
        } else {
            per_incident.push(n);
        }
    }
    let unmatched = cases
        .iter()
        .filter(|c| !incidents.iter().any(|(d, s, e, _)| overlaps(c, d, *s, *e)))
        .count();
    let found = per_incident.len();
    let mean = per_incident.iter().sum::<usize>() as f64 / found.max(1) as f64;
    println!(
        "sim fleet → cases: {} incidents, {found} with a case ({mean:.2} cases per incident found), {missed} with no case; {} cases ({:.2} per incident), {unmatched} matching no incident",
        incidents.len(),
        cases.len(),
        cases.len() as f64 / incidents.len().max(1) as f64
    );
    // Correlation's own guarantee, independent of the detector's recall: one device never has
    // two cases of one category open over the same stretch of time.
    let mut by_key: BTreeMap<(String, String), Vec<(i64, i64)>> = BTreeMap::new();
    for c in cases {
        by_key
            .entry((c["device_id"].to_string(), c["category"].to_string()))
            .or_default()
            .push((
                c["first_event_ts"].as_i64().unwrap_or(0),
                c["last_event_ts"].as_i64().unwrap_or(0),
            ));
    }
    for (k, mut spans) in by_key {
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].1 < w[1].0, "{k:?}: cases overlap in time: {w:?}");
        }
    }
    Ok(())
}

/// Every operation in `/api/openapi.json` is routed (none falls through to "no endpoint").
#[test]
fn every_documented_operation_and_dashboard_metric_exists() -> TestResult {
    let dir = tempfile::tempdir()?;
    let srv = Server::start(&dir.path().join("data"), &[])?;
    let out = curl(&[&format!("http://{}/api/openapi.json", srv.http)])?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().ok_or("paths")?;
    let mut checked = 0;
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", "1")
            .replace("{name}", "app.js")
            .replace("{action}", "enable");
        for method in ops.as_object().ok_or("ops")?.keys() {
            if !["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let out = srv.api(&[
                "-X",
                &method.to_uppercase(),
                &format!("http://{}{concrete}", srv.http),
            ])?;
            let body = String::from_utf8_lossy(&out.stdout);
            assert!(
                !body.contains("no endpoint"),
                "{method} {path} is documented but not routed: {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} operations documented");
    // The shipped Grafana dashboard only charts metrics the server exports.
    let metrics = String::from_utf8(curl(&[&format!("http://{}/metrics", srv.http)])?.stdout)?;
    let grafana = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/edgepipe.json"),
    )?;
    let mut names = BTreeSet::new();
    for part in grafana.split("edgepipe_").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && name != "pipeline" {
            names.insert(format!("edgepipe_{name}"));
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for n in &names {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("{n} ")) || l.starts_with(&format!("{n}{{"))),
            "Grafana dashboard charts {n}, which /metrics does not export"
        );
    }
    srv.stop()?;
    Ok(())
}

/// Evidence is kept with a case, and a verdict travels back: resolving an anomaly case as a false positive writes labels to the
/// lake's `labels` table and the detection stage applies them as feedback.
#[test]
fn a_false_positive_verdict_reaches_the_lake_and_the_detector() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let srv = Server::start_detecting(&data)?;
    let base = now_ms() - 2_400_000;
    for b in 0..8usize {
        ingest_as(
            srv.http,
            "pump-9",
            &spike_readings(base, b * 250, (b + 1) * 250, 1_500),
        )?;
    }
    let t0 = Instant::now();
    let id = loop {
        let out = srv.api(&[&format!(
            "http://{}/api/v1/cases?device_id=pump-9&category=anomaly",
            srv.http
        )])?;
        let page: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if let Some(id) = page["cases"][0]["id"].as_i64() {
            break id;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("the spike opened no case".into());
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    // The case keeps its evidence: the raw readings before the spike (so they outlive lake
    // retention), the explanation, and the query of the full window.
    let t0 = Instant::now();
    loop {
        let out = srv.api(&[&format!("http://{}/api/v1/cases/{id}", srv.http)])?;
        let d: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let rows = d["evidence"][0]["body"]["rows"]
            .as_array()
            .map_or(0, Vec::len);
        if d["evidence"][0]["kind"] == "readings" && rows > 100 {
            assert!(d["anomalies"][0]["explanation"]["fired"].is_array(), "{d}");
            assert!(
                d["window_query"]
                    .as_str()
                    .is_some_and(|q| q.contains("pump-9")),
                "{d}"
            );
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!("no readings evidence with the case: {}", d["evidence"]).into());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = srv.api(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"action": "resolve", "outcome": "false_positive", "root_cause": "sensor bumped"}"#,
        &format!("http://{}/api/v1/cases/{id}/actions", srv.http),
    ])?;
    let c: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(c["state"], "false_positive", "{c}");
    let t0 = Instant::now();
    loop {
        let st = srv.status()?;
        let q = srv.query("SELECT metric, label, root_cause, category FROM labels")?;
        let applied = st["detect"]["feedback_applied"].as_i64().unwrap_or(0);
        if applied >= 1 && q["row_count"].as_i64() == Some(1) {
            assert_eq!(q["rows"][0]["label"], "false_positive", "{q}");
            assert_eq!(q["rows"][0]["root_cause"], "sensor bumped", "{q}");
            assert_eq!(q["rows"][0]["category"], "anomaly", "{q}");
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(format!("feedback applied {applied}, labels in the lake: {q}").into());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    srv.stop()?;
    // Training reads the verdict too: the new artifact is scored on it next to the defaults,
    // and --auto-promote promotes it only if it does better.
    let out = Command::new(bin())
        .args(["models", "--data-dir"])
        .arg(&data)
        .args(["train", "--since", "30d", "--auto-promote"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("on 1 labelled intervals"), "{text}");
    let version = text
        .split_whitespace()
        .nth(2)
        .map(|v| v.trim_end_matches(':').to_owned())
        .ok_or("no version printed")?;
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(
        data.join("models").join(format!("{version}.eval")),
    )?)?;
    assert_eq!(eval["labels"], 1, "{eval}");
    assert_eq!(eval["score"]["false_positive"], 1, "{eval}");
    assert_eq!(eval["baseline"][0], "defaults", "{eval}");
    let (new_f1, base_f1) = (
        eval["score"]["f1"].as_f64().ok_or("f1")?,
        eval["baseline"][1]["f1"].as_f64().ok_or("f1")?,
    );
    let fewer_false =
        eval["score"]["fired_on_false"].as_u64() < eval["baseline"][1]["fired_on_false"].as_u64();
    let better = new_f1 > base_f1 + 1e-9 || ((new_f1 - base_f1).abs() <= 1e-9 && fewer_false);
    assert_eq!(eval["promoted"], better, "{eval}");
    assert_eq!(
        text.contains(&format!("promoted {version}")),
        better,
        "{text}"
    );
    println!("{text}");
    Ok(())
}
