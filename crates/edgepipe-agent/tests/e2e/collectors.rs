//! File tail (rotation, kill -9), HTTP push, and local detection with local alerts while the
//! server is unreachable.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

fn append(path: &std::path::Path, text: &str) -> TestResult {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn csv_lines(from: i64, to: i64) -> String {
    (from..to)
        .map(|i| format!("{},{i}\n", 1_700_000_000_000 + i))
        .collect()
}

/// Waits until the agent has read and sent everything it will: received stable for 2 s and an
/// empty queue.
fn settle(agent: &Agent) -> bool {
    let mut last = (-2.0, std::time::Instant::now());
    wait_until(Duration::from_secs(60), || {
        let r = agent.metric("edgepipe_agent_readings_received_total");
        if r != last.0 {
            last = (r, std::time::Instant::now());
            return false;
        }
        last.1.elapsed() > Duration::from_secs(2)
            && agent.metric("edgepipe_agent_queue_depth{stream=\"telemetry\"}") == 0.0
    })
}

/// A CSV file is tailed across a rotation (rename + new file) and a kill -9 of the agent: every
/// line arrives exactly once.
#[test]
fn file_tail_survives_rotation_and_kill9_without_loss_or_duplicates() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let srv = tmp.path().join("server");
    let token = add_device(&srv, "gw-file")?;
    let server = Server::start(&srv, "127.0.0.1:0")?;
    let log = tmp.path().join("app.csv");
    append(&log, "ts,line\n")?;
    append(&log, &csv_lines(0, 1000))?;
    let cfg = agent_config(
        tmp.path(),
        "gw-file",
        &server.mqtt.to_string(),
        &token,
        &format!(
            r#"
[[collectors]]
type = "file"
name = "app"
path = "{}"
format = "csv"
poll_interval = "50ms"
max_lines = 100
"#,
            log.display()
        ),
    )?;
    let mut agent = Agent::start(&cfg)?;
    assert!(
        wait_until(Duration::from_secs(30), || {
            agent.metric("edgepipe_agent_readings_received_total") >= 1000.0
        }),
        "first file not read"
    );
    // Rotate: rename, write more to the old name's new file.
    std::fs::rename(&log, tmp.path().join("app.csv.1"))?;
    append(&log, "ts,line\n")?;
    append(&log, &csv_lines(1000, 2000))?;
    assert!(
        wait_until(Duration::from_secs(30), || {
            agent.metric("edgepipe_agent_readings_received_total") >= 2000.0
        }),
        "rotated file not read: {:?}",
        agent.metrics()?
    );
    // kill -9 while more lines arrive, restart: it resumes at the stored offset.
    append(&log, &csv_lines(2000, 2500))?;
    agent.kill9()?;
    append(&log, &csv_lines(2500, 3000))?;
    let agent = Agent::start(&cfg)?;
    assert!(
        settle(&agent),
        "agent did not settle: {:?}",
        agent.metrics()?
    );
    agent.stop()?;
    server.stop()?;
    let stored = stored_at_server(&srv, "gw-file")?;
    let mut counts = std::collections::BTreeMap::new();
    for s in &stored {
        for (m, _, v) in &s.readings {
            if m == "line"
                && let Some(i) = int_value(v)
            {
                *counts.entry(i).or_insert(0u32) += 1;
            }
        }
    }
    assert_exactly_once(&counts, 3000);
    Ok(())
}

/// `POST /api/v1/push` answers 200 once the readings are durable, 400 naming the bad line, and
/// the pushed readings reach the server.
#[test]
fn http_push_is_acknowledged_after_the_append_and_reaches_the_server() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let srv = tmp.path().join("server");
    let token = add_device(&srv, "gw-http")?;
    let server = Server::start(&srv, "127.0.0.1:0")?;
    let cfg = agent_config(
        tmp.path(),
        "gw-http",
        &server.mqtt.to_string(),
        &token,
        "\n[[collectors]]\ntype = \"http\"\nname = \"push\"\n",
    )?;
    let agent = Agent::start(&cfg)?;
    let body: String = (0..100)
        .map(|i| {
            format!(
                "{{\"ts\": {}, \"metrics\": {{\"pushed\": {i}}}}}\n",
                1_700_000_000_000i64 + i
            )
        })
        .collect();
    let url = format!("http://{}/api/v1/push", agent.http);
    let out = Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/x-ndjson",
            "--data-binary",
            &body,
            &url,
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.ends_with("\n200"), "{text}");
    assert!(text.contains("\"accepted\":100"), "{text}");
    let out = Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/x-ndjson",
            "--data-binary",
            "{nope\n",
            &url,
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.ends_with("\n400") && text.contains("line 1"), "{text}");
    assert!(
        wait_until(Duration::from_secs(30), || {
            agent.metric("edgepipe_agent_readings_sent_total{stream=\"telemetry\"}") >= 100.0
        }),
        "push not sent"
    );
    agent.stop()?;
    server.stop()?;
    let stored = stored_at_server(&srv, "gw-http")?;
    let n = stored
        .iter()
        .flat_map(|s| s.readings.iter())
        .filter(|r| r.0 == "pushed")
        .count();
    assert_eq!(n, 100);
    Ok(())
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With the server unreachable, local detection finds a spike and alerts locally (Mosquitto
/// topic and command hook); when the server comes back the anomaly goes upstream before the
/// telemetry backlog.
#[test]
fn local_detection_alerts_offline_and_anomalies_go_upstream_first() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let srv = tmp.path().join("server");
    let token = add_device(&srv, "gw-detect")?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let topic = format!("e2e-alerts-{}", std::process::id());
    let mut sub = Kill(
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                "1883",
                "-q",
                "1",
                "-C",
                "1",
                "-t",
                &topic,
            ])
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let data = tmp.path().join("series.csv");
    let mut text = String::from("ts,temp\n");
    for i in 0..3000i64 {
        let noise = ((i * 7919) % 13) as f64 / 13.0 - 0.5;
        let v = if i == 2500 { 500.0 } else { 20.0 + noise };
        text.push_str(&format!("{},{v}\n", 1_700_000_000_000 + i * 1000));
    }
    std::fs::write(&data, text)?;
    let hook_log = tmp.path().join("hook.log");
    let cfg = agent_config(
        tmp.path(),
        "gw-detect",
        &addr,
        &token,
        &format!(
            r#"
[detect]
enabled = true
metrics = ["temp"]
[alerts]
mqtt_addr = "127.0.0.1:1883"
mqtt_topic = "{topic}"
command = ["sh", "-c", "printf '%s\n' \"$EDGEPIPE_ALERT\" >> {hook}"]
[[collectors]]
type = "file"
name = "series"
path = "{path}"
format = "csv"
"#,
            hook = hook_log.display(),
            path = data.display()
        ),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let agent = Agent::start(&cfg)?;
    // Offline: the alert arrives locally.
    let mut stdout = sub.0.stdout.take().ok_or("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send(out);
    });
    let alert = rx.recv_timeout(Duration::from_secs(60))?;
    assert!(alert.contains("\"metric\":\"temp\""), "{alert}");
    assert!(
        alert.contains(&(1_700_000_000_000i64 + 2_500_000).to_string()),
        "{alert}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(
            &hook_log
        )
        .is_ok_and(|t| t.contains("anomaly"))),
        "command hook did not run"
    );
    assert_eq!(agent.metric("edgepipe_agent_uplink_connected"), 0.0);
    // Server back: the anomaly batch goes first.
    let server = Server::start(&srv, &addr)?;
    assert!(
        wait_until(Duration::from_secs(60), || {
            agent.metric("edgepipe_agent_readings_sent_total{stream=\"telemetry\"}") >= 3000.0
                && agent.metric("edgepipe_agent_readings_sent_total{stream=\"alerts\"}") >= 1.0
        }),
        "not sent: {:?}",
        agent.metrics()?
    );
    agent.stop()?;
    server.stop()?;
    let stored = stored_at_server(&srv, "gw-detect")?;
    let stream_of = |s: &Stored| s.origin.as_ref().map(|o| o.0.clone()).unwrap_or_default();
    let first_alert = stored.iter().position(|s| stream_of(s) == "alerts");
    let first_telemetry = stored.iter().position(|s| stream_of(s) == "telemetry");
    assert!(first_alert.is_some(), "no anomaly upstream");
    assert!(
        first_alert < first_telemetry,
        "anomaly batch (#{first_alert:?}) did not go before the telemetry backlog (#{first_telemetry:?})"
    );
    assert!(
        stored[first_alert.unwrap_or(0)]
            .readings
            .iter()
            .any(|r| r.0 == "anomaly.temp" && r.1 == 1_700_000_000_000 + 2_500_000)
    );
    Ok(())
}

/// The simulator, system-metrics and stdin collectors, and the agent's own health telemetry,
/// all reach the server; a stream's transforms (filter + windowed aggregation) shape what goes.
#[test]
fn simulator_system_stdin_and_health_reach_the_server_through_transforms() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let srv = tmp.path().join("server");
    let token = add_device(&srv, "gw-misc")?;
    let server = Server::start(&srv, "127.0.0.1:0")?;
    let input = tmp.path().join("stdin.jsonl");
    let lines: String = (0..50)
        .map(|i| {
            format!(
                "{{\"ts\": {}, \"metrics\": {{\"piped\": {i}, \"noise\": 1}}}}\n",
                1_700_000_000_000i64 + i * 100
            )
        })
        .collect();
    std::fs::write(&input, lines)?;
    let cfg = agent_config(
        tmp.path(),
        "gw-misc",
        &server.mqtt.to_string(),
        &token,
        r#"
[[streams]]
name = "piped"
transforms = [
  { type = "drop", metrics = ["noise"] },
  { type = "filter", expr = "value >= 10" },
  { type = "aggregate", window = "1s", functions = ["count", "max"] },
]
[[collectors]]
type = "simulator"
name = "sim"
devices = 2
interval = "100ms"
[[collectors]]
type = "system"
name = "gw"
interval = "200ms"
[[collectors]]
type = "stdin"
name = "pipe"
stream = "piped"
"#,
    )?;
    let agent = Agent::start_with(&cfg, std::fs::File::open(&input)?.into())?;
    let ok = wait_until(Duration::from_secs(60), || {
        agent.metric("edgepipe_agent_readings_sent_total{stream=\"health\"}") >= 1.0
            && agent.metric("edgepipe_agent_readings_sent_total{stream=\"piped\"}") >= 8.0
            && agent.metric("edgepipe_agent_readings_sent_total{stream=\"telemetry\"}") >= 40.0
    });
    assert!(ok, "not sent: {:?}", agent.metrics()?);
    agent.stop()?;
    server.stop()?;
    let stored = stored_at_server(&srv, "gw-misc")?;
    let has = |m: &str| stored.iter().any(|s| s.readings.iter().any(|r| r.0 == m));
    for m in [
        "sim-0.temp",
        "sim-1.pressure",
        "system.mem_total_bytes",
        "agent.rss_bytes",
        "agent.telemetry.queue_depth",
        "agent.telemetry.oldest_unsent_age_s",
        "agent.sent_per_sec",
    ] {
        assert!(has(m), "{m} not at the server");
    }
    // stdin readings 10..49 at 100 ms steps from a whole second: windows of 10 readings.
    assert!(
        !has("piped") && !has("noise"),
        "raw readings passed the aggregation"
    );
    let counts: Vec<i64> = stored
        .iter()
        .flat_map(|s| s.readings.iter())
        .filter(|r| r.0 == "piped.count")
        .filter_map(|r| int_value(&r.2))
        .collect();
    assert_eq!(counts, [10, 10, 10, 10], "window counts");
    let maxes: Vec<f64> = stored
        .iter()
        .flat_map(|s| s.readings.iter())
        .filter(|r| r.0 == "piped.max")
        .filter_map(|r| r.2.get("F64").and_then(serde_json::Value::as_f64))
        .collect();
    assert_eq!(maxes, [19.0, 29.0, 39.0, 49.0]);
    Ok(())
}

/// `edgepipe-agent validate` exits 2 and lists every problem with its key path.
#[test]
fn validate_lists_every_problem_with_its_key_path() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(
        &cfg,
        r#"
agent_id = "gw 1"
[uplink]
url = "http://nope"
[queue]
batch_max_wait = "soon"
[[streams]]
name = "bulk"
transforms = [{ type = "filter", expr = "value >" }]
[[collectors]]
type = "generator"
name = "g"
stream = "nowhere"
"#,
    )?;
    let out = Command::new(agent_bin())
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    for path in [
        "agent_id:",
        "uplink.url:",
        "queue:",
        "streams[0].transforms[0].expr:",
        "collectors[0].stream:",
    ] {
        assert!(text.contains(path), "{path} missing in:\n{text}");
    }
    let good = tmp.path().join("good.toml");
    std::fs::write(&good, "agent_id = \"gw-1\"\n")?;
    let out = Command::new(agent_bin())
        .args(["validate", "--config"])
        .arg(&good)
        .output()?;
    assert!(out.status.success());
    Ok(())
}
