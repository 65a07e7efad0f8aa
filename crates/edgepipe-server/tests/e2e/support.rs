//! Starting the real binary and talking to it with real clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use edgepipe_testkit::ServerProcess;
pub(crate) use edgepipe_testkit::{TestResult, free_port, peer_json, run_peer, wait_until};

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_edgepipe")
}

pub(crate) fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e")
        .join(name)
}

/// A Python peer of this folder (`tests/e2e/<name>`, paho-mqtt, pyarrow, DuckDB, pyspark...),
/// as a command to add arguments and environment to.
pub(crate) fn python_peer(name: &str) -> Command {
    edgepipe_testkit::python_peer(&script(name))
}

/// Compiles one of this folder's LD_PRELOAD shims (`tests/e2e/<source>`) into `dir`.
pub(crate) fn build_shim(dir: &Path, source: &str) -> TestResult<PathBuf> {
    edgepipe_testkit::build_shim(dir, &script(source))
}

/// A running `edgepipe serve` (the testkit's process, with this suite's API helpers).
pub(crate) struct Server(ServerProcess);

impl std::ops::Deref for Server {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.0
    }
}

impl Server {
    pub(crate) fn start(data: &Path, extra: &[&str]) -> TestResult<Server> {
        Self::start_on(data, "127.0.0.1:0", "127.0.0.1:0", extra)
    }

    pub(crate) fn start_on(
        data: &Path,
        mqtt: &str,
        http: &str,
        extra: &[&str],
    ) -> TestResult<Server> {
        Self::start_on_env(data, mqtt, http, extra, &[])
    }

    /// Like [`start_on`](Self::start_on) with extra environment variables for the server.
    pub(crate) fn start_on_env(
        data: &Path,
        mqtt: &str,
        http: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestResult<Server> {
        Ok(Server(ServerProcess::start(
            Path::new(bin()),
            data,
            mqtt,
            http,
            extra,
            env,
        )?))
    }

    /// The admin API token the server wrote for local CLI use.
    pub(crate) fn token(&self) -> TestResult<String> {
        Ok(std::fs::read_to_string(self.data.join("cli.token"))?
            .trim()
            .to_owned())
    }

    /// curl with the admin API token.
    pub(crate) fn api(&self, args: &[&str]) -> TestResult<Output> {
        let auth = format!("Authorization: Bearer {}", self.token()?);
        let mut all = vec!["-H", auth.as_str()];
        all.extend_from_slice(args);
        curl(&all)
    }

    /// Ctrl-C (SIGINT) and wait: the ordered shutdown path.
    pub(crate) fn stop(mut self) -> TestResult<std::process::ExitStatus> {
        self.0.stop_within(Duration::from_secs(20))
    }

    /// A server for detection tests: checkpoints every 200 ms, readings up to 48 h old are
    /// live (histories in the past raise cases), lake flushes every second, auto-registration.
    /// The config file goes next to `data`.
    pub(crate) fn start_detecting(data: &Path) -> TestResult<Server> {
        Self::start_with_config(
            data,
            "[detect]\ncheckpoint_interval = \"200ms\"\nlate_after = \"48h\"\n\
             [lake]\nflush_interval = \"1s\"\n",
        )
    }

    /// A server with auto-registration and the config file `toml`, written next to `data`.
    pub(crate) fn start_with_config(data: &Path, toml: &str) -> TestResult<Server> {
        let cfg = data.with_extension("toml");
        std::fs::write(&cfg, toml)?;
        Self::start(
            data,
            &["--config", cfg.to_str().ok_or("path")?, "--auto-register"],
        )
    }

    /// `POST /api/v1/query` with the admin token; the JSON answer.
    pub(crate) fn query(&self, sql: &str) -> TestResult<serde_json::Value> {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let out = self.api(&[
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            &format!("http://{}/api/v1/query", self.http),
        ])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    pub(crate) fn status(&self) -> TestResult<serde_json::Value> {
        let out = self.api(&[&format!("http://{}/api/v1/status", self.http)])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

pub(crate) fn run(cmd: &str, args: &[&str]) -> TestResult<Output> {
    Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd} (is it installed? .ci/run installs it): {e}").into())
}

pub(crate) fn curl(args: &[&str]) -> TestResult<Output> {
    let mut all = vec!["-sS", "--max-time", "20"];
    all.extend_from_slice(args);
    run("curl", &all)
}

/// `edgepipe devices add ID` → token.
pub(crate) fn add_device(data: &Path, id: &str) -> TestResult<String> {
    let out = Command::new(bin())
        .args(["devices", "--data-dir"])
        .arg(data)
        .args(["add", id])
        .output()?;
    assert!(out.status.success(), "devices add failed: {:?}", out);
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .lines()
        .last()
        .ok_or("no token line")?
        .trim()
        .to_string())
}

pub(crate) fn edgepipe(args: &[&str]) -> TestResult<Output> {
    Ok(Command::new(bin()).args(args).output()?)
}

/// Runs `edgepipe` and fails the test, with its output, unless it exits 0.
pub(crate) fn edgepipe_ok(args: &[&str]) -> TestResult<Output> {
    let out = edgepipe(args)?;
    assert!(
        out.status.success(),
        "edgepipe {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Every reading in the WAL (server must be stopped): (device, metric, ts, value JSON).
pub(crate) fn wal_readings(
    data: &Path,
) -> TestResult<Vec<(String, String, i64, serde_json::Value)>> {
    let out = Command::new(bin())
        .args(["wal-dump", "--data-dir"])
        .arg(data)
        .output()?;
    assert!(
        out.status.success(),
        "wal-dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v = Vec::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let j: serde_json::Value = serde_json::from_str(line)?;
        let rec = &j["record"];
        let dev = rec["device_id"].as_str().ok_or("device_id")?.to_string();
        for r in rec["readings"].as_array().ok_or("readings")? {
            v.push((
                dev.clone(),
                r["metric"].as_str().ok_or("metric")?.to_string(),
                r["ts"].as_i64().ok_or("ts")?,
                r["value"].clone(),
            ));
        }
    }
    Ok(v)
}

/// Runs `edgepipe demo ARGS --data-dir DIR`, asserts exit 0 and returns the summary line
/// ("demo finished: N messages published, M acked; server wrote R readings ...").
pub(crate) fn run_demo(dir: &Path, args: &[&str]) -> TestResult<String> {
    let mut all = vec!["demo"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data-dir", dir.to_str().ok_or("path")?]);
    let out = edgepipe(&all)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text
        .lines()
        .find(|l| l.starts_with("demo finished"))
        .ok_or_else(|| format!("no summary line in {text}"))?
        .to_string())
}

/// The number right after `marker` in `line`.
pub(crate) fn number_after(line: &str, marker: &str) -> TestResult<u64> {
    Ok(line
        .split(marker)
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no number after {marker:?} in {line:?}"))?)
}

/// `paho_publisher.py` publishing numbered readings at QoS 1 to a server that the test kills
/// and restarts; it records the number of every PUBACKed reading.
pub(crate) struct PahoLoad {
    child: Option<Child>,
    acked_path: PathBuf,
    stop_path: PathBuf,
}

impl PahoLoad {
    pub(crate) fn start(dir: &Path, mqtt_port: u16, device: &str, token: &str) -> TestResult<Self> {
        let acked_path = dir.join(format!("acked-{device}.txt"));
        let stop_path = dir.join("stop");
        let child = python_peer("paho_publisher.py")
            .args(["127.0.0.1", &mqtt_port.to_string(), device, token])
            .arg(&acked_path)
            .arg(&stop_path)
            .stdout(Stdio::piped())
            .spawn()?;
        Ok(Self {
            child: Some(child),
            acked_path,
            stop_path,
        })
    }

    fn acked_count(&self) -> usize {
        std::fs::read_to_string(&self.acked_path)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Waits (up to 30 s) until `n` more readings are acknowledged.
    pub(crate) fn wait_progress(&self, n: usize) -> bool {
        let before = self.acked_count();
        wait_until(Duration::from_secs(30), || self.acked_count() > before + n)
    }

    /// Stops publishing, waits for the publisher, returns the acknowledged numbers and the
    /// publisher's summary line.
    pub(crate) fn finish(mut self) -> TestResult<(Vec<i64>, String)> {
        std::fs::write(&self.stop_path, b"")?;
        let out = self
            .child
            .take()
            .ok_or("publisher gone")?
            .wait_with_output()?;
        assert!(out.status.success(), "publisher failed");
        let acked = std::fs::read_to_string(&self.acked_path)?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        Ok((
            acked,
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        ))
    }
}

impl Drop for PahoLoad {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// NDJSON readings `from..to` of one `temp` series at 1 Hz from `base` (ms): a noisy wave
/// around 20 with one spike to 80 at index `spike_at`, which the detector fires on once it
/// has warmed up (a few hundred points).
pub(crate) fn spike_readings(base: i64, from: usize, to: usize, spike_at: usize) -> String {
    (from..to)
        .map(|i| {
            let v = if i == spike_at {
                80.0
            } else {
                20.0 + 2.0 * (i as f64 / 15.0).sin() + ((i * 7919) % 100) as f64 / 500.0
            };
            format!(
                "{{\"ts\": {}, \"metrics\": {{\"temp\": {v:.3}}}}}\n",
                base + i as i64 * 1000
            )
        })
        .collect()
}

/// POSTs NDJSON to `/api/v1/ingest` as `device` on a server started with `--auto-register`
/// (the first token a device sends registers it).
pub(crate) fn ingest_as(http: SocketAddr, device: &str, body: &str) -> TestResult {
    let out = curl(&[
        "-f",
        "-H",
        "Authorization: Bearer e2e-auto-registered",
        "-H",
        &format!("X-Device-Id: {device}"),
        "-H",
        "Content-Type: application/x-ndjson",
        "--data-binary",
        body,
        &format!("http://{http}/api/v1/ingest"),
    ])?;
    if !out.status.success() {
        return Err(format!(
            "ingest as {device}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// `edgepipe query --format json` → rows.
pub(crate) fn query_json(args: &[&str], sql: &str) -> TestResult<Vec<serde_json::Value>> {
    let mut all = vec!["query", "--format", "json"];
    all.extend_from_slice(args);
    all.push(sql);
    let out = edgepipe(&all)?;
    assert!(
        out.status.success(),
        "edgepipe query failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// How often each number of the paho publisher (metric `n`) is in the lake's files, read
/// offline by `edgepipe query` (no server may run on `data`: nothing comes from the WAL).
pub(crate) fn lake_numbers(data: &Path) -> TestResult<HashMap<i64, usize>> {
    let d = data.to_str().ok_or("path")?;
    let rows = query_json(
        &["--data-dir", d],
        "SELECT value_int AS n FROM readings WHERE metric = 'n'",
    )?;
    let mut stored = HashMap::new();
    for r in &rows {
        *stored.entry(r["n"].as_i64().ok_or("n")?).or_default() += 1;
    }
    Ok(stored)
}

/// Which duplicates [`assert_stored_once`] refuses.
pub(crate) enum Twice {
    /// An acknowledged key stored more than once (a reading the client sent again after a
    /// lost acknowledgement may be stored twice).
    Acked,
    /// Any key stored more than once.
    Any,
}

/// Every acknowledged key is stored, and none stored twice as `twice` says; the first 10 of
/// each failure are named, after `place`.
pub(crate) fn assert_stored_once<K: std::hash::Hash + Eq + std::fmt::Debug>(
    place: &str,
    acked: &[K],
    stored: &HashMap<K, usize>,
    twice: Twice,
) {
    let missing: Vec<_> = acked
        .iter()
        .filter(|k| !stored.contains_key(*k))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{place}: acked but missing: {missing:?}"
    );
    let dup: Vec<_> = match twice {
        Twice::Acked => acked
            .iter()
            .filter(|k| stored.get(*k).copied().unwrap_or(0) > 1)
            .take(10)
            .collect(),
        Twice::Any => stored
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(k, _)| k)
            .take(10)
            .collect(),
    };
    assert!(dup.is_empty(), "{place}: stored more than once: {dup:?}");
}

/// Holds an MQTT 5 connection with `paho_tls_hold.py` (`peer`: HOST PORT CA CERT KEY DEVICE,
/// CA "-" for plain MQTT with `token`), runs `edgepipe withdraw…` once it is connected, and
/// returns how many seconds after that started the server closed the connection.
pub(crate) fn closed_after_withdrawing(
    peer: &[&str],
    token: Option<&str>,
    mark: &Path,
    withdraw: &[&str],
) -> TestResult<f64> {
    let mut args: Vec<&str> = peer.to_vec();
    let m = mark.to_str().ok_or("path")?;
    args.push(m);
    args.extend(token);
    let mut hold = python_peer("paho_tls_hold.py")
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(hold.stdout.take().ok_or("stdout")?));
    assert_eq!(lines.next().transpose()?.as_deref(), Some("connected"));
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(mark, "")?;
    edgepipe_ok(withdraw)?;
    let closed = lines
        .next()
        .transpose()?
        .ok_or("the peer ended without a line")?;
    let after: f64 = closed
        .strip_prefix("closed ")
        .ok_or_else(|| format!("unexpected: {closed}"))?
        .parse()?;
    assert!(hold.wait()?.success());
    Ok(after)
}
