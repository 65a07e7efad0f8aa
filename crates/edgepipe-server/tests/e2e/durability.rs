//! kill -9 the server while paho-mqtt publishes at QoS 1; afterwards the WAL holds every
//! PUBACKed reading exactly once (by content). And the other way a server stops: SIGTERM (what
//! systemd, Kubernetes and Docker send) or SIGINT under load runs the orderly shutdown, and
//! every PUBACKed reading is in the lake's files without a restart.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

#[test]
fn kill9_under_load_keeps_every_acked_reading_exactly_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let token = add_device(&data, "k9")?;
    let mqtt = format!("127.0.0.1:{}", free_port()?);
    let http = format!("127.0.0.1:{}", free_port()?);
    let mut srv = Server::start_on(&data, &mqtt, &http, &["--device-rate", "0"])?;
    let load = PahoLoad::start(dir.path(), srv.mqtt.port(), "k9", &token)?;
    let mut kills = 0;
    for round in 0..6 {
        assert!(
            load.wait_progress(200),
            "publisher made no progress in round {round}"
        );
        std::thread::sleep(Duration::from_millis(100 + 137 * round as u64 % 400));
        srv.kill9()?;
        kills += 1;
        std::thread::sleep(Duration::from_millis(200));
        srv = Server::start_on(&data, &mqtt, &http, &["--device-rate", "0"])?;
    }
    assert!(load.wait_progress(200));
    let (acked, publisher_summary) = load.finish()?;
    srv.stop()?;

    let mut stored: HashMap<i64, usize> = HashMap::new();
    for (_, metric, _, value) in wal_readings(&data)? {
        if metric == "n" {
            *stored.entry(value["I64"].as_i64().ok_or("n")?).or_default() += 1;
        }
    }
    assert_stored_once("WAL after kill -9", &acked, &stored, Twice::Acked);
    assert!(kills >= 5);
    eprintln!(
        "kill -9 x{kills}: {} readings acked, {} distinct stored, publisher: {}",
        acked.len(),
        stored.len(),
        publisher_summary
    );
    Ok(())
}

/// The same promise when several connections share one MQTT worker thread, so their appends
/// reach the WAL in submission batches (`submit.rs`): four paho-mqtt publishers on a server with
/// one worker, kill -9'd and restarted 6 times. Before each kill the server's counters show
/// appends went through batches in that run.
#[test]
fn kill9_with_batched_connections_keeps_every_acked_reading_exactly_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let devices = ["kb0", "kb1", "kb2", "kb3"];
    let tokens = devices
        .iter()
        .map(|d| add_device(&data, d))
        .collect::<TestResult<Vec<_>>>()?;
    let cfg = dir.path().join("one-worker.toml");
    std::fs::write(&cfg, "mqtt_workers = 1\n")?;
    let cfg = cfg.to_str().ok_or("path")?.to_owned();
    let args = ["--config", cfg.as_str(), "--device-rate", "0"];
    let mqtt = format!("127.0.0.1:{}", free_port()?);
    let http = format!("127.0.0.1:{}", free_port()?);
    let mut srv = Server::start_on(&data, &mqtt, &http, &args)?;
    let loads = devices
        .iter()
        .zip(&tokens)
        .map(|(d, t)| PahoLoad::start(dir.path(), srv.mqtt.port(), d, t))
        .collect::<TestResult<Vec<_>>>()?;
    let mut batched = Vec::new();
    for round in 0..6u64 {
        for (d, load) in devices.iter().zip(&loads) {
            assert!(
                load.wait_progress(100),
                "publisher {d} made no progress in round {round}"
            );
        }
        // Every publisher made progress on this server, so all four were connected to its one
        // worker at once: their appends were batched.
        let n = metric(&srv, "edgepipe_mqtt_batched_appends_total")?;
        assert!(n > 0, "no batched appends in round {round}");
        batched.push(n);
        std::thread::sleep(Duration::from_millis(50 + 97 * round % 300));
        srv.kill9()?;
        std::thread::sleep(Duration::from_millis(200));
        srv = Server::start_on(&data, &mqtt, &http, &args)?;
    }
    for load in &loads {
        assert!(load.wait_progress(100));
    }
    let mut acked = Vec::new();
    for (d, load) in devices.iter().zip(loads) {
        let (numbers, summary) = load.finish()?;
        eprintln!("{d}: {} acked, publisher: {summary}", numbers.len());
        acked.extend(numbers.into_iter().map(|n| (d.to_string(), n)));
    }
    srv.stop()?;

    let mut stored: HashMap<(String, i64), usize> = HashMap::new();
    for (device, metric, _, value) in wal_readings(&data)? {
        if metric == "n" {
            let n = value["I64"].as_i64().ok_or("n")?;
            *stored.entry((device, n)).or_default() += 1;
        }
    }
    assert_stored_once("WAL after kill -9", &acked, &stored, Twice::Acked);
    eprintln!(
        "kill -9 x6 with 4 connections on one worker: {} readings acked, {} distinct stored, \
         batched appends before each kill: {batched:?}",
        acked.len(),
        stored.len()
    );
    Ok(())
}

/// A counter or gauge from the server's `/metrics`.
fn metric(srv: &Server, name: &str) -> TestResult<u64> {
    let out = curl(&[&format!("http://{}/metrics", srv.http)])?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .ok_or_else(|| format!("no {name} in /metrics").into())
}

/// Same promise over HTTP: curl posts NDJSON batches while the server is kill -9'd; every
/// batch answered 200 is in the WAL exactly once afterwards.
#[test]
fn kill9_under_http_load_keeps_every_200_batch_exactly_once() -> TestResult {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let token = add_device(&data, "h9")?;
    let mqtt = format!("127.0.0.1:{}", free_port()?);
    let http = format!("127.0.0.1:{}", free_port()?);
    let mut srv = Server::start_on(&data, &mqtt, &http, &["--device-rate", "0"])?;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
    let poster = {
        let (stop, acked, http, token) = (stop.clone(), acked.clone(), http.clone(), token.clone());
        std::thread::spawn(move || {
            let mut batch = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let body: String = (0..10)
                    .map(|i| {
                        format!(
                            "{{\"ts\": {}, \"metrics\": {{\"b\": {batch}}}}}\n",
                            1764000000000 + batch * 10 + i
                        )
                    })
                    .collect();
                let out = curl(&[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-X",
                    "POST",
                    "-H",
                    &format!("Authorization: Bearer {token}"),
                    "-H",
                    "Content-Type: application/x-ndjson",
                    "--data-binary",
                    &body,
                    &format!("http://{http}/api/v1/ingest"),
                ]);
                if let Ok(o) = out
                    && o.stdout == b"200"
                {
                    if let Ok(mut a) = acked.lock() {
                        a.push(batch);
                    }
                    batch += 1;
                }
                // Anything else (refused connection while the server is down): resend it.
            }
        })
    };
    let count = |a: &Arc<Mutex<Vec<i64>>>| a.lock().map(|v| v.len()).unwrap_or(0);
    for round in 0..4 {
        let before = count(&acked);
        assert!(
            wait_until(Duration::from_secs(30), || count(&acked) > before + 20),
            "no progress in round {round}"
        );
        srv.kill9()?;
        srv = Server::start_on(&data, &mqtt, &http, &["--device-rate", "0"])?;
    }
    let before = count(&acked);
    assert!(wait_until(Duration::from_secs(30), || count(&acked) > before + 20));
    stop.store(true, Ordering::Relaxed);
    poster.join().map_err(|_| "poster thread")?;
    srv.stop()?;
    let mut stored: HashMap<i64, usize> = HashMap::new();
    for (_, metric, ts, _) in wal_readings(&data)? {
        if metric == "b" {
            *stored.entry(ts).or_default() += 1;
        }
    }
    let acked = acked.lock().map_err(|_| "lock")?.clone();
    for b in &acked {
        for i in 0..10 {
            let ts = 1764000000000 + b * 10 + i;
            assert_eq!(
                stored.get(&ts).copied(),
                Some(1),
                "batch {b} reading {i} after kill -9"
            );
        }
    }
    eprintln!(
        "http kill -9 x4: {} batches (x10 readings) acked, all stored once",
        acked.len()
    );
    Ok(())
}

/// A disk whose fdatasync fails (an LD_PRELOAD shim returns EIO once a flag file exists): the
/// server stops acknowledging at once and for good (503 over HTTP, never a false 200), reports
/// the WAL poisoned, and after a restart on a healthy disk every acknowledged batch is there.
#[test]
fn fsync_failure_stops_acknowledging_and_never_pretends() -> TestResult {
    let dir = tempfile::tempdir()?;
    let shim = build_shim(dir.path(), "fail_fdatasync.c")?;
    let data = dir.path().join("data");
    let token = add_device(&data, "disk")?;
    let flag = dir.path().join("fail-now");
    let shim_s = shim.to_str().ok_or("path")?;
    let flag_s = flag.to_str().ok_or("path")?;
    let srv = Server::start_on_env(
        &data,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[],
        &[
            ("LD_PRELOAD", shim_s),
            ("EDGEPIPE_TEST_FAIL_FDATASYNC_FLAG", flag_s),
        ],
    )?;
    let post = |n: i64| -> TestResult<String> {
        let body = format!(
            "{{\"ts\": {}, \"metrics\": {{\"n\": {n}}}}}\n",
            1_764_000_000_000 + n
        );
        let out = curl(&[
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/x-ndjson",
            "--data-binary",
            &body,
            &format!("http://{}/api/v1/ingest", srv.http),
        ])?;
        Ok(String::from_utf8(out.stdout)?)
    };
    for n in 0..5 {
        assert!(post(n)?.ends_with("\n200"), "healthy disk must acknowledge");
    }
    std::fs::write(&flag, b"")?;
    let failed = post(5)?;
    assert!(
        failed.ends_with("\n503"),
        "after an fsync failure: {failed}"
    );
    // The disk "recovers", but a WAL that lost an fsync cannot know what is on disk: it stays
    // refused until a restart re-reads and verifies it.
    std::fs::remove_file(&flag)?;
    let again = post(6)?;
    assert!(
        again.ends_with("\n503"),
        "a poisoned WAL must keep refusing: {again}"
    );
    let status = srv.status()?;
    assert_eq!(status["wal"]["poisoned"], true, "{status}");
    let metrics = curl(&[&format!("http://{}/metrics", srv.http)])?;
    assert!(
        String::from_utf8_lossy(&metrics.stdout).contains("edgepipe_wal_poisoned 1"),
        "metrics must show the poisoned WAL"
    );
    drop(srv);

    let srv = Server::start(&data, &[])?;
    assert!(post_after_restart(&srv, &token)?.ends_with("\n200"));
    srv.stop()?;
    let ns: Vec<i64> = wal_readings(&data)?
        .into_iter()
        .filter(|(_, m, _, _)| m == "n")
        .filter_map(|(_, _, _, v)| v["I64"].as_i64())
        .collect();
    for n in 0..5 {
        assert_eq!(
            ns.iter().filter(|x| **x == n).count(),
            1,
            "acknowledged reading {n} must be stored once: {ns:?}"
        );
    }
    Ok(())
}

fn post_after_restart(srv: &Server, token: &str) -> TestResult<String> {
    let out = curl(&[
        "-w",
        "\n%{http_code}",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/x-ndjson",
        "--data-binary",
        "{\"ts\": 1764000000100, \"metrics\": {\"n\": 100}}\n",
        &format!("http://{}/api/v1/ingest", srv.http),
    ])?;
    Ok(String::from_utf8(out.stdout)?)
}

/// Model artifacts (`models train` writes `<version>.json`, `<version>.eval` and, promoting,
/// `CURRENT`) are renamed into place and then their directory is fsynced, so the rename itself
/// survives a power loss. An LD_PRELOAD shim records every rename and fsync of the process.
#[test]
fn model_artifacts_are_renamed_into_place_and_then_their_directory_is_fsynced() -> TestResult {
    let dir = tempfile::tempdir()?;
    let shim = build_shim(dir.path(), "record_fsync.c")?;
    let data = dir.path().join("data");
    let log = dir.path().join("fsync.log");
    let out = Command::new(bin())
        .args([
            "models",
            "train",
            "--since",
            "1h",
            "--promote",
            "--data-dir",
        ])
        .arg(&data)
        .env("LD_PRELOAD", &shim)
        .env("EDGEPIPE_TEST_FSYNC_LOG", &log)
        .output()?;
    assert!(
        out.status.success(),
        "models train: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let models = std::fs::canonicalize(data.join("models"))?;
    let models = models.to_str().ok_or("path")?;
    let lines: Vec<String> = std::fs::read_to_string(&log)?
        .lines()
        .map(str::to_owned)
        .collect();
    let renamed: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            l.starts_with("rename ")
                && l.split(' ').nth(2).is_some_and(|to| {
                    Path::new(to)
                        .parent()
                        .and_then(|p| std::fs::canonicalize(p).ok())
                        .is_some_and(|p| p == Path::new(models))
                })
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        renamed.len(),
        3,
        "the artifact, its evaluation and CURRENT are renamed into {models}: {lines:#?}"
    );
    for i in renamed {
        assert!(
            lines[i + 1..].contains(&format!("fsync {models}")),
            "no fsync of {models} after {:?}: {lines:#?}",
            lines[i]
        );
    }
    Ok(())
}

/// SIGTERM and SIGINT under QoS 1 load: exit 0, "shutdown complete" in the log, and every
/// PUBACKed reading in the lake's Parquet files exactly once, read offline (no restart, so
/// nothing could come from a WAL replay). The lake's flush interval is the default 30 s, so the
/// readings reach the files through the shutdown's final flush.
#[test]
fn sigterm_and_sigint_under_load_shut_down_in_order_with_every_acked_reading_in_the_lake()
-> TestResult {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let device = format!("sig{}", signal.to_lowercase());
        let token = add_device(&data, &device)?;
        let log = dir.path().join("server.log");
        let mut srv = edgepipe_testkit::ServerProcess::start_logging(
            Path::new(bin()),
            &data,
            ("127.0.0.1:0", "127.0.0.1:0"),
            &["--device-rate", "0"],
            &[("EDGEPIPE_LOG", "info")],
            Some(&log),
        )?;
        let load = PahoLoad::start(dir.path(), srv.mqtt.port(), &device, &token)?;
        assert!(load.wait_progress(500), "no progress before SIG{signal}");
        let status = srv.signal_and_wait(signal, Duration::from_secs(60))?;
        let said = std::fs::read_to_string(&log)?;
        assert!(
            status.success(),
            "exit {status} after SIG{signal}; log:\n{said}"
        );
        assert!(
            said.contains(&format!("SIG{signal} received")) && said.contains("shutdown complete"),
            "log after SIG{signal}:\n{said}"
        );
        // A log written to a file carries no terminal colour codes (the tracing lines, here
        // at info level, included).
        assert!(
            said.contains("edgepipe stopped"),
            "no tracing line in the log:\n{said}"
        );
        assert!(
            !said.contains('\u{1b}'),
            "ANSI escapes in a log file:\n{said}"
        );
        let (acked, _) = load.finish()?;
        let stored = lake_numbers(&data)?;
        let place = format!("lake files after SIG{signal}");
        assert_stored_once(&place, &acked, &stored, Twice::Any);
        eprintln!(
            "SIG{signal} under load: {} acked, {} in the lake files, exit {status}",
            acked.len(),
            stored.len()
        );
    }
    Ok(())
}

/// An orderly shutdown that cannot finish within `--drain-timeout` (0 s: it never can) ends
/// with an error naming the flag, and loses nothing acknowledged: the readings the server
/// answered 200 to reach the lake at the next start, exactly once.
#[test]
fn a_shutdown_past_its_drain_timeout_fails_loudly_and_the_next_start_keeps_every_reading()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let mut srv = edgepipe_testkit::ServerProcess::start_logging(
        Path::new(bin()),
        &data,
        ("127.0.0.1:0", "127.0.0.1:0"),
        &["--auto-register", "--drain-timeout", "0s"],
        &[],
        Some(&log),
    )?;
    let base = now_ms() - 60_000;
    let mut acked = Vec::new();
    for batch in 0..10i64 {
        let body: String = (0..20i64)
            .map(|i| {
                let n = batch * 20 + i;
                format!(
                    "{{\"ts\": {}, \"metrics\": {{\"n\": {n}}}}}\n",
                    base + n * 10
                )
            })
            .collect();
        ingest_as(srv.http, "drain-1", &body)?;
        acked.extend((0..20).map(|i| batch * 20 + i));
    }
    let status = srv.signal_and_wait("TERM", Duration::from_secs(30))?;
    let said = std::fs::read_to_string(&log)?;
    assert!(!status.success(), "exit {status}; log:\n{said}");
    assert!(
        said.contains("did not finish within") && said.contains("--drain-timeout"),
        "log:\n{said}"
    );
    drop(srv);
    // The next start replays the WAL into the lake; its orderly stop flushes it.
    let restarted = Server::start(&data, &[])?.stop()?;
    assert!(
        restarted.success(),
        "the restarted server's stop: exit {restarted}"
    );
    let stored = lake_numbers(&data)?;
    assert_stored_once(
        "lake after a timed-out shutdown and a restart",
        &acked,
        &stored,
        Twice::Any,
    );
    Ok(())
}
