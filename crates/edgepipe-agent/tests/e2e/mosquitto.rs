//! Mosquitto as the gateway's local broker with `mosquitto_pub` sensors → agent → server.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// Three sensors publish 200 readings each with `mosquitto_pub` (QoS 1) to the local Mosquitto;
/// the agent subscribes through a topic mapping and forwards over MQTT 5; every reading arrives
/// once.
#[test]
fn mosquitto_sensors_reach_the_server_through_the_agent() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let srv = tmp.path().join("server");
    let token = add_device(&srv, "gw-mosq")?;
    let server = Server::start(&srv, "127.0.0.1:0")?;
    let run = format!("e2e-agent-{}", std::process::id());
    let cfg = agent_config(
        tmp.path(),
        "gw-mosq",
        &server.mqtt.to_string(),
        &token,
        &format!(
            r#"
[[collectors]]
type = "mqtt"
name = "local"
addr = "127.0.0.1:1883"
topics = []
topic_mappings = [{{ pattern = "{run}/{{device_id}}/{{metric}}", payload = "raw" }}]
"#
        ),
    )?;
    use_mqtt5(&cfg)?;
    let agent = Agent::start(&cfg)?;
    let publish = |sensor: &str, lines: String| -> TestResult {
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-l", "-t"])
            .arg(format!("{run}/{sensor}/temp"))
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| format!("mosquitto_pub (is mosquitto-clients installed?): {e}"))?;
        use std::io::Write;
        child
            .stdin
            .take()
            .ok_or("stdin")?
            .write_all(lines.as_bytes())?;
        let st = child.wait()?;
        assert!(st.success(), "mosquitto_pub failed");
        Ok(())
    };
    // The subscription is live once a probe comes through.
    let subscribed = wait_until(Duration::from_secs(30), || {
        let _ = publish("probe", "-1\n".into());
        agent.metric("edgepipe_agent_readings_received_total") >= 1.0
    });
    assert!(subscribed, "agent never received from Mosquitto");
    let before = agent.metric("edgepipe_agent_readings_received_total");
    for s in 0..3 {
        let lines: String = (0..200).map(|i| format!("{}\n", s * 1000 + i)).collect();
        publish(&format!("sensor-{s}"), lines)?;
    }
    let all = wait_until(Duration::from_secs(60), || {
        agent.metric("edgepipe_agent_readings_received_total") >= before + 600.0
            && agent.metric("edgepipe_agent_readings_sent_total{stream=\"telemetry\"}")
                >= before + 600.0
    });
    assert!(
        all,
        "not everything was received and sent: {:?}",
        agent.metrics()?
    );
    agent.stop()?;
    server.stop()?;
    let stored = stored_at_server(&srv, "gw-mosq")?;
    let mut seen = std::collections::BTreeMap::new();
    for s in &stored {
        for (m, _, v) in &s.readings {
            if let Some(sensor) = m.strip_suffix(".temp").filter(|x| x.starts_with("sensor-")) {
                *seen
                    .entry((sensor.to_string(), int_value(v).unwrap_or(-1)))
                    .or_insert(0) += 1;
            }
        }
    }
    for s in 0..3 {
        for i in 0..200 {
            let key = (format!("sensor-{s}"), s * 1000 + i);
            assert_eq!(seen.get(&key), Some(&1), "{key:?}");
        }
    }
    assert_eq!(seen.len(), 600);
    Ok(())
}

/// kill -9 of the agent while `mosquitto_pub` sensors publish: a message is acknowledged to
/// Mosquitto only after it is durable in the agent's queue, so the broker redelivers whatever
/// the dead agent had not stored and no reading is lost. Messages in flight at the kill may be
/// stored twice (at-least-once from MQTT sources); they are identical readings.
#[test]
fn kill9_of_the_agent_loses_no_mosquitto_message() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let srv = tmp.path().join("server");
    let token = add_device(&srv, "gw-mqkill")?;
    let server = Server::start(&srv, "127.0.0.1:0")?;
    let run = format!("e2e-agent-kill-{}", std::process::id());
    let cfg = agent_config(
        tmp.path(),
        "gw-mqkill",
        &server.mqtt.to_string(),
        &token,
        &format!(
            r#"
[[collectors]]
type = "mqtt"
name = "local"
client_id = "{run}"
addr = "127.0.0.1:1883"
topics = []
topic_mappings = [{{ pattern = "{run}/{{device_id}}" }}]
"#
        ),
    )?;
    let mut agent = Agent::start(&cfg)?;
    let publish = |lines: String| -> TestResult {
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-l", "-t"])
            .arg(format!("{run}/sensor"))
            .stdin(Stdio::piped())
            .spawn()?;
        use std::io::Write;
        child
            .stdin
            .take()
            .ok_or("stdin")?
            .write_all(lines.as_bytes())?;
        assert!(child.wait()?.success(), "mosquitto_pub failed");
        Ok(())
    };
    let msg = |i: i64| {
        format!(
            "{{\"ts\": {}, \"metrics\": {{\"n\": {i}}}}}\n",
            1_700_000_000_000 + i
        )
    };
    let subscribed = wait_until(Duration::from_secs(30), || {
        let _ = publish(msg(-1));
        agent.metric("edgepipe_agent_readings_received_total") >= 1.0
    });
    assert!(subscribed, "agent never received from Mosquitto");
    const N: i64 = 1500;
    for chunk in 0..15 {
        publish((chunk * 100..chunk * 100 + 100).map(msg).collect())?;
        if chunk == 5 {
            agent.kill9()?;
            agent = Agent::start(&cfg)?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut last = (-1.0, std::time::Instant::now());
    let settled = wait_until(Duration::from_secs(60), || {
        let r = agent.metric("edgepipe_agent_readings_received_total");
        if r != last.0 {
            last = (r, std::time::Instant::now());
            return false;
        }
        last.1.elapsed() > Duration::from_secs(2)
            && agent.metric("edgepipe_agent_queue_depth{stream=\"telemetry\"}") == 0.0
    });
    assert!(settled, "agent did not settle: {:?}", agent.metrics()?);
    agent.stop()?;
    server.stop()?;
    let stored = stored_at_server(&srv, "gw-mqkill")?;
    let mut counts = std::collections::BTreeMap::new();
    for s in &stored {
        for (m, ts, v) in &s.readings {
            if m == "sensor.n"
                && let Some(i) = int_value(v)
                && i >= 0
            {
                assert_eq!(*ts, 1_700_000_000_000 + i, "a stored copy differs");
                *counts.entry(i).or_insert(0u32) += 1;
            }
        }
    }
    let missing: Vec<i64> = (0..N).filter(|i| !counts.contains_key(i)).collect();
    let twice = counts.values().filter(|c| **c > 1).count();
    eprintln!(
        "mosquitto kill -9: {} of {N} stored, {twice} stored twice",
        counts.len()
    );
    assert!(
        missing.is_empty(),
        "{} lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    Ok(())
}
