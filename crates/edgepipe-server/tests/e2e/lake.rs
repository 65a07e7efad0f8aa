//! The lake end to end: every acknowledged reading lands in Parquet exactly once (through
//! kill -9 during flushes), tools we did not write (pyarrow, DuckDB, pyspark) read the same
//! numbers as `edgepipe query`, SQL sees a reading right after its PUBACK, the query and series
//! APIs, and the same pipeline on an S3-compatible server (moto).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// `sources` and `good` read the string columns flush files keep PLAIN (`quality`, `source`).
const AGGREGATES: &str = "SELECT count(*) AS count, count(DISTINCT device_id) AS devices, \
    coalesce(sum(value), 0) AS sum_value, coalesce(sum(value_int), 0) AS sum_int, \
    CAST(min(ts) AS BIGINT) AS min_ts, CAST(max(ts) AS BIGINT) AS max_ts, \
    count(DISTINCT source) AS sources, \
    sum(CASE WHEN quality = 'good' THEN 1 ELSE 0 END) AS good FROM readings";

/// Compares a peer's aggregates with ours (float sums with a relative tolerance: summation
/// order differs between engines).
fn assert_same(tool: &str, ours: &serde_json::Value, theirs: &serde_json::Value) {
    for k in [
        "count", "devices", "sum_int", "min_ts", "max_ts", "sources", "good",
    ] {
        assert!(
            ours[k].as_i64().is_some(),
            "{tool}: our {k} is missing: {ours}"
        );
        assert_eq!(
            ours[k].as_i64(),
            theirs[k].as_i64(),
            "{tool} disagrees on {k}: ours {ours}, theirs {theirs}"
        );
    }
    let (a, b) = (
        ours["sum_value"].as_f64().unwrap_or(f64::NAN),
        theirs["sum_value"].as_f64().unwrap_or(f64::NAN),
    );
    assert!(
        (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        "{tool} disagrees on sum_value: {a} vs {b}"
    );
}

fn lake_readers(lake: &str, extra: &[&str]) -> TestResult<serde_json::Value> {
    peer_json(
        "lake_readers.py",
        python_peer("lake_readers.py").arg(lake).args(extra),
    )
}

#[test]
fn kill9_during_flushes_every_acked_reading_is_in_the_lake_once_and_peers_agree() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let token = add_device(&data, "lk9")?;
    let mqtt = format!("127.0.0.1:{}", free_port()?);
    let http = format!("127.0.0.1:{}", free_port()?);
    // Flush every 100 ms so that kills land in the middle of flushes.
    let env = [("EDGEPIPE_LAKE_FLUSH_INTERVAL", "100ms")];
    let args = ["--device-rate", "0"];
    let mut srv = Server::start_on_env(&data, &mqtt, &http, &args, &env)?;
    let load = PahoLoad::start(dir.path(), srv.mqtt.port(), "lk9", &token)?;
    let mut kills = 0;
    for round in 0..5u64 {
        assert!(
            load.wait_progress(300),
            "publisher made no progress in round {round}"
        );
        std::thread::sleep(Duration::from_millis(50 + (round * 173) % 300));
        srv.kill9()?;
        kills += 1;
        srv = Server::start_on_env(&data, &mqtt, &http, &args, &env)?;
    }
    assert!(load.wait_progress(300));
    let (acked, _) = load.finish()?;
    srv.stop()?;

    let d = data.to_str().ok_or("path")?;
    let stored = lake_numbers(&data)?;
    assert_stored_once("lake after kill -9", &acked, &stored, Twice::Any);
    assert_eq!(kills, 5);

    edgepipe_ok(&["lake", "verify", "--data-dir", d])?;
    let ours = query_json(&["--data-dir", d], AGGREGATES)?;
    let peers = lake_readers(&format!("{d}/lake"), &["--spark"])?;
    for tool in ["pyarrow", "duckdb", "spark"] {
        assert_same(tool, &ours[0], &peers[tool]);
    }
    // Compaction keeps every reading exactly once and the peers still agree.
    edgepipe_ok(&["lake", "compact", "--data-dir", d])?;
    let after = query_json(&["--data-dir", d], AGGREGATES)?;
    assert_same("edgepipe after compaction", &ours[0], &after[0]);
    let peers = lake_readers(&format!("{d}/lake"), &[])?;
    assert_same("duckdb after compaction", &ours[0], &peers["duckdb"]);
    eprintln!(
        "lake kill -9 x{kills}: {} acked, {} distinct in the lake; pyarrow, duckdb, spark agree: {}",
        acked.len(),
        stored.len(),
        ours[0]
    );
    Ok(())
}

#[test]
fn sql_sees_a_reading_right_after_its_puback() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let token = add_device(&data, "vis")?;
    // The default flush interval (30 s): visibility comes from the fresh buffer, not files.
    let srv = Server::start(&data, &[])?;
    let v = peer_json(
        "visibility.py",
        python_peer("visibility.py")
            .env("EDGEPIPE_API_TOKEN", srv.token()?)
            .args([
                "127.0.0.1",
                &srv.mqtt.port().to_string(),
                &srv.http.to_string(),
                "vis",
                &token,
                "100",
            ]),
    )?;
    assert_eq!(v["timeouts"], 0, "readings never became visible: {v}");
    let mut lat: Vec<f64> = v["latencies_ms"]
        .as_array()
        .ok_or("latencies")?
        .iter()
        .filter_map(|x| x.as_f64())
        .collect();
    assert_eq!(lat.len(), 100);
    lat.sort_by(f64::total_cmp);
    eprintln!(
        "PUBACK -> visible to SQL: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat[49], lat[98], lat[99]
    );
    srv.stop()?;
    Ok(())
}

#[test]
fn query_and_series_apis_answer_json_csv_and_clear_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let token = add_device(&data, "api")?;
    let srv = Server::start_on_env(
        &data,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[],
        &[("EDGEPIPE_LAKE_FLUSH_INTERVAL", "200ms")],
    )?;
    // 1,000 readings one second apart, an hour and a bit ago.
    let base = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64
        / 1000
        - 4000)
        * 1000;
    let body: String = (0..1000)
        .map(|i| {
            format!(
                "{{\"ts\": {}, \"metrics\": {{\"temp\": {}.5}}}}\n",
                base + i * 1000,
                i
            )
        })
        .collect();
    let body_path = dir.path().join("b.ndjson");
    std::fs::write(&body_path, body)?;
    let out = curl(&[
        "-f",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/x-ndjson",
        "--data-binary",
        &format!("@{}", body_path.display()),
        &format!("http://{}/api/v1/ingest", srv.http),
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let q = |body: &str, fmt: &str| {
        srv.api(&[
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            &format!("http://{}/api/v1/query?format={fmt}", srv.http),
        ])
    };
    let out = q(
        r#"{"sql": "SELECT count(*) AS n, max(value) AS hi FROM readings"}"#,
        "json",
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["rows"][0]["n"], 1000, "{v}");
    assert_eq!(v["rows"][0]["hi"], 999.5, "{v}");
    assert_eq!(v["columns"][0]["name"], "n");
    // No rows is an empty array, not an error (it was `[][]`, answered with a 500).
    let out = q(
        r#"{"sql": "SELECT device_id, value FROM readings WHERE device_id = 'nobody'"}"#,
        "json",
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["rows"], serde_json::json!([]), "{v}");
    assert_eq!(v["row_count"], 0, "{v}");
    let out = q(r#"{"sql": "SELECT count(*) AS n FROM readings"}"#, "csv")?;
    assert_eq!(String::from_utf8(out.stdout)?, "n\n1000\n");
    // The CLI asks the running server (Arrow IPC on the wire) and prints CSV.
    let d = data.to_str().ok_or("path")?;
    let out = edgepipe(&[
        "query",
        "--data-dir",
        d,
        "--format",
        "csv",
        "SELECT count(*) AS n, min(value) AS lo FROM readings",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout)?, "n,lo\n1000,0.5\n");
    let out = edgepipe(&["query", "--data-dir", d, "SELECT nope"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = srv.api(&[
        "-w",
        "\n%{http_code}",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"sql": "SELECT nope FROM readings"}"#,
        &format!("http://{}/api/v1/query", srv.http),
    ])?;
    let text = String::from_utf8(out.stdout)?;
    assert!(text.ends_with("\n400"), "{text}");
    assert!(text.contains("bad_sql") && text.contains("nope"), "{text}");

    let out = srv.api(&[&format!(
        "http://{}/api/v1/series?device=api&metric=temp&from={}&to={}&points=10",
        srv.http,
        base,
        base + 1_000_000
    )])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let pts = v["points"].as_array().ok_or("points")?;
    assert!(pts.len() <= 10 && pts.len() >= 9, "{v}");
    let total: i64 = pts.iter().filter_map(|p| p["count"].as_i64()).sum();
    assert_eq!(total, 1000);
    assert_eq!(pts[0]["min"], 0.5);
    let out = srv.api(&[
        "-w",
        "\n%{http_code}",
        &format!(
            "http://{}/api/v1/series?device=api&metric=temp&from=10&to=5",
            srv.http
        ),
    ])?;
    let text = String::from_utf8(out.stdout)?;
    assert!(
        text.ends_with("\n400") && text.contains("must be after"),
        "{text}"
    );
    srv.stop()?;
    Ok(())
}

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The compacted file of every `readings` partition of `lake`, copied back in as a flush file
/// (`part-0-1`: its rows written again), so the next compaction has a partition of two files
/// to merge and half the rows to drop as duplicates. Returns the partitions given one.
fn duplicate_compacted_files(lake: &Path) -> TestResult<usize> {
    let mut n = 0;
    for date in std::fs::read_dir(lake.join("readings"))? {
        for hour in std::fs::read_dir(date?.path())? {
            let hour = hour?.path();
            let files: Vec<_> = std::fs::read_dir(&hour)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            if let [only] = files.as_slice() {
                let copy = hour.join(format!("part-{:020}-{:020}.parquet", 0, 1));
                std::fs::copy(only, copy)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// `edgepipe lake compact` killed (SIGKILL) at moments spread over its pass, six times, each
/// time over partitions with a duplicate file to merge: after a final pass every reading is in
/// the lake exactly once (our engine and DuckDB agree with the lake before), nothing is left
/// staged, and every file passes `lake verify`.
#[test]
fn kill9_during_compaction_keeps_every_reading_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let d = data.to_str().ok_or("path")?;
    edgepipe_ok(&[
        "bench",
        "lake",
        "--devices",
        "20",
        "--metrics",
        "5",
        "--hours",
        "2",
        "--runs",
        "1",
        "--out",
        d,
    ])?;
    let lake = data.join("lake");
    let before = query_json(&["--data-dir", d], AGGREGATES)?;
    assert_eq!(before[0]["count"].as_i64(), Some(20 * 5 * 7_200));
    // How long a whole pass takes here, so the kills spread over it (both partitions' merges,
    // the swaps between them).
    assert_eq!(duplicate_compacted_files(&lake)?, 2);
    let t0 = std::time::Instant::now();
    edgepipe_ok(&["lake", "compact", "--data-dir", d])?;
    let pass = t0.elapsed();
    let mut killed_mid_pass = 0;
    for (round, at) in [0.1, 0.3, 0.45, 0.55, 0.7, 0.9].into_iter().enumerate() {
        assert_eq!(duplicate_compacted_files(&lake)?, 2, "round {round}");
        let mut child = Command::new(bin())
            .args(["lake", "compact", "--data-dir", d])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(pass.mul_f64(at));
        if child.try_wait()?.is_none() {
            killed_mid_pass += 1;
        }
        let _ = child.kill();
        child.wait()?;
        // Whatever the kill left (a marker, staged files, two files in a partition), the
        // next pass starts by finishing it; give every partition one file again.
        edgepipe_ok(&["lake", "compact", "--data-dir", d])?;
        let after = query_json(&["--data-dir", d], AGGREGATES)?;
        assert_same(
            &format!("edgepipe after kill {round}"),
            &before[0],
            &after[0],
        );
    }
    assert!(
        killed_mid_pass >= 3,
        "only {killed_mid_pass} kills landed mid-pass"
    );
    assert!(!lake.join("_edgepipe/staging").exists());
    edgepipe_ok(&["lake", "verify", "--data-dir", d])?;
    let peers = lake_readers(lake.to_str().ok_or("path")?, &[])?;
    assert_same("duckdb after the kills", &before[0], &peers["duckdb"]);
    eprintln!(
        "compaction ({:.2} s a pass) killed {killed_mid_pass} times mid-pass; the lake agrees: {}",
        pass.as_secs_f64(),
        before[0]
    );
    Ok(())
}

#[test]
fn s3_lake_on_a_real_s3_compatible_server() -> TestResult {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let moto = Moto(
        Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("moto_server (pip moto[server], from .ci/run): {e}"))?,
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    assert!(
        wait_until(Duration::from_secs(30), || {
            curl(&["-f", "-X", "PUT", &format!("{endpoint}/edgepipe-lake")])
                .map(|o| o.status.success())
                .unwrap_or(false)
        }),
        "moto did not start or refused the bucket"
    );
    let config = dir.path().join("s3.toml");
    std::fs::write(
        &config,
        format!(
            "[lake]\nurl = \"s3://edgepipe-lake/prod\"\nflush_interval = \"300ms\"\n\
             [lake.s3]\nendpoint = \"{endpoint}\"\nallow_http = true\n\
             access_key_id = \"test\"\nsecret_access_key = \"test\"\n"
        ),
    )?;
    let data = dir.path().join("data");
    let token = add_device(&data, "s3dev")?;
    let cfg = config.to_str().ok_or("path")?;
    let srv = Server::start(&data, &["--config", cfg])?;
    let port = srv.mqtt.port().to_string();
    for i in 0..200 {
        let out = run(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-q",
                "1",
                "-i",
                "s3dev",
                "-u",
                "s3dev",
                "-P",
                &token,
                "-t",
                "edgepipe/v1/s3dev/telemetry",
                "-m",
                &format!(
                    "{{\"ts\": {}, \"metrics\": {{\"v\": {i}}}}}",
                    1_764_000_000_000i64 + i * 1000
                ),
            ],
        )?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stats = || -> TestResult<i64> {
        let v = srv.status()?;
        Ok(v["lake"]["rows_written"].as_i64().unwrap_or(0))
    };
    assert!(
        wait_until(Duration::from_secs(20), || stats().unwrap_or(0) == 200),
        "the lake writer did not store 200 rows on S3"
    );
    srv.stop()?;
    let d = data.to_str().ok_or("path")?;
    let ours = query_json(&["--config", cfg, "--data-dir", d], AGGREGATES)?;
    assert_eq!(ours[0]["count"], 200, "{ours:?}");
    assert_eq!(ours[0]["sum_int"], (0..200).sum::<i64>());
    edgepipe_ok(&["lake", "verify", "--config", cfg, "--data-dir", d])?;
    // Compaction on S3 (outputs uploaded in parts to a staging key, copied into place, inputs
    // deleted) keeps every reading exactly once and leaves nothing staged in the bucket.
    edgepipe_ok(&["lake", "compact", "--config", cfg, "--data-dir", d])?;
    let list = |prefix: &str| -> TestResult<String> {
        let out = curl(&[
            "-sf",
            &format!("{endpoint}/edgepipe-lake?list-type=2&prefix=prod/{prefix}"),
        ])?;
        assert!(out.status.success(), "bucket listing of {prefix} failed");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let readings = list("readings/")?;
    assert!(readings.contains("compacted-"), "{readings}");
    let staged = list("_edgepipe/staging/")?;
    assert!(staged.contains("<ListBucketResult"), "{staged}");
    assert!(
        !staged.contains("<Key>"),
        "staged objects left on S3: {staged}"
    );
    let after = query_json(&["--config", cfg, "--data-dir", d], AGGREGATES)?;
    assert_same("edgepipe on S3 after compaction", &ours[0], &after[0]);
    // pyarrow reads the same objects straight from the S3 server.
    let peers = peer_json(
        "lake_readers.py",
        python_peer("lake_readers.py")
            .args(["s3://edgepipe-lake/prod", "--s3-endpoint", &endpoint])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test"),
    )?;
    assert_same("pyarrow on S3", &ours[0], &peers["pyarrow"]);
    drop(moto);
    Ok(())
}

/// `edgepipe query` next to a running server asks the server (reqwest, Arrow IPC answer), so it
/// sees readings still in the fresh buffer; the lake files alone would have none yet (the
/// default flush interval is 30 s). Bad SQL through the server is the server's 400, named.
#[test]
fn query_beside_a_running_server_sees_rows_not_yet_in_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let srv = Server::start(&data, &["--auto-register"])?;
    let body: String = (0..25)
        .map(|i| {
            format!(
                "{{\"ts\": {}, \"metrics\": {{\"t\": {i}}}}}\n",
                1_767_225_600_000i64 + i * 1000
            )
        })
        .collect();
    ingest_as(srv.http, "fresh-1", &body)?;
    let d = data.to_str().ok_or("path")?;
    let rows = query_json(
        &["--data-dir", d],
        "SELECT count(*) AS n, sum(value) AS s FROM readings WHERE device_id = 'fresh-1'",
    )?;
    assert_eq!(rows[0]["n"], 25, "{rows:?}");
    assert_eq!(rows[0]["s"].as_f64(), Some(300.0), "{rows:?}");
    assert!(
        !data.join("lake/readings").exists()
            || std::fs::read_dir(data.join("lake/readings"))?
                .next()
                .is_none(),
        "no lake file yet: the rows came from the server's fresh buffer"
    );
    let out = edgepipe(&["query", "--data-dir", d, "SELEC nope"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SQL error") && err.contains("SELEC"), "{err}");
    srv.stop()?;
    Ok(())
}
