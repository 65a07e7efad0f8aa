//! The Modbus collector against a real pymodbus TCP server.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

struct Py(Child);
impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn modbus_registers_from_pymodbus_reach_the_server_decoded() -> TestResult {
    let port = free_port()?;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/modbus_server.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let py = Py(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    assert_eq!(
        line.trim(),
        "ready",
        "pymodbus server did not start (pip install pymodbus; .ci/run does)"
    );

    let tmp = tempfile::tempdir()?;
    let srv = tmp.path().join("server");
    let token = add_device(&srv, "gw-modbus")?;
    let server = Server::start(&srv, "127.0.0.1:0")?;
    let cfg = agent_config(
        tmp.path(),
        "gw-modbus",
        &server.mqtt.to_string(),
        &token,
        &format!(
            r#"
[[collectors]]
type = "modbus"
name = "plc"
addr = "127.0.0.1:{port}"
interval = "100ms"
registers = [
  {{ metric = "plc.temp", address = 0, scale = 0.1 }},
  {{ metric = "plc.neg", address = 1, data_type = "i16" }},
  {{ metric = "plc.flow", address = 2, data_type = "f32" }},
  {{ metric = "plc.input", kind = "input", address = 0 }},
  {{ metric = "plc.running", kind = "coil", address = 0 }},
]
"#
        ),
    )?;
    let agent = Agent::start(&cfg)?;
    let ok = wait_until(Duration::from_secs(60), || {
        agent.metric("edgepipe_agent_readings_sent_total{stream=\"telemetry\"}") >= 25.0
    });
    assert!(ok, "no modbus readings sent: {:?}", agent.metrics()?);
    agent.stop()?;
    server.stop()?;
    drop(py);
    let stored = stored_at_server(&srv, "gw-modbus")?;
    let last = |m: &str| {
        stored
            .iter()
            .flat_map(|s| s.readings.iter())
            .filter(|r| r.0 == m)
            .map(|r| r.2.clone())
            .next_back()
    };
    assert_eq!(last("plc.temp"), Some(serde_json::json!({"F64": 21.5})));
    assert_eq!(last("plc.neg"), Some(serde_json::json!({"I64": -1})));
    assert_eq!(last("plc.flow"), Some(serde_json::json!({"F64": 12.25})));
    assert_eq!(last("plc.input"), Some(serde_json::json!({"I64": 7})));
    assert_eq!(last("plc.running"), Some(serde_json::json!({"Bool": true})));
    Ok(())
}
