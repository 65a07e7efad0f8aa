//! MQTT 3.1.1 (mosquitto_pub) and MQTT 5 (paho-mqtt) against the real server.

use std::time::Duration;

use crate::support::*;

fn pub311(
    srv: &Server,
    user: &str,
    pass: &str,
    topic: &str,
    msg: &str,
    qos: &str,
) -> TestResult<(bool, String)> {
    let port = srv.mqtt.port().to_string();
    let out = run(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv311",
            "-u",
            user,
            "-P",
            pass,
            "-q",
            qos,
            "-t",
            topic,
            "-m",
            msg,
            "-d",
        ],
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[test]
fn mosquitto_pub_qos1_is_acked_and_durable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "pump-7")?;
    let srv = Server::start(dir.path(), &[])?;
    let (ok, text) = pub311(
        &srv,
        "pump-7",
        &token,
        "edgepipe/v1/pump-7/telemetry",
        r#"{"ts": 1764000000123, "metrics": {"temp": 21.5, "count": 9007199254740993, "on": true, "mode": "auto"}}"#,
        "1",
    )?;
    assert!(ok, "{text}");
    assert!(text.contains("received PUBACK"), "{text}");
    let st = srv.status()?;
    assert_eq!(st["readings_written"], 4, "{st}");
    assert!(srv.stop()?.success(), "clean exit on SIGINT");
    let readings = wal_readings(dir.path())?;
    assert_eq!(readings.len(), 4);
    let count = readings.iter().find(|r| r.1 == "count").ok_or("count")?;
    assert_eq!(
        count.3["I64"], 9007199254740993i64,
        "integers kept without loss"
    );
    assert!(
        readings
            .iter()
            .any(|r| r.1 == "mode" && r.3["Str"] == "auto")
    );
    assert!(readings.iter().any(|r| r.1 == "on" && r.3["Bool"] == true));
    Ok(())
}

#[test]
fn wrong_token_unknown_and_disabled_devices_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "d1")?;
    let srv = Server::start(dir.path(), &[])?;
    let topic = "edgepipe/v1/d1/telemetry";
    let msg = r#"{"metrics":{"x":1}}"#;
    let (ok, text) = pub311(&srv, "d1", "not-the-token", topic, msg, "1")?;
    assert!(
        !ok && text.contains("CONNACK (4)"),
        "bad password refused: {text}"
    );
    let (ok, text) = pub311(
        &srv,
        "ghost",
        &token,
        "edgepipe/v1/ghost/telemetry",
        msg,
        "1",
    )?;
    assert!(
        !ok && text.contains("CONNACK (4)"),
        "unknown device refused: {text}"
    );
    let out = edgepipe(&[
        "devices",
        "--data-dir",
        dir.path().to_str().ok_or("path")?,
        "disable",
        "d1",
    ])?;
    assert!(out.status.success());
    let (ok, text) = pub311(&srv, "d1", &token, topic, msg, "1")?;
    assert!(
        !ok && text.contains("CONNACK (5)"),
        "disabled device refused: {text}"
    );
    let out = edgepipe(&[
        "devices",
        "--data-dir",
        dir.path().to_str().ok_or("path")?,
        "enable",
        "d1",
    ])?;
    assert!(out.status.success());
    let out = edgepipe(&[
        "devices",
        "--data-dir",
        dir.path().to_str().ok_or("path")?,
        "rotate-token",
        "d1",
    ])?;
    let new_token = String::from_utf8(out.stdout)?
        .lines()
        .last()
        .ok_or("token")?
        .to_string();
    let (ok, _) = pub311(&srv, "d1", &token, topic, msg, "1")?;
    assert!(!ok, "old token stops working after rotation");
    let (ok, text) = pub311(&srv, "d1", &new_token, topic, msg, "1")?;
    assert!(ok && text.contains("received PUBACK"), "{text}");
    let st = srv.status()?;
    assert!(st["auth_failures"].as_u64() >= Some(4), "{st}");
    Ok(())
}

#[test]
fn publishing_under_another_device_id_closes_v311_connection() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "a")?;
    add_device(dir.path(), "b")?;
    let srv = Server::start(dir.path(), &[])?;
    let (ok, text) = pub311(
        &srv,
        "a",
        &token,
        "edgepipe/v1/b/telemetry",
        r#"{"metrics":{"x":1}}"#,
        "1",
    )?;
    assert!(!ok, "{text}");
    assert!(!text.contains("received PUBACK"), "{text}");
    let st = srv.status()?;
    assert_eq!(st["readings_written"], 0);
    let dl = srv.api(&[&format!("http://{}/api/v1/deadletters", srv.http)])?;
    let v: serde_json::Value = serde_json::from_slice(&dl.stdout)?;
    assert_eq!(v["items"][0]["reason"], "not_authorized", "{v}");
    Ok(())
}

#[test]
fn qos2_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "q2")?;
    let srv = Server::start(dir.path(), &[])?;
    let (ok, text) = pub311(
        &srv,
        "q2",
        &token,
        "edgepipe/v1/q2/telemetry",
        r#"{"metrics":{"x":1}}"#,
        "2",
    )?;
    assert!(!ok, "QoS 2 must not complete: {text}");
    assert!(!text.contains("PUBCOMP"), "{text}");
    assert_eq!(srv.status()?["readings_written"], 0);
    Ok(())
}

#[test]
fn paho_mqtt5_gets_reason_codes_and_bad_payload_is_dead_lettered() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "v5dev")?;
    add_device(dir.path(), "someone-else")?;
    let srv = Server::start(dir.path(), &[])?;
    let out = run_peer(
        "paho_v5.py",
        python_peer("paho_v5.py").args([
            "127.0.0.1",
            &srv.mqtt.port().to_string(),
            "v5dev",
            &token,
            "someone-else",
        ]),
    )?;
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(r["connack"], 0, "{r}");
    assert_eq!(r["good"], 0, "{r}");
    assert_eq!(r["bad_payload"], 0x99, "{r}");
    assert_eq!(r["nan"], 0x99, "{r}");
    assert_eq!(r["other_device"], 0x87, "{r}");
    assert_eq!(r["unknown_topic"], 0x90, "{r}");
    assert_eq!(r["wrong_token_connack"], 0x86, "{r}");
    assert_eq!(srv.status()?["readings_written"], 4);

    // The bad payload's raw bytes are in the dead-letter store, via API and CLI.
    let dl = srv.api(&[&format!("http://{}/api/v1/deadletters?after=0", srv.http)])?;
    let v: serde_json::Value = serde_json::from_slice(&dl.stdout)?;
    let items = v["items"].as_array().ok_or("items")?;
    let bad = items
        .iter()
        .find(|d| d["reason"] == "bad_payload")
        .ok_or("bad payload dead letter")?;
    assert_eq!(bad["raw"], hex_of(b"{not json"), "{bad}");
    assert_eq!(bad["device"], "v5dev");
    let out = edgepipe(&[
        "deadletters",
        "--data-dir",
        dir.path().to_str().ok_or("path")?,
        "list",
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bad_payload") && text.contains("not_authorized"),
        "{text}"
    );
    Ok(())
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn will_is_ingested_after_abnormal_disconnect() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "willdev")?;
    let srv = Server::start(dir.path(), &[])?;
    run_peer(
        "paho_will.py",
        python_peer("paho_will.py").args([
            "127.0.0.1",
            &srv.mqtt.port().to_string(),
            "willdev",
            &token,
        ]),
    )?;
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .status()
            .map(|s| s["readings_written"] == 1)
            .unwrap_or(false)),
        "will message was not ingested"
    );
    srv.stop()?;
    let r = wal_readings(dir.path())?;
    assert_eq!(r[0].1, "online");
    Ok(())
}

#[test]
fn clean_disconnect_discards_the_will() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "w2")?;
    let srv = Server::start(dir.path(), &[])?;
    let port = srv.mqtt.port().to_string();
    let out = run(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "w2",
            "-P",
            &token,
            "-q",
            "1",
            "-t",
            "edgepipe/v1/w2/telemetry",
            "-m",
            r#"{"metrics":{"x":1}}"#,
            "--will-topic",
            "edgepipe/v1/w2/telemetry",
            "--will-payload",
            r#"{"metrics":{"online":false}}"#,
        ],
    )?;
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        srv.status()?["readings_written"],
        1,
        "only the publish, not the will"
    );
    Ok(())
}

#[test]
fn topic_mapping_turns_a_foreign_topic_scheme_into_readings() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "press-4")?;
    let cfg = dir.path().join("edgepipe.toml");
    std::fs::write(
        &cfg,
        r#"
[[topic_mappings]]
pattern = "factory/{line}/{device_id}/{metric}"
payload = "raw"
"#,
    )?;
    let out = edgepipe(&["validate", "--config", cfg.to_str().ok_or("path")?])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let srv = Server::start(dir.path(), &["--config", cfg.to_str().ok_or("path")?])?;
    let (ok, text) = pub311(
        &srv,
        "press-4",
        &token,
        "factory/line-2/press-4/pressure",
        "4.25",
        "1",
    )?;
    assert!(ok && text.contains("received PUBACK"), "{text}");
    let (ok, text) = pub311(
        &srv,
        "press-4",
        &token,
        "factory/line-2/press-9/pressure",
        "1",
        "1",
    )?;
    assert!(
        !ok,
        "a mapped topic naming another device is refused: {text}"
    );
    srv.stop()?;
    let r = wal_readings(dir.path())?;
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].0.as_str(), r[0].1.as_str()), ("press-4", "pressure"));
    assert_eq!(r[0].3["F64"], 4.25);
    Ok(())
}

#[test]
fn validate_reports_every_config_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmax_connections = 0\nmax_payload_bytes = 0\n",
    )?;
    let out = edgepipe(&["validate", "--config", cfg.to_str().ok_or("path")?])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("limits.max_connections") && err.contains("limits.max_payload_bytes"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_taken_port_names_the_flag_to_change() -> TestResult {
    let dir = tempfile::tempdir()?;
    let busy = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = busy.local_addr()?.to_string();
    let out = edgepipe(&[
        "serve",
        "--data-dir",
        dir.path().to_str().ok_or("path")?,
        "--mqtt-addr",
        &addr,
        "--http-addr",
        "127.0.0.1:0",
    ])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--mqtt-addr"), "{err}");
    Ok(())
}

#[test]
fn demo_runs_beside_another_broker_and_exits_zero() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Mosquitto already holds 1883 on this machine; the demo must pick free ports.
    let line = run_demo(
        dir.path(),
        &["--duration", "4s", "--devices", "5", "--interval", "200ms"],
    )?;
    assert!(number_after(&line, "server wrote ")? > 0, "{line}");
    Ok(())
}

#[test]
fn oversized_payload_is_dead_lettered_truncated_and_huge_one_closes_the_connection() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "big")?;
    let srv = Server::start(dir.path(), &[])?;
    let port = srv.mqtt.port().to_string();
    let file = dir.path().join("p.bin");
    // Over the 128 KiB payload limit but within the codec's frame limit: refused with a reason,
    // kept as a (truncated) dead letter, and acknowledged on 3.1.1 so it is not resent forever.
    let file_s = file.to_str().ok_or("path")?.to_string();
    let pub_file = |len: usize| -> TestResult<std::process::Output> {
        std::fs::write(&file, vec![b'x'; len])?;
        run(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-u",
                "big",
                "-P",
                &token,
                "-q",
                "1",
                "-t",
                "edgepipe/v1/big/telemetry",
                "-f",
                &file_s,
                "-d",
            ],
        )
    };
    let out = pub_file(150 * 1024)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(
        &srv.api(&[&format!("http://{}/api/v1/deadletters", srv.http)])?
            .stdout,
    )?;
    let d = &v["items"][0];
    assert_eq!(d["reason"], "too_large", "{v}");
    assert_eq!(d["truncated"], true);
    assert_eq!(d["original_len"], 150 * 1024);
    // Far over the limit: the codec closes the connection; nothing is acknowledged or written.
    let out = pub_file(1024 * 1024)?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("received PUBACK"), "{text}");
    assert_eq!(srv.status()?["readings_written"], 0);
    Ok(())
}

#[test]
fn keep_alive_timeout_drops_a_silent_client_and_publishes_its_will() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "quiet")?;
    let srv = Server::start(dir.path(), &[])?;
    let out = run_peer(
        "raw_keepalive.py",
        python_peer("raw_keepalive.py").args([
            "127.0.0.1",
            &srv.mqtt.port().to_string(),
            "quiet",
            &token,
        ]),
    )?;
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(r["connack_rc"], 0, "{r}");
    assert_eq!(r["closed"], true, "{r}");
    let after = r["after_s"].as_f64().ok_or("after_s")?;
    // Spec: 1.5 x keep-alive. Loose upper bound: this checks behaviour, not speed.
    assert!(
        (0.9..10.0).contains(&after),
        "closed after {after} s for keep-alive 1 s: {r}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || srv
            .status()
            .map(|s| s["readings_written"] == 1)
            .unwrap_or(false)),
        "will not published after keep-alive timeout"
    );
    Ok(())
}

#[test]
fn per_device_rate_limit_pushes_back_without_losing_anything() -> TestResult {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let token = add_device(dir.path(), "flood")?;
    let srv = Server::start(dir.path(), &["--device-rate", "2"])?;
    let lines: String = (0..12)
        .map(|i| {
            format!(
                "{{\"ts\": {}, \"metrics\": {{\"i\": {i}}}}}\n",
                1764000000000i64 + i
            )
        })
        .collect();
    let mut child = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &srv.mqtt.port().to_string(),
            "-u",
            "flood",
            "-P",
            &token,
            "-q",
            "1",
            "-t",
            "edgepipe/v1/flood/telemetry",
            "-l",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("stdin")?
        .write_all(lines.as_bytes())?;
    child.wait()?;
    let metrics = String::from_utf8(curl(&[&format!("http://{}/metrics", srv.http)])?.stdout)?;
    let limited = metrics
        .lines()
        .find(|l| l.starts_with("edgepipe_ingest_messages_rejected_total{reason=\"rate_limited\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or("rate_limited counter")?;
    assert!(limited >= 1, "the flood must hit the limit: {metrics}");
    // 3.1.1 has no reason code for it: the connection closes without an ack, mosquitto_pub
    // reconnects and resends, so every reading arrives exactly once, just later.
    srv.stop()?;
    let stored = wal_readings(dir.path())?;
    let mut seen: Vec<i64> = stored.iter().map(|r| r.2).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        (stored.len(), seen.len()),
        (12, 12),
        "each reading exactly once"
    );
    Ok(())
}

/// Password guessing: after `limits.auth_backoff_after` failures an address is refused
/// unexamined, even with the right token, over MQTT and HTTP (429 with Retry-After), until its
/// backoff ends; a success then clears it.
#[test]
fn an_address_that_keeps_failing_to_log_in_is_refused_for_a_while() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let token = add_device(&data, "guarded")?;
    let cfg = dir.path().join("guard.toml");
    std::fs::write(
        &cfg,
        "[limits]\nauth_backoff_after = 3\nauth_backoff_loopback = true\n",
    )?;
    let srv = Server::start(&data, &["--config", cfg.to_str().ok_or("path")?])?;
    let port = srv.mqtt.port().to_string();
    let publish = |password: &str| -> TestResult<bool> {
        let out = run(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-u",
                "guarded",
                "-P",
                password,
                "-t",
                "edgepipe/v1/guarded/telemetry",
                "-m",
                &format!("{{\"ts\": {}, \"metrics\": {{\"n\": 1}}}}", now_ms()),
            ],
        )?;
        Ok(out.status.success())
    };
    for _ in 0..3 {
        assert!(!publish("guess")?, "a wrong token was accepted");
    }
    assert!(
        !publish(&token)?,
        "the right token got through during the backoff"
    );
    let out = curl(&[
        "-s",
        "-i",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "X-Device-Id: guarded",
        "-H",
        "Content-Type: application/x-ndjson",
        "--data-binary",
        &format!("{{\"ts\": {}, \"metrics\": {{\"n\": 2}}}}\n", now_ms()),
        &format!("http://{}/api/v1/ingest", srv.http),
    ])?;
    let said = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        said.starts_with("http/1.1 429")
            && said.contains("retry-after:")
            && said.contains("auth_backoff"),
        "{said}"
    );
    let metrics =
        String::from_utf8(curl(&["-s", &format!("http://{}/metrics", srv.http)])?.stdout)?;
    let blocked: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("edgepipe_auth_blocked_total "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no edgepipe_auth_blocked_total")?;
    assert!(blocked >= 2, "{blocked}");
    // The first backoff is 1 s; afterwards the right token works and clears the address.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(publish(&token)?, "the right token after the backoff");
    assert!(!publish("guess")?);
    assert!(
        publish(&token)?,
        "one failure after a success does not block"
    );
    srv.stop()?;
    Ok(())
}

/// `devices disable` closes the device's open connection within a second (a token device on
/// plain MQTT; the certificate case is `tls::a_revoked_certificate…`), and it cannot reconnect.
#[test]
fn disabling_a_device_closes_its_open_connection_within_a_second() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let token = add_device(&data, "held")?;
    let srv = Server::start(&data, &[])?;
    let d = data.to_str().ok_or("path")?;
    let after = closed_after_withdrawing(
        &[
            "127.0.0.1",
            &srv.mqtt.port().to_string(),
            "-",
            "-",
            "-",
            "held",
        ],
        Some(&token),
        &dir.path().join("disabled-at"),
        &["devices", "disable", "held", "--data-dir", d],
    )?;
    eprintln!("disabled device's connection closed {after:.3} s after devices disable started");
    assert!(after < 1.0, "closed {after} s after disabling");
    let out = run(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &srv.mqtt.port().to_string(),
            "-q",
            "1",
            "-u",
            "held",
            "-P",
            &token,
            "-t",
            "edgepipe/v1/held/telemetry",
            "-m",
            "{\"metrics\": {\"n\": 1}}",
        ],
    )?;
    assert!(!out.status.success(), "a disabled device reconnected");
    srv.stop()?;
    Ok(())
}
