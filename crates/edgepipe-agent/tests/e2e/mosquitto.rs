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
