//! Real processes for the agent's end-to-end tests: the `edgepipe` server binary (built next to
//! this test binary), the `edgepipe-agent` binary, Mosquitto's `mosquitto_pub`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgepipe_testkit::ServerProcess;
pub(crate) use edgepipe_testkit::{TestResult, free_port};

/// `target/debug/edgepipe`, next to this test's `deps/` directory, or `EDGEPIPE_SERVER_BIN`
/// (a shared target directory may hold a server built from another branch).
pub(crate) fn server_bin() -> TestResult<PathBuf> {
    if let Some(p) = std::env::var_os("EDGEPIPE_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("test executable has no target dir")?;
    let bin = dir.join("edgepipe");
    if !bin.exists() {
        return Err(format!(
            "{} not found: run `cargo build -p edgepipe-server` (cargo test --workspace builds it)",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

pub(crate) fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_edgepipe-agent")
}

/// A running `edgepipe serve` (the testkit's launcher, shared with the server's suite).
pub(crate) struct Server(ServerProcess);

impl std::ops::Deref for Server {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.0
    }
}

impl From<ServerProcess> for Server {
    fn from(p: ServerProcess) -> Self {
        Server(p)
    }
}

impl Server {
    pub(crate) fn start(data: &Path, mqtt: &str) -> TestResult<Server> {
        let p = ServerProcess::start(
            &server_bin()?,
            data,
            mqtt,
            "127.0.0.1:0",
            &[],
            &[("EDGEPIPE_LOG", "warn")],
        )?;
        Ok(Server(p))
    }

    pub(crate) fn kill9(&mut self) -> TestResult {
        self.0.kill9()
    }

    /// SIGINT and wait (ordered shutdown: the lake is flushed), so `wal-dump` can open the data
    /// directory.
    pub(crate) fn stop(mut self) -> TestResult {
        self.0.stop_within(Duration::from_secs(30))?;
        Ok(())
    }
}

fn sigint(child: &Child) -> TestResult {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    Ok(())
}

fn wait_exit(child: &mut Child, what: &str) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            child.kill()?;
            return Err(format!("{what} did not stop within 30 s of SIGINT").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `edgepipe devices add ID` → token.
pub(crate) fn add_device(data: &Path, id: &str) -> TestResult<String> {
    let out = Command::new(server_bin()?)
        .args(["devices", "--data-dir"])
        .arg(data)
        .args(["add", id])
        .output()?;
    if !out.status.success() {
        return Err(format!("devices add failed: {out:?}").into());
    }
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .lines()
        .last()
        .ok_or("no token line")?
        .trim()
        .to_string())
}

/// A running `edgepipe-agent run`.
pub(crate) struct Agent {
    child: Child,
    pub(crate) http: SocketAddr,
}

impl Agent {
    pub(crate) fn start(config: &Path) -> TestResult<Agent> {
        Self::start_with(config, Stdio::null())
    }

    /// Starts the agent with `stdin` as its standard input (for the stdin collector).
    pub(crate) fn start_with(config: &Path, stdin: Stdio) -> TestResult<Agent> {
        let mut child = Command::new(agent_bin())
            .args(["run", "--config"])
            .arg(config)
            .env("EDGEPIPE_LOG", "warn")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let http = line
            .split("http://")
            .nth(1)
            .map(str::trim)
            .ok_or_else(|| format!("unexpected first line: {line:?}"))?
            .parse()?;
        Ok(Agent { child, http })
    }

    pub(crate) fn kill9(&mut self) -> TestResult {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    pub(crate) fn stop(mut self) -> TestResult {
        sigint(&self.child)?;
        wait_exit(&mut self.child, "agent")
    }

    /// `/metrics` as `name{labels}` → value.
    pub(crate) fn metrics(&self) -> TestResult<HashMap<String, f64>> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://{}/metrics", self.http))
            .output()?;
        let mut m = HashMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.rsplit_once(' ')
                && let Ok(v) = v.parse()
            {
                m.insert(k.to_string(), v);
            }
        }
        Ok(m)
    }

    pub(crate) fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .ok()
            .and_then(|m| m.get(name).copied())
            .unwrap_or(-1.0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until true or `timeout` (a hang guard, not a performance threshold).
pub(crate) fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// One record the server stored, as `edgepipe wal-dump` prints it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) received_at: i64,
    /// `(stream, seq)` of an agent batch.
    pub(crate) origin: Option<(String, u64)>,
    /// `(metric, ts, value)`.
    pub(crate) readings: Vec<(String, i64, serde_json::Value)>,
}

/// Everything the server stored for `device`, in arrival order, read from the server's WAL (which
/// keeps batch origins and arrival order), checked against the lake: the lake must hold exactly
/// as many readings of `device` as the WAL. The server must be stopped.
pub(crate) fn stored_at_server(data: &Path, device: &str) -> TestResult<Vec<Stored>> {
    let out = Command::new(server_bin()?)
        .args(["wal-dump", "--data-dir"])
        .arg(data)
        .output()?;
    if !out.status.success() {
        return Err(format!("wal-dump failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let mut v = Vec::new();
    let text = String::from_utf8(out.stdout)?;
    for line in text.lines() {
        let j: serde_json::Value = serde_json::from_str(line)?;
        let rec = &j["record"];
        if rec["device_id"].as_str() != Some(device) {
            continue;
        }
        let origin = rec["origin"].as_object().and_then(|o| {
            Some((
                o.get("stream")?.as_str()?.to_string(),
                o.get("seq")?.as_u64()?,
            ))
        });
        let mut readings = Vec::new();
        for r in rec["readings"].as_array().ok_or("readings")? {
            readings.push((
                r["metric"].as_str().ok_or("metric")?.to_string(),
                r["ts"].as_i64().ok_or("ts")?,
                r["value"].clone(),
            ));
        }
        v.push(Stored {
            received_at: rec["received_at"].as_i64().ok_or("received_at")?,
            origin,
            readings,
        });
    }
    // The lake holds exactly the WAL's readings of this device (the server stopped in order, so
    // every record is flushed): what the tests count in the WAL is what SQL and Spark see.
    let sql = format!("SELECT count(*) AS n FROM readings WHERE device_id = '{device}'");
    let out = Command::new(server_bin()?)
        .args(["query", "--format", "csv", "--data-dir"])
        .arg(data)
        .arg(&sql)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "edgepipe query failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8(out.stdout)?;
    let in_lake: usize = text
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("unexpected query output {text:?}"))?;
    let in_wal: usize = v.iter().map(|s| s.readings.len()).sum();
    if in_lake != in_wal {
        return Err(format!("lake holds {in_lake} readings of {device}, the WAL {in_wal}").into());
    }
    Ok(v)
}

/// The integer value of a stored reading (`{"I64": n}`, or an integral `{"F64": x}`, in the dump).
pub(crate) fn int_value(v: &serde_json::Value) -> Option<i64> {
    v.get("I64")
        .and_then(serde_json::Value::as_i64)
        .or_else(|| {
            v.get("F64")
                .and_then(serde_json::Value::as_f64)
                .filter(|x| x.fract() == 0.0)
                .map(|x| x as i64)
        })
}

/// How many times each generator reading number (`prefix.sK` = i) is stored.
pub(crate) fn generator_counts(stored: &[Stored], prefix: &str) -> BTreeMap<i64, u32> {
    let mut counts = BTreeMap::new();
    for s in stored {
        for (m, _, v) in &s.readings {
            if m.starts_with(&format!("{prefix}.s"))
                && let Some(i) = int_value(v)
            {
                *counts.entry(i).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Asserts every number in `0..n` is stored exactly once, naming the first offenders.
pub(crate) fn assert_exactly_once(counts: &BTreeMap<i64, u32>, n: i64) {
    let missing: Vec<i64> = (0..n).filter(|i| !counts.contains_key(i)).collect();
    let dups: Vec<(i64, u32)> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(i, c)| (*i, *c))
        .collect();
    let extra: Vec<i64> = counts
        .keys()
        .filter(|i| **i >= n || **i < 0)
        .copied()
        .collect();
    assert!(
        missing.is_empty() && dups.is_empty() && extra.is_empty(),
        "{} missing (first {:?}), {} duplicated (first {:?}), {} unexpected (first {:?})",
        missing.len(),
        &missing[..missing.len().min(10)],
        dups.len(),
        &dups[..dups.len().min(10)],
        extra.len(),
        &extra[..extra.len().min(10)]
    );
}

/// Switches a written agent config's uplink to MQTT 5.
pub(crate) fn use_mqtt5(config: &Path) -> TestResult {
    let text =
        std::fs::read_to_string(config)?.replace("[uplink]\n", "[uplink]\nprotocol = \"v5\"\n");
    std::fs::write(config, text)?;
    Ok(())
}

/// Writes an agent config; `extra` is appended verbatim.
pub(crate) fn agent_config(
    dir: &Path,
    agent_id: &str,
    server: &str,
    token: &str,
    extra: &str,
) -> TestResult<PathBuf> {
    let path = dir.join("agent.toml");
    let text = format!(
        r#"agent_id = "{agent_id}"
data_dir = "{data}"
[uplink]
url = "mqtt://{server}"
token = "{token}"
backoff_min = "100ms"
backoff_max = "1s"
connect_timeout = "2s"
[http]
listen = "127.0.0.1:0"
[health]
interval = "1s"
{extra}
"#,
        data = dir.join("agent-data").display()
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Minimum number of increasing runs the sequence can be split into (patience sorting): 1 means
/// strictly in order; 2 means two interleaved in-order lanes (live and backlog).
pub(crate) fn increasing_lanes(seqs: &[u64]) -> usize {
    let mut tops: Vec<u64> = Vec::new();
    for &x in seqs {
        // Put x on the lane with the largest top below it.
        let best = tops
            .iter()
            .enumerate()
            .filter(|(_, t)| **t < x)
            .max_by_key(|(_, t)| **t)
            .map(|(i, _)| i);
        match best {
            Some(i) => tops[i] = x,
            None => tops.push(x),
        }
    }
    tops.len()
}
