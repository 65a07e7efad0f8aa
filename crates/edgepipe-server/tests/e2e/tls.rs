//! TLS listeners with real clients and real handshakes: certificates made by `openssl`,
//! mosquitto_pub over MQTT/TLS, curl over HTTPS, `openssl s_client` for protocol versions and
//! the certificate served after a reload, the CLI through the HTTPS API.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::*;

/// A test CA and a server certificate it signed for `localhost` and 127.0.0.1.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> TestResult<Self> {
        std::fs::create_dir_all(dir)?;
        let pki = Self {
            dir: dir.to_path_buf(),
        };
        // Distinct CAs have distinct names (a same-named CA is a forgery, not an unknown CA).
        let ca_subject = format!(
            "/CN=edgepipe test CA {}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("ca")
        );
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            &ca_subject,
        ])?;
        pki.server_cert("server")?;
        std::fs::create_dir_all(pki.path("db"))?;
        std::fs::write(pki.path("db/index.txt"), "")?;
        std::fs::write(
            pki.path("ca.cnf"),
            "[ca]\ndefault_ca = test\n[test]\ndir = .\ndatabase = db/index.txt\n\
             new_certs_dir = db\nrand_serial = yes\ndefault_md = sha256\npolicy = any\n\
             unique_subject = no\ncopy_extensions = none\nx509_extensions = device\n\
             [any]\ncommonName = supplied\n[device]\nbasicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature\nextendedKeyUsage = clientAuth\n",
        )?;
        Ok(pki)
    }

    /// `<name>.pem` / `<name>.key`: a device certificate for CN `cn` valid from `start` to
    /// `end` (`YYYYMMDDHHMMSSZ`), signed by this CA with `openssl ca`.
    fn device_cert(&self, name: &str, cn: &str, start: &str, end: &str) -> TestResult {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ])?;
        self.openssl(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            &csr,
            "-out",
            &pem,
            "-startdate",
            start,
            "-enddate",
            end,
            "-notext",
        ])?;
        Ok(())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn p(&self, name: &str) -> TestResult<String> {
        Ok(self.path(name).to_str().ok_or("path")?.to_owned())
    }

    fn openssl(&self, args: &[&str]) -> TestResult<std::process::Output> {
        let out = std::process::Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run openssl (apt-get install openssl): {e}"))?;
        if !out.status.success() {
            return Err(
                format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into(),
            );
        }
        Ok(out)
    }

    /// `<name>.pem` / `<name>.key`: a fresh key and a certificate from the CA.
    fn server_cert(&self, name: &str) -> TestResult {
        std::fs::write(
            self.path("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )?;
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ])?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ])?;
        Ok(())
    }

    /// The SHA-256 fingerprint of a PEM certificate file, or of the first certificate in
    /// `s_client` output.
    fn fingerprint(&self, pem: &str) -> TestResult<String> {
        let f = self.path("fp.pem");
        std::fs::write(&f, pem)?;
        let out = self.openssl(&["x509", "-in", "fp.pem", "-noout", "-fingerprint", "-sha256"])?;
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// `openssl s_client` against `addr` with extra flags; (succeeded, stdout + stderr).
    fn s_client(&self, addr: std::net::SocketAddr, flags: &[&str]) -> TestResult<(bool, String)> {
        let mut child = std::process::Command::new("openssl")
            .current_dir(&self.dir)
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-CAfile",
                "ca.pem",
            ])
            .args(["-verify_return_error", "-servername", "localhost"])
            .args(flags)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        // Closing stdin ends the session after the handshake.
        drop(child.stdin.take());
        let out = child.wait_with_output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }
}

fn start_tls(data: &Path, pki: &Pki, extra: &[&str]) -> TestResult<Server> {
    let mut args = vec!["--auto-register"];
    args.extend(extra);
    start_tls_with(data, pki, &args)
}

fn start_tls_with(data: &Path, pki: &Pki, extra: &[&str]) -> TestResult<Server> {
    let cert = pki.p("server.pem")?;
    let key = pki.p("server.key")?;
    let mut args = vec![
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--mqtts-addr",
        "127.0.0.1:0",
    ];
    args.extend(extra);
    Server::start(data, &args)
}

#[test]
fn mqtt_over_tls_and_https_take_readings_from_real_clients() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path())?;
    let data = dir.path().join("data");
    let srv = start_tls(&data, &pki, &[])?;
    assert!(
        srv.https,
        "the HTTP listener serves HTTPS when a certificate is configured"
    );
    let mqtts = srv.mqtts.ok_or("no mqtts:// address on the first line")?;
    let ca = pki.p("ca.pem")?;
    let base = now_ms() - 60_000;

    // mosquitto_pub over TLS, verifying the server against the CA, token authentication.
    for n in 0..5i64 {
        let out = run(
            "mosquitto_pub",
            &[
                "-h",
                "localhost",
                "-p",
                &mqtts.port().to_string(),
                "--cafile",
                &ca,
                "-q",
                "1",
                "-i",
                "tls-pub",
                "-u",
                "tls-dev",
                "-P",
                "tls-dev-token",
                "-t",
                "edgepipe/v1/tls-dev/telemetry",
                "-m",
                &format!("{{\"ts\": {}, \"metrics\": {{\"n\": {n}}}}}", base + n),
            ],
        )?;
        assert!(out.status.success(), "mosquitto_pub over TLS: {out:?}");
    }
    // curl over HTTPS, verifying against the CA.
    let body: String = (5..10i64)
        .map(|n| format!("{{\"ts\": {}, \"metrics\": {{\"n\": {n}}}}}\n", base + n))
        .collect();
    let url = format!("https://localhost:{}/api/v1/ingest", srv.http.port());
    let out = curl(&[
        "-sS",
        "-f",
        "--cacert",
        &ca,
        "-H",
        "Authorization: Bearer https-dev-token",
        "-H",
        "X-Device-Id: https-dev",
        "-H",
        "Content-Type: application/x-ndjson",
        "--data-binary",
        &body,
        &url,
    ])?;
    assert!(out.status.success(), "curl over HTTPS: {out:?}");

    // Refused: a client that does not trust the server's CA; plaintext HTTP and plaintext
    // MQTT against the TLS ports; TLS 1.1.
    let out = curl(&[
        "-sS",
        &format!("https://localhost:{}/api/v1/status", srv.http.port()),
    ])?;
    assert!(
        !out.status.success(),
        "curl without the CA trusted the server"
    );
    let out = curl(&[
        "-sS",
        "-m",
        "5",
        &format!("http://127.0.0.1:{}/api/v1/status", srv.http.port()),
    ])?;
    assert!(
        !out.status.success(),
        "plaintext HTTP was answered on the HTTPS port: {out:?}"
    );
    let out = run(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &mqtts.port().to_string(),
            "-q",
            "1",
            "-u",
            "tls-dev",
            "-P",
            "tls-dev-token",
            "-t",
            "edgepipe/v1/tls-dev/telemetry",
            "-m",
            "{}",
        ],
    )?;
    assert!(
        !out.status.success(),
        "plaintext MQTT was accepted on the TLS port"
    );
    for addr in [mqtts, srv.http] {
        // SECLEVEL=0 lets this OpenSSL offer TLS 1.1 at all: the refusal is the server's.
        let (ok, text) =
            pki.s_client(addr, &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-msg"])?;
        assert!(
            text.contains("TLS 1.1, Handshake"),
            "no TLS 1.1 ClientHello sent:\n{text}"
        );
        assert!(
            !ok && text.contains("no peer certificate"),
            "TLS 1.1 was accepted:\n{text}"
        );
    }
    for version in ["-tls1_2", "-tls1_3"] {
        let (ok, text) = pki.s_client(mqtts, &[version])?;
        assert!(
            ok && text.contains("Verify return code: 0"),
            "{version}:\n{text}"
        );
        let (ok, text) = pki.s_client(srv.http, &[version])?;
        assert!(ok, "{version} on HTTPS:\n{text}");
    }

    // The failed handshakes are counted per listener.
    let out = curl(&[
        "-sS",
        "--cacert",
        &ca,
        &format!("https://localhost:{}/metrics", srv.http.port()),
    ])?;
    let metrics = String::from_utf8(out.stdout)?;
    let counter = |listener: &str| -> u64 {
        let key = format!("edgepipe_tls_handshake_failures_total{{listener=\"{listener}\",");
        metrics
            .lines()
            .filter(|l| l.starts_with(&key))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(counter("https") >= 3, "{metrics}");
    assert!(counter("mqtt") >= 2, "{metrics}");

    // The CLI beside the server goes through its HTTPS API (the certificate pinned).
    let d = data.to_str().ok_or("path")?;
    // Acknowledged means in the WAL; the lake writer's fresh buffer takes them a moment later.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = query_json(
            &["--data-dir", d],
            "SELECT count(*) AS n FROM readings WHERE metric = 'n'",
        )?;
        if rows[0]["n"] == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = srv.stop()?;
    assert!(status.success(), "stop: exit {status}");
    let stored = lake_numbers(&data)?;
    let sent: Vec<i64> = (0..10).collect();
    assert_stored_once("lake after TLS ingest", &sent, &stored, Twice::Any);
    Ok(())
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path())?;
    let data = dir.path().join("data");
    let cfg = dir.path().join("tls.toml");
    std::fs::write(&cfg, "[tls]\nreload_interval = \"200ms\"\n")?;
    let srv = start_tls(&data, &pki, &["--config", cfg.to_str().ok_or("path")?])?;
    let mqtts = srv.mqtts.ok_or("no mqtts address")?;
    let first = pki.fingerprint(&std::fs::read_to_string(pki.path("server.pem"))?)?;
    let served = |addr| -> TestResult<String> {
        let (ok, text) = pki.s_client(addr, &[])?;
        assert!(ok, "{text}");
        let begin = text
            .find("-----BEGIN CERTIFICATE-----")
            .ok_or("no certificate")?;
        let end = text
            .find("-----END CERTIFICATE-----")
            .ok_or("no certificate end")?;
        pki.fingerprint(&format!("{}-----END CERTIFICATE-----\n", &text[begin..end]))
    };
    assert_eq!(served(mqtts)?, first);

    // A broken renewal (garbage in the certificate file) keeps the old certificate in use.
    let good = std::fs::read(pki.path("server.pem"))?;
    std::fs::write(
        pki.path("server.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )?;
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        served(srv.http)?,
        first,
        "a broken file replaced the certificate"
    );
    std::fs::write(pki.path("server.pem"), &good)?;

    // A real renewal: a new key and certificate written over the old files.
    pki.server_cert("renewed")?;
    std::fs::copy(pki.path("renewed.key"), pki.path("server.key"))?;
    std::fs::copy(pki.path("renewed.pem"), pki.path("server.pem"))?;
    let renewed = pki.fingerprint(&std::fs::read_to_string(pki.path("renewed.pem"))?)?;
    assert_ne!(renewed, first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(mqtts)? != renewed {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        served(srv.http)?,
        renewed,
        "HTTPS serves the renewed certificate too"
    );
    let ca = pki.p("ca.pem")?;
    let out = run(
        "mosquitto_pub",
        &[
            "-h",
            "localhost",
            "-p",
            &mqtts.port().to_string(),
            "--cafile",
            &ca,
            "-q",
            "1",
            "-u",
            "tls-dev",
            "-P",
            "tls-dev-token",
            "-t",
            "edgepipe/v1/tls-dev/telemetry",
            "-m",
            &format!("{{\"ts\": {}, \"metrics\": {{\"n\": 1}}}}", now_ms()),
        ],
    )?;
    assert!(out.status.success(), "publish after the renewal: {out:?}");
    let out = curl(&[
        "-sS",
        "--cacert",
        &ca,
        &format!("https://localhost:{}/metrics", srv.http.port()),
    ])?;
    let metrics = String::from_utf8(out.stdout)?;
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("edgepipe_tls_cert_reload_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no reload failure counter")?;
    assert!(
        failures >= 1,
        "the broken renewal was not counted:\n{metrics}"
    );
    srv.stop()?;
    Ok(())
}

#[test]
fn plaintext_beyond_loopback_and_bad_certificates_stop_the_start_with_a_clear_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path())?;
    let d = dir.path().join("data");
    let d = d.to_str().ok_or("path")?;
    // (started, what it said): stderr of a refused start, stdout of one that started (it is
    // stopped at once).
    let serve = |args: &[&str]| -> TestResult<(bool, String)> {
        let info = Path::new(d).join("server.json");
        let _ = std::fs::remove_file(&info);
        let mut all = vec!["serve", "--data-dir", d, "--http-addr", "127.0.0.1:0"];
        all.extend(["--mqtts-addr", "127.0.0.1:0"]);
        all.extend(args);
        let mut child = std::process::Command::new(bin())
            .args(&all)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait()?.is_none() && !info.exists() {
            assert!(
                Instant::now() < deadline,
                "serve {args:?} neither started nor failed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if info.exists() {
            run("kill", &["-INT", &child.id().to_string()])?;
            let out = child.wait_with_output()?;
            return Ok((true, String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let out = child.wait_with_output()?;
        assert!(!out.status.success(), "{out:?}");
        Ok((false, String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    let (started, err) = serve(&["--mqtt-addr", "0.0.0.0:0"])?;
    assert!(!started, "plaintext MQTT on 0.0.0.0 started");
    assert!(
        err.contains("mqtt_addr")
            && err.contains("--insecure-plaintext")
            && err.contains("tls.cert"),
        "{err}"
    );
    let (started, out) = serve(&["--mqtt-addr", "0.0.0.0:0", "--insecure-plaintext"])?;
    assert!(started, "--insecure-plaintext did not allow it: {out}");

    // A key that is not the certificate's, and a certificate file that is not one.
    pki.server_cert("other")?;
    let (cert, other_key) = (pki.p("server.pem")?, pki.p("other.key")?);
    let loopback = ["--mqtt-addr", "127.0.0.1:0"];
    let (started, err) = serve(
        &[
            &loopback[..],
            &["--tls-cert", &cert, "--tls-key", &other_key],
        ]
        .concat(),
    )?;
    assert!(!started);
    assert!(
        err.contains("tls.key") && err.contains("does not belong"),
        "{err}"
    );
    let key = pki.p("ca.key")?;
    let (started, err) =
        serve(&[&loopback[..], &["--tls-cert", &key, "--tls-key", &key]].concat())?;
    assert!(!started);
    assert!(
        err.contains("tls.cert") && err.contains("no certificate in it"),
        "{err}"
    );
    Ok(())
}

/// A counter of `/metrics` (0 when absent), fetched over HTTPS.
fn metric(srv: &Server, pki: &Pki, key: &str) -> TestResult<u64> {
    let out = curl(&[
        "-sS",
        "--cacert",
        &pki.p("ca.pem")?,
        &format!("https://localhost:{}/metrics", srv.http.port()),
    ])?;
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// mosquitto_pub over TLS with a device certificate (`name`.pem/.key of `pki`, trusting
/// `ca`'s CA), QoS 1, one reading `n` to `device`'s topic; extra flags (`-u`, ...) appended.
fn pub_with_cert(
    srv: &Server,
    ca: &Pki,
    pki: &Pki,
    name: &str,
    device: &str,
    n: i64,
    extra: &[&str],
) -> TestResult<std::process::Output> {
    let port = srv.mqtts.ok_or("no mqtts address")?.port().to_string();
    let (cafile, cert, key) = (
        ca.p("ca.pem")?,
        pki.p(&format!("{name}.pem"))?,
        pki.p(&format!("{name}.key"))?,
    );
    let msg = format!(
        "{{\"ts\": {}, \"metrics\": {{\"n\": {n}}}}}",
        now_ms() - 1000 + n
    );
    let topic = format!("edgepipe/v1/{device}/telemetry");
    let mut args = vec![
        "-h",
        "localhost",
        "-p",
        &port,
        "--cafile",
        &cafile,
        "--cert",
        &cert,
        "--key",
        &key,
        "-q",
        "1",
        "-t",
        &topic,
        "-m",
        &msg,
    ];
    args.extend(extra);
    run("mosquitto_pub", &args)
}

#[test]
fn device_certificates_authenticate_and_bad_ones_are_refused_with_their_reason() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(&dir.path().join("pki"))?;
    let other = Pki::new(&dir.path().join("other"))?;
    let valid = ("20240101000000Z", "20990101000000Z");
    for d in ["dev-1", "dev-2"] {
        pki.device_cert(d, d, valid.0, valid.1)?;
    }
    pki.device_cert("expired", "dev-x", "20200101000000Z", "20200201000000Z")?;
    pki.device_cert("future", "dev-y", "20900101000000Z", "20990101000000Z")?;
    other.device_cert("stranger", "dev-1", valid.0, valid.1)?;
    let data = dir.path().join("data");
    let cfg = dir.path().join("mtls.toml");
    std::fs::write(&cfg, format!("[tls]\nclient_ca = {:?}\n", pki.p("ca.pem")?))?;
    // No --auto-register: tokens must be registered; certificates register their device.
    let srv = start_tls_with(&data, &pki, &["--config", cfg.to_str().ok_or("path")?])?;

    // mosquitto_pub with dev-1's certificate and no username or password.
    for n in 0..3 {
        let out = pub_with_cert(&srv, &pki, &pki, "dev-1", "dev-1", n, &[])?;
        assert!(
            out.status.success(),
            "publish with a device certificate: {out:?}"
        );
    }
    // curl over HTTPS with dev-2's certificate and no token.
    let body: String = (3..6i64)
        .map(|n| {
            format!(
                "{{\"ts\": {}, \"metrics\": {{\"n\": {n}}}}}\n",
                now_ms() - 1000 + n
            )
        })
        .collect();
    let out = curl(&[
        "-sS",
        "-f",
        "--cacert",
        &pki.p("ca.pem")?,
        "--cert",
        &pki.p("dev-2.pem")?,
        "--key",
        &pki.p("dev-2.key")?,
        "-H",
        "Content-Type: application/x-ndjson",
        "--data-binary",
        &body,
        &format!("https://localhost:{}/api/v1/ingest", srv.http.port()),
    ])?;
    assert!(
        out.status.success(),
        "HTTPS ingest with a device certificate: {out:?}"
    );

    // Refused in the handshake, each counted under its reason.
    let refused = [
        ("stranger", &other, "unknown_ca"),
        ("expired", &pki, "expired"),
        ("future", &pki, "not_yet_valid"),
    ];
    for (name, issuer, reason) in refused {
        let out = pub_with_cert(&srv, &pki, issuer, name, "dev-1", 99, &[])?;
        assert!(!out.status.success(), "{name} was accepted: {out:?}");
        let key = format!(
            "edgepipe_tls_handshake_failures_total{{listener=\"mqtt\",reason=\"{reason}\"}}"
        );
        assert_eq!(metric(&srv, &pki, &key)?, 1, "{key}");
    }
    let out = curl(&[
        "-sS",
        "--cacert",
        &pki.p("ca.pem")?,
        "--cert",
        &pki.p("expired.pem")?,
        "--key",
        &pki.p("expired.key")?,
        "-H",
        "Content-Type: application/x-ndjson",
        "--data-binary",
        &body,
        &format!("https://localhost:{}/api/v1/ingest", srv.http.port()),
    ])?;
    assert!(
        !out.status.success(),
        "HTTPS with an expired certificate: {out:?}"
    );
    assert_eq!(
        metric(
            &srv,
            &pki,
            "edgepipe_tls_handshake_failures_total{listener=\"https\",reason=\"expired\"}"
        )?,
        1
    );
    // dev-1's certificate claiming another device, and publishing to another device's topic.
    let out = pub_with_cert(&srv, &pki, &pki, "dev-1", "dev-1", 99, &["-u", "dev-2"])?;
    assert!(
        !out.status.success(),
        "dev-1's certificate logged in as dev-2: {out:?}"
    );
    assert_eq!(
        metric(
            &srv,
            &pki,
            "edgepipe_device_cert_refusals_total{reason=\"other_device\"}"
        )?,
        1
    );
    let _ = pub_with_cert(&srv, &pki, &pki, "dev-1", "dev-2", 99, &[])?;
    // A token alone still works over TLS (client_auth = optional) for a registered device.
    let token = add_device(&data, "dev-3")?;
    let out = run(
        "mosquitto_pub",
        &[
            "-h",
            "localhost",
            "-p",
            &srv.mqtts.ok_or("mqtts")?.port().to_string(),
            "--cafile",
            &pki.p("ca.pem")?,
            "-q",
            "1",
            "-u",
            "dev-3",
            "-P",
            &token,
            "-t",
            "edgepipe/v1/dev-3/telemetry",
            "-m",
            &format!("{{\"ts\": {}, \"metrics\": {{\"n\": 6}}}}", now_ms()),
        ],
    )?;
    assert!(out.status.success(), "token over TLS: {out:?}");

    let status = srv.stop()?;
    assert!(status.success());
    let stored = lake_numbers(&data)?;
    let sent: Vec<i64> = (0..7).collect();
    assert_stored_once("lake after mTLS ingest", &sent, &stored, Twice::Any);
    assert!(
        !stored.contains_key(&99),
        "a refused publish was stored: {stored:?}"
    );
    let devices: Vec<serde_json::Value> = serde_json::from_slice(
        &edgepipe_ok(&[
            "devices",
            "list",
            "--data-dir",
            data.to_str().ok_or("path")?,
            "--format",
            "json",
        ])?
        .stdout,
    )?;
    let by_cert: Vec<&str> = devices
        .iter()
        .filter(|d| d["by_certificate"] == true)
        .filter_map(|d| d["device"].as_str())
        .collect();
    assert_eq!(by_cert, ["dev-1", "dev-2"], "{devices:?}");
    Ok(())
}

#[test]
fn a_revoked_certificate_loses_its_open_connection_within_a_second_and_cannot_return() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path())?;
    pki.device_cert("dev-4", "dev-4", "20240101000000Z", "20990101000000Z")?;
    let data = dir.path().join("data");
    let cfg = dir.path().join("mtls.toml");
    std::fs::write(
        &cfg,
        format!(
            "[tls]\nclient_ca = {:?}\nclient_auth = \"required\"\n",
            pki.p("ca.pem")?
        ),
    )?;
    let srv = start_tls_with(&data, &pki, &["--config", cfg.to_str().ok_or("path")?])?;
    let after = closed_after_withdrawing(
        &[
            "localhost",
            &srv.mqtts.ok_or("mqtts")?.port().to_string(),
            &pki.p("ca.pem")?,
            &pki.p("dev-4.pem")?,
            &pki.p("dev-4.key")?,
            "dev-4",
        ],
        None,
        &dir.path().join("revoked-at"),
        &[
            "devices",
            "revoke-cert",
            "dev-4",
            "--data-dir",
            data.to_str().ok_or("path")?,
        ],
    )?;
    eprintln!("revoked connection closed {after:.3} s after revoke-cert started");
    assert!(after < 1.0, "closed {after} s after the revocation");
    assert!(
        metric(
            &srv,
            &pki,
            "edgepipe_connections_closed_by_revocation_total"
        )? >= 1
    );
    // The same certificate cannot come back; a token alone is refused in the handshake.
    let out = pub_with_cert(&srv, &pki, &pki, "dev-4", "dev-4", 1, &[])?;
    assert!(
        !out.status.success(),
        "a revoked certificate reconnected: {out:?}"
    );
    assert_eq!(
        metric(
            &srv,
            &pki,
            "edgepipe_device_cert_refusals_total{reason=\"revoked\"}"
        )?,
        1
    );
    let token = add_device(&data, "dev-5")?;
    let out = run(
        "mosquitto_pub",
        &[
            "-h",
            "localhost",
            "-p",
            &srv.mqtts.ok_or("mqtts")?.port().to_string(),
            "--cafile",
            &pki.p("ca.pem")?,
            "-q",
            "1",
            "-u",
            "dev-5",
            "-P",
            &token,
            "-t",
            "edgepipe/v1/dev-5/telemetry",
            "-m",
            "{\"metrics\": {\"n\": 1}}",
        ],
    )?;
    assert!(
        !out.status.success(),
        "a token without a certificate passed client_auth = required"
    );
    assert_eq!(
        metric(
            &srv,
            &pki,
            "edgepipe_device_cert_refusals_total{reason=\"no_client_certificate\"}"
        )?,
        1
    );
    // A certificate issued after the revocation is accepted.
    std::thread::sleep(Duration::from_millis(1100));
    let start = {
        let out = run("date", &["-u", "+%Y%m%d%H%M%SZ"])?;
        String::from_utf8(out.stdout)?.trim().to_owned()
    };
    pki.device_cert("dev-4b", "dev-4", &start, "20990101000000Z")?;
    let out = pub_with_cert(&srv, &pki, &pki, "dev-4b", "dev-4", 2, &[])?;
    assert!(
        out.status.success(),
        "a certificate issued after the revocation: {out:?}"
    );
    srv.stop()?;
    Ok(())
}

#[test]
fn the_built_in_ca_issues_device_certificates_and_rotates_with_an_overlap() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let d = data.to_str().ok_or("path")?;
    edgepipe_ok(&["ca", "init", "--data-dir", d])?;
    let ca_dir = data.join("ca");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ca_dir.join("ca.key"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key is readable by others");
    }
    let certs = dir.path().join("certs");
    let pump = certs.join("pump-1");
    edgepipe_ok(&[
        "devices",
        "add",
        "pump-1",
        "--cert",
        "--out",
        pump.to_str().ok_or("path")?,
        "--data-dir",
        d,
    ])?;
    // A CSR made by openssl: the device keeps its key; the certificate names valve-2 whatever
    // the CSR asked for.
    let pki = Pki { dir: certs.clone() };
    pki.openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "valve-2.key",
        "-out",
        "valve-2.csr",
        "-subj",
        "/CN=not-the-name",
    ])?;
    let valve = certs.join("valve-2");
    edgepipe_ok(&[
        "devices",
        "add",
        "valve-2",
        "--csr",
        &pki.p("valve-2.csr")?,
        "--out",
        valve.to_str().ok_or("path")?,
        "--data-dir",
        d,
    ])?;
    assert!(
        !valve.join("valve-2.key").exists(),
        "a key was made for a CSR"
    );
    std::fs::copy(pki.path("valve-2.key"), valve.join("valve-2.key"))?;
    let verify = pki.openssl(&[
        "verify",
        "-CAfile",
        pump.join("ca.pem").to_str().ok_or("path")?,
        pump.join("pump-1.pem").to_str().ok_or("path")?,
    ])?;
    assert!(String::from_utf8(verify.stdout)?.contains(": OK"));
    let subject = pki.openssl(&[
        "x509",
        "-in",
        valve.join("valve-2.pem").to_str().ok_or("path")?,
        "-noout",
        "-subject",
    ])?;
    assert!(String::from_utf8(subject.stdout)?.contains("CN = valve-2"));

    // The server with the CA's server certificate trusts the CA for devices by itself.
    let cfg = dir.path().join("tls.toml");
    std::fs::write(&cfg, "[tls]\nreload_interval = \"200ms\"\n")?;
    let (sc, sk) = (ca_dir.join("server.pem"), ca_dir.join("server.key"));
    let srv = Server::start(
        &data,
        &[
            "--config",
            cfg.to_str().ok_or("path")?,
            "--tls-cert",
            sc.to_str().ok_or("path")?,
            "--tls-key",
            sk.to_str().ok_or("path")?,
            "--mqtts-addr",
            "127.0.0.1:0",
        ],
    )?;
    let port = srv.mqtts.ok_or("mqtts")?.port().to_string();
    let bundle = dir.path().join("bundle.pem");
    let publish = |cert_dir: &Path, device: &str, n: i64| -> TestResult<bool> {
        let out = run(
            "mosquitto_pub",
            &[
                "-h",
                "localhost",
                "-p",
                &port,
                "--cafile",
                bundle.to_str().ok_or("path")?,
                "--cert",
                cert_dir
                    .join(format!("{device}.pem"))
                    .to_str()
                    .ok_or("path")?,
                "--key",
                cert_dir
                    .join(format!("{device}.key"))
                    .to_str()
                    .ok_or("path")?,
                "-q",
                "1",
                "-t",
                &format!("edgepipe/v1/{device}/telemetry"),
                "-m",
                &format!(
                    "{{\"ts\": {}, \"metrics\": {{\"n\": {n}}}}}",
                    now_ms() - 1000 + n
                ),
            ],
        )?;
        Ok(out.status.success())
    };
    let export = |into: &Path| -> TestResult<usize> {
        let out = edgepipe_ok(&["ca", "export", "--data-dir", d])?;
        std::fs::write(into, &out.stdout)?;
        Ok(String::from_utf8(out.stdout)?
            .matches("BEGIN CERTIFICATE")
            .count())
    };
    assert_eq!(export(&bundle)?, 1);
    assert!(
        publish(&pump, "pump-1", 0)?,
        "pump-1 with its issued certificate"
    );
    assert!(
        publish(&valve, "valve-2", 1)?,
        "valve-2 with its CSR's certificate"
    );

    // Rotation: both CAs trusted during the overlap; the server certificate is reissued.
    edgepipe_ok(&["ca", "rotate", "--overlap", "4s", "--data-dir", d])?;
    assert_eq!(
        export(&bundle)?,
        2,
        "both CAs are in the bundle during the overlap"
    );
    let renewed = certs.join("pump-1-new");
    edgepipe_ok(&[
        "devices",
        "issue-cert",
        "pump-1",
        "--out",
        renewed.to_str().ok_or("path")?,
        "--data-dir",
        d,
    ])?;
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        publish(&pump, "pump-1", 2)?,
        "an old-CA certificate during the overlap"
    );
    assert!(publish(&renewed, "pump-1", 3)?, "a new-CA certificate");
    // After the overlap the old CA's certificates are refused as from an unknown CA.
    std::thread::sleep(Duration::from_millis(4000));
    assert_eq!(export(&bundle)?, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while publish(&pump, "pump-1", 99)? {
        assert!(
            Instant::now() < deadline,
            "the old CA is still trusted after the overlap"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(publish(&renewed, "pump-1", 4)?);
    // The metrics over HTTPS, trusting the exported bundle (`metric` reads `<dir>/ca.pem`).
    std::fs::copy(&bundle, dir.path().join("ca.pem"))?;
    let here = Pki {
        dir: dir.path().to_path_buf(),
    };
    let key = "edgepipe_tls_handshake_failures_total{listener=\"mqtt\",reason=\"unknown_ca\"}";
    assert!(metric(&srv, &here, key)? >= 1, "{key}");
    srv.stop()?;
    let stored = lake_numbers(&data)?;
    assert_stored_once(
        "lake after built-in CA ingest",
        &[0, 1, 2, 3, 4],
        &stored,
        Twice::Any,
    );
    Ok(())
}

#[test]
fn paho_publishes_over_websocket_and_secure_websocket() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path())?;
    let data = dir.path().join("data");
    let srv = start_tls(
        &data,
        &pki,
        &["--ws-addr", "127.0.0.1:0", "--wss-addr", "127.0.0.1:0"],
    )?;
    let (ws, wss) = (
        srv.ws.ok_or("no ws:// address")?,
        srv.wss.ok_or("no wss:// address")?,
    );
    let out = edgepipe_testkit::run_peer(
        "paho_ws.py",
        python_peer("paho_ws.py").args([
            "127.0.0.1",
            &ws.port().to_string(),
            "ws-dev",
            "ws-token",
            "20",
        ]),
    )?;
    assert_eq!(String::from_utf8(out.stdout)?.trim(), "acked 20");
    let out = edgepipe_testkit::run_peer(
        "paho_ws.py",
        python_peer("paho_ws.py").args([
            "localhost",
            &wss.port().to_string(),
            "wss-dev",
            "wss-token",
            "20",
            &pki.p("ca.pem")?,
        ]),
    )?;
    assert_eq!(String::from_utf8(out.stdout)?.trim(), "acked 20");
    // Another path is not an MQTT endpoint: 404 naming /mqtt.
    let out = curl(&[
        "-s",
        "-i",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        &format!("http://127.0.0.1:{}/elsewhere", ws.port()),
    ])?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("HTTP/1.1 404") && said.contains("/mqtt"),
        "{said}"
    );
    let status = srv.stop()?;
    assert!(status.success());
    let rows = query_json(
        &["--data-dir", data.to_str().ok_or("path")?],
        "SELECT device_id, count(*) AS n FROM readings WHERE metric = 'n' GROUP BY device_id ORDER BY device_id",
    )?;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[0]["device_id"].as_str(), rows[0]["n"].as_i64()),
        (Some("ws-dev"), Some(20))
    );
    assert_eq!(
        (rows[1]["device_id"].as_str(), rows[1]["n"].as_i64()),
        (Some("wss-dev"), Some(20))
    );
    Ok(())
}
