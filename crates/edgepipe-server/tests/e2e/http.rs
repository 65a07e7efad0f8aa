//! HTTP ingest with curl.

use crate::support::*;

fn ingest(
    srv: &Server,
    token: &str,
    ctype: &str,
    body: &str,
    query: &str,
) -> TestResult<(u16, serde_json::Value)> {
    let out = curl(&[
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        &format!("Content-Type: {ctype}"),
        "--data-binary",
        body,
        &format!("http://{}/api/v1/ingest{query}", srv.http),
    ])?;
    let text = String::from_utf8(out.stdout)?;
    let (body, code) = text.rsplit_once('\n').ok_or("no status")?;
    Ok((
        code.parse()?,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    ))
}

#[test]
fn curl_ndjson_mix_keeps_good_lines_and_reports_bad_ones() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "h1")?;
    let srv = Server::start(dir.path(), &[])?;
    let body = [
        r#"{"ts": 1764000000000, "metrics": {"temp": 20.5}}"#,
        r#"{"ts": 1764000001000, "metrics": {"temp": "#,
        r#"{"ts": 1764000002000, "metrics": {"temp": 21.0, "rpm": 1200}}"#,
        r#"{"ts": 99999999999999, "metrics": {"temp": 1}}"#,
    ]
    .join("\n");
    let (code, v) = ingest(&srv, &token, "application/x-ndjson", &body, "")?;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["accepted"], 3, "{v}");
    assert_eq!(v["rejected"], 2, "{v}");
    let lines: Vec<u64> = v["errors"]
        .as_array()
        .ok_or("errors")?
        .iter()
        .filter_map(|e| e["line"].as_u64())
        .collect();
    assert_eq!(lines, vec![2, 4], "{v}");
    assert!(
        v["errors"][1]["message"]
            .as_str()
            .unwrap_or("")
            .contains("future"),
        "clock skew named: {v}"
    );

    // Both bad lines are dead letters with their raw bytes.
    let out = srv.api(&[&format!("http://{}/api/v1/deadletters?after=0", srv.http)])?;
    let dl: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let items = dl["items"].as_array().ok_or("items")?;
    assert_eq!(items.len(), 2, "{dl}");
    assert!(
        items[0]["endpoint"]
            .as_str()
            .unwrap_or("")
            .ends_with("line=2")
    );
    let raw = items[0]["raw"].as_str().ok_or("raw")?;
    assert_eq!(
        raw,
        r#"{"ts": 1764000001000, "metrics": {"temp": "#
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert_eq!(srv.status()?["readings_written"], 3);
    Ok(())
}

#[test]
fn curl_line_protocol_and_json_are_accepted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "lp")?;
    let srv = Server::start(dir.path(), &[])?;
    let lp = "env,device_id=lp temp=21.5,hum=40i,door=t,state=\"open\" 1764000000000000000\nenv value=3.5 1764000001000000000\n";
    let (code, v) = ingest(&srv, &token, "text/plain", lp, "")?;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["accepted"], 5, "{v}");
    let (code, v) = ingest(
        &srv,
        &token,
        "text/plain",
        "env temp=1 1764000002",
        "?precision=s",
    )?;
    assert_eq!(
        (code, v["accepted"].clone()),
        (200, serde_json::json!(1)),
        "{v}"
    );
    let (code, v) = ingest(
        &srv,
        &token,
        "application/json",
        r#"[{"ts": 1764000003000, "metrics": {"a": 1}}, {"metrics": {"b": 2}}]"#,
        "",
    )?;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["accepted"], 2);
    let (code, v) = ingest(
        &srv,
        &token,
        "text/plain",
        "env,device_id=intruder temp=1",
        "",
    )?;
    assert_eq!(code, 400, "line naming another device is refused: {v}");
    srv.stop()?;
    let r = wal_readings(dir.path())?;
    assert!(r.iter().any(|x| x.1 == "env.temp" && x.2 == 1764000000000));
    assert!(r.iter().any(|x| x.1 == "env" && x.3["F64"] == 3.5));
    assert!(r.iter().any(|x| x.1 == "env.temp" && x.2 == 1764000002000));
    Ok(())
}

#[test]
fn bad_token_is_401_and_huge_body_is_413() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "big")?;
    let srv = Server::start(dir.path(), &[])?;
    let (code, v) = ingest(
        &srv,
        "nope",
        "application/json",
        r#"{"metrics":{"a":1}}"#,
        "",
    )?;
    assert_eq!(code, 401, "{v}");
    assert_eq!(v["code"], "unauthorized");
    let body_path = dir.path().join("big.json");
    let big = format!(r#"{{"metrics": {{"s": "{}"}}}}"#, "x".repeat(200 * 1024));
    std::fs::write(&body_path, big)?;
    let out = curl(&[
        "-s",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", body_path.display()),
        &format!("http://{}/api/v1/ingest", srv.http),
    ])?;
    let said = String::from_utf8(out.stdout)?;
    let (json, code) = said.rsplit_once('\n').ok_or("no status")?;
    assert_eq!(code, "413", "{said}");
    // Refused like an oversized MQTT payload: a JSON error naming the limit, counted, and its
    // start kept in the dead letters.
    let v: serde_json::Value = serde_json::from_str(json)?;
    assert_eq!(v["code"], "too_large", "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("131072")),
        "{v}"
    );
    let metrics =
        String::from_utf8(curl(&["-s", &format!("http://{}/metrics", srv.http)])?.stdout)?;
    assert!(
        metrics.contains("edgepipe_ingest_messages_rejected_total{reason=\"too_large\"} 1"),
        "{metrics}"
    );
    let dl = edgepipe_ok(&[
        "deadletters",
        "--data-dir",
        dir.path().to_str().ok_or("path")?,
        "list",
        "--format",
        "json",
    ])?;
    let dl: Vec<serde_json::Value> = serde_json::from_slice(&dl.stdout)?;
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0]["reason"], "too_large");
    assert_eq!(dl[0]["truncated"], true, "{:?}", dl[0]);
    assert_eq!(dl[0]["device"], "big");
    let (code, _) = ingest(&srv, &token, "application/xml", "<a/>", "")?;
    assert_eq!(code, 415);
    Ok(())
}

#[test]
fn demo_over_http_ingests_and_exits_zero() -> TestResult {
    let dir = tempfile::tempdir()?;
    let line = run_demo(
        dir.path(),
        &[
            "--transport",
            "http",
            "--duration",
            "3s",
            "--devices",
            "4",
            "--interval",
            "200ms",
        ],
    )?;
    assert!(number_after(&line, " published, ")? > 10, "{line}");
    assert!(line.contains("0 dead letters"), "{line}");
    Ok(())
}

/// A device inventing metric names without end: past `limits.max_metrics_per_device` (10,000 by
/// default) each message is refused whole into the dead letters (`too_many_metrics`), names it
/// already has keep working, other devices are not affected, and the server stays up.
#[test]
fn a_device_past_its_metric_name_limit_is_dead_lettered_and_others_go_on() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let srv = Server::start(&data, &["--auto-register"])?;
    let base = now_ms() - 60_000;
    let body = |from: usize, n: usize, t: i64| -> String {
        (from..from + n)
            .map(|i| {
                format!(
                    "{{\"ts\": {}, \"metrics\": {{\"m{i}\": 1}}}}\n",
                    t + i as i64
                )
            })
            .collect()
    };
    let post = |device: &str, body: &str| -> TestResult<String> {
        let out = curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Authorization: Bearer e2e-auto-registered",
            "-H",
            &format!("X-Device-Id: {device}"),
            "-H",
            "Content-Type: application/x-ndjson",
            "--data-binary",
            body,
            &format!("http://{}/api/v1/ingest", srv.http),
        ])?;
        Ok(String::from_utf8(out.stdout)?)
    };
    // 30 messages of 1,000 new names each: the first 10 fit, the other 20 are refused.
    let mut codes = Vec::new();
    for k in 0..30 {
        codes.push(post("namer", &body(k * 1000, 1000, base))?);
    }
    assert_eq!(
        codes.iter().filter(|c| *c == "200").count(),
        10,
        "{codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| *c == "400").count(),
        20,
        "{codes:?}"
    );
    // Known names at new times (the same readings again would be recognized as a resend).
    assert_eq!(
        post("namer", &body(0, 1000, base + 5_000))?,
        "200",
        "known names still pass"
    );
    assert_eq!(
        post("neighbour", &body(0, 100, base))?,
        "200",
        "another device is not affected"
    );
    let st = srv.status()?;
    assert!(
        st["readings_written"].as_i64().unwrap_or(0) >= 11_100,
        "{st}"
    );
    let dl = edgepipe_ok(&[
        "deadletters",
        "--data-dir",
        data.to_str().ok_or("path")?,
        "list",
        "--limit",
        "100",
        "--format",
        "json",
    ])?;
    let dl: Vec<serde_json::Value> = serde_json::from_slice(&dl.stdout)?;
    assert_eq!(
        dl.iter()
            .filter(|d| d["reason"] == "too_many_metrics")
            .count(),
        20,
        "{dl:?}"
    );
    srv.stop()?;
    Ok(())
}

/// No route serves files from disk: traversal attempts on the asset route and elsewhere get
/// 404 (assets are embedded in the binary and served by name from a fixed list), or 401/400
/// where a route needs a token or a number first.
#[test]
fn path_traversal_finds_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let srv = Server::start(dir.path(), &[])?;
    for path in [
        "/assets/../../../../etc/passwd",
        "/assets/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/assets/%2e%2e/%2e%2e/etc/passwd",
        "/../../../../etc/passwd",
        "/assets/app.js/../../../etc/passwd",
        "/api/v1/deadletters/..%2f..%2fetc%2fpasswd",
    ] {
        let out = curl(&[
            "-s",
            "--path-as-is",
            "-w",
            "\n%{http_code}",
            &format!("http://{}{path}", srv.http),
        ])?;
        let said = String::from_utf8_lossy(&out.stdout);
        let code = said.rsplit('\n').next().unwrap_or("");
        assert!(["404", "400", "401"].contains(&code), "{path}: {said}");
        assert!(!said.contains("root:"), "{path} served a file: {said}");
    }
    srv.stop()?;
    Ok(())
}

/// SQL that tries to exhaust memory or time hits the query limits with a named error (422
/// memory_limit, 408 timeout), and the server goes on answering.
#[test]
fn queries_that_try_to_exhaust_memory_or_time_hit_the_limits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let srv = Server::start_with_config(
        &data,
        "[query]\nmax_memory_bytes = 8388608\ntimeout = \"2s\"\n",
    )?;
    let token = srv.token()?;
    let sql = |q: &str| -> TestResult<(String, serde_json::Value)> {
        let out = curl(&[
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "-d",
            &serde_json::json!({"sql": q}).to_string(),
            &format!("http://{}/api/v1/query", srv.http),
        ])?;
        let said = String::from_utf8(out.stdout)?;
        let (body, code) = said.rsplit_once('\n').ok_or("no status")?;
        Ok((code.to_owned(), serde_json::from_str(body)?))
    };
    let (code, v) = sql(
        "SELECT a.value, count(*) FROM range(3000000) a JOIN range(3000000) b \
         ON a.value = b.value GROUP BY a.value ORDER BY 2 DESC",
    )?;
    assert_eq!(
        (code.as_str(), &v["code"]),
        ("422", &serde_json::json!("memory_limit")),
        "{v}"
    );
    let t0 = std::time::Instant::now();
    let (code, v) = sql("SELECT count(*) FROM range(100000) a, range(100000) b, range(100) c")?;
    assert_eq!(
        (code.as_str(), &v["code"]),
        ("408", &serde_json::json!("timeout")),
        "{v}"
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(30),
        "the timeout did not hold: {:?}",
        t0.elapsed()
    );
    let (code, v) = sql("SELECT count(*) AS n FROM range(10)")?;
    assert_eq!(
        (code.as_str(), &v["rows"][0]["n"]),
        ("200", &serde_json::json!(10)),
        "{v}"
    );
    srv.stop()?;
    Ok(())
}
