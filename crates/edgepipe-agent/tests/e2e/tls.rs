//! The uplink over MQTT/TLS (rustls): to a Mosquitto instance with a TLS listener and a
//! certificate from a throwaway CA made with `openssl` (batches go out over TLS, are
//! acknowledged, and arrive as batch envelopes), and to the edgepipe server's MQTT/TLS listener
//! with the agent's own certificate from the server's built-in CA and no token.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edgepipe_testkit::ServerProcess;

use crate::support::*;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) -> TestResult {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

#[test]
fn uplink_over_tls_is_acknowledged_by_a_tls_broker() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=edgepipe-test-ca",
        ],
    )?;
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    )?;
    std::fs::write(d.join("ext.cnf"), "subjectAltName=DNS:localhost\n")?;
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    )?;
    let port = free_port()?;
    std::fs::write(
        d.join("mosquitto.conf"),
        format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n",
            d.display()
        ),
    )?;
    let _broker = Kill(
        Command::new("mosquitto")
            .arg("-c")
            .arg(d.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let up = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "TLS mosquitto did not start");
    let mut sub = Kill(
        Command::new("mosquitto_sub")
            .args(["-h", "localhost", "-p", &port.to_string(), "--cafile"])
            .arg(d.join("ca.pem"))
            .args(["-t", "edgepipe/v1/gw-tls/telemetry", "-C", "1", "-N"])
            .stdout(Stdio::piped())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let cfg = agent_config(
        d,
        "gw-tls",
        &format!("localhost:{port}"),
        "unused",
        r#"
[[collectors]]
type = "generator"
name = "gen"
rate = 1000
limit = 3000
"#,
    )?;
    let text = std::fs::read_to_string(&cfg)?
        .replace("url = \"mqtt://", "url = \"mqtts://")
        .replace(
            "token = \"unused\"\n",
            &format!(
                "token = \"unused\"\nca_file = \"{}\"\n",
                d.join("ca.pem").display()
            ),
        );
    std::fs::write(&cfg, text)?;
    let agent = Agent::start(&cfg)?;
    let sent = wait_until(Duration::from_secs(60), || {
        agent.metric("edgepipe_agent_readings_sent_total{stream=\"telemetry\"}") >= 3000.0
    });
    assert!(
        sent,
        "batches were not acknowledged over TLS: {:?}",
        agent.metrics()?
    );
    // mosquitto_sub exits after one message; read it on a thread so a miss fails, not hangs.
    let mut stdout = sub.0.stdout.take().ok_or("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let _ = tx.send(out);
    });
    let out = rx.recv_timeout(Duration::from_secs(30))?;
    assert!(
        out.starts_with(b"EPB\x01"),
        "subscriber got {:?}",
        &out[..out.len().min(20)]
    );
    agent.stop()?;
    Ok(())
}

#[test]
fn the_uplink_authenticates_with_its_certificate_from_the_built_in_ca() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    let srv_data = d.join("server");
    let bin = server_bin()?;
    let run = |args: &[&str]| -> TestResult {
        let out = Command::new(&bin)
            .args(args)
            .arg("--data-dir")
            .arg(&srv_data)
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "edgepipe {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(())
    };
    run(&["ca", "init"])?;
    let certs = d.join("gw-cert");
    run(&[
        "devices",
        "add",
        "gw-cert",
        "--cert",
        "--out",
        certs.to_str().ok_or("path")?,
    ])?;
    // Tokens refused: only the certificate can get the agent in.
    let server_cfg = d.join("server.toml");
    std::fs::write(&server_cfg, "[tls]\nclient_auth = \"required\"\n")?;
    let ca = srv_data.join("ca");
    let srv = ServerProcess::start(
        &bin,
        &srv_data,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[
            "--config",
            server_cfg.to_str().ok_or("path")?,
            "--tls-cert",
            ca.join("server.pem").to_str().ok_or("path")?,
            "--tls-key",
            ca.join("server.key").to_str().ok_or("path")?,
            "--mqtts-addr",
            "127.0.0.1:0",
        ],
        &[("EDGEPIPE_LOG", "warn")],
    )?;
    let port = srv.mqtts.ok_or("no mqtts address")?.port();
    let cfg = agent_config(
        d,
        "gw-cert",
        &format!("localhost:{port}"),
        "",
        r#"
[[collectors]]
type = "generator"
name = "gen"
rate = 1000
limit = 3000
"#,
    )?;
    let text = std::fs::read_to_string(&cfg)?
        .replace("url = \"mqtt://", "url = \"mqtts://")
        .replace(
            "token = \"\"\n",
            &format!(
                "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                certs.join("ca.pem").display(),
                certs.join("gw-cert.pem").display(),
                certs.join("gw-cert.key").display()
            ),
        );
    std::fs::write(&cfg, text)?;
    let agent = Agent::start(&cfg)?;
    let sent = wait_until(Duration::from_secs(60), || {
        agent.metric("edgepipe_agent_readings_sent_total{stream=\"telemetry\"}") >= 3000.0
    });
    assert!(sent, "not acknowledged over mTLS: {:?}", agent.metrics()?);
    agent.stop()?;
    Server::from(srv).stop()?;
    let stored = stored_at_server(&srv_data, "gw-cert")?;
    let counts = generator_counts(&stored, "gen");
    assert_exactly_once(&counts, 3000);
    Ok(())
}
