//! The dashboard in a real browser: Debian's Chromium driven by playwright-core
//! (`tests/browser/dashboard.mjs`) against a running server with live data, an anomaly and
//! open cases. Screenshots are kept in `target/browser-screenshots/`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

/// `tests/browser`, with its Node packages installed.
fn browser_dir() -> TestResult<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        return Err(
            "tests/browser/node_modules is missing: run `npm ci` in tests/browser (scripts/test does)"
                .into(),
        );
    }
    Ok(dir)
}

#[test]
fn dashboard_in_chromium() -> TestResult {
    let browser_dir = browser_dir()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let srv = Server::start_detecting(&data)?;
    let http = srv.http;
    // History with one spike for pump-1 (the detector warms up on it and fires once).
    let base = now_ms() - 2_400_000;
    for b in 0..8usize {
        ingest_as(
            http,
            "pump-1",
            &spike_readings(base, b * 250, (b + 1) * 250, 1_500),
        )?;
    }
    // Two gap reports open cases at once (one is acknowledged in the UI, one stays for the
    // viewer's refused resolve).
    for d in ["gw-1", "gw-2"] {
        ingest_as(
            http,
            d,
            &format!(
                "{{\"ts\": {}, \"metrics\": {{\"agent.gap.modbus.count\": 5}}}}\n",
                now_ms()
            ),
        )?;
    }
    // Live data while the browser looks.
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let live = std::thread::spawn(move || {
        let mut i = 0;
        while !s2.load(Ordering::Relaxed) {
            for d in ["line-1", "line-2", "line-3"] {
                let body = format!(
                    "{{\"ts\": {}, \"metrics\": {{\"temp\": {}, \"power\": {}}}}}\n",
                    now_ms(),
                    21.0 + (i % 7) as f64 * 0.1,
                    3.0 + (i % 5) as f64 * 0.05
                );
                let _ = ingest_as(http, d, &body);
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    // Wait until the spike's anomaly and the gap cases exist.
    let t0 = Instant::now();
    loop {
        let st = srv.status()?;
        if st["cases"]["cases_opened"].as_i64().unwrap_or(0) >= 3 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            stop.store(true, Ordering::Relaxed);
            return Err(format!("cases did not open: {}", st["cases"]).into());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = Command::new(bin())
        .args(["users", "--data-dir"])
        .arg(&data)
        .args(["add", "vera", "--role", "viewer"])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let viewer = String::from_utf8(out.stdout)?
        .lines()
        .last()
        .ok_or("token")?
        .trim()
        .to_owned();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/browser-screenshots");
    let out = Command::new("node")
        .arg("dashboard.mjs")
        .current_dir(&browser_dir)
        .env("EDGEPIPE_URL", format!("http://{http}"))
        .env("ADMIN_TOKEN", srv.token()?)
        .env("VIEWER_TOKEN", &viewer)
        .env("ANOMALY_DEVICE", "pump-1")
        .env("SCREENSHOT_DIR", &shots)
        .output()?;
    stop.store(true, Ordering::Relaxed);
    let _ = live.join();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser checks failed:\n{text}");
    srv.stop()?;
    Ok(())
}

/// The dashboard served over HTTPS (a certificate from the built-in CA) loads in Chromium,
/// which trusts the server's key only (SPKI pin), and every request of the page is https.
#[test]
fn dashboard_over_https_in_chromium() -> TestResult {
    let browser_dir = browser_dir()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let d = data.to_str().ok_or("path")?;
    edgepipe_ok(&["ca", "init", "--data-dir", d])?;
    let ca = data.join("ca");
    let (cert, key) = (ca.join("server.pem"), ca.join("server.key"));
    let srv = Server::start(
        &data,
        &[
            "--auto-register",
            "--tls-cert",
            cert.to_str().ok_or("path")?,
            "--tls-key",
            key.to_str().ok_or("path")?,
            "--mqtts-addr",
            "127.0.0.1:0",
        ],
    )?;
    assert!(srv.https);
    let url = format!("https://localhost:{}", srv.http.port());
    let trust = ca.join("trust.pem");
    for dev in ["secure-1", "secure-2"] {
        let out = curl(&[
            "-sS",
            "-f",
            "--cacert",
            trust.to_str().ok_or("path")?,
            "-H",
            "Authorization: Bearer e2e-auto-registered",
            "-H",
            &format!("X-Device-Id: {dev}"),
            "-H",
            "Content-Type: application/x-ndjson",
            "--data-binary",
            &format!(
                "{{\"ts\": {}, \"metrics\": {{\"temp\": 20.5}}}}\n",
                now_ms()
            ),
            &format!("{url}/api/v1/ingest"),
        ])?;
        assert!(out.status.success(), "{out:?}");
    }
    // The server key's SPKI hash, as Chromium's --ignore-certificate-errors-spki-list wants it.
    let spki = run(
        "sh",
        &[
            "-c",
            &format!(
                "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der \
                 | openssl dgst -sha256 -binary | base64",
                cert.display()
            ),
        ],
    )?;
    let spki = String::from_utf8(spki.stdout)?.trim().to_owned();
    assert_eq!(spki.len(), 44, "{spki}");
    let out = Command::new("node")
        .arg("dashboard-https.mjs")
        .current_dir(&browser_dir)
        .env("EDGEPIPE_URL", &url)
        .env("ADMIN_TOKEN", srv.token()?)
        .env("SPKI_SHA256", &spki)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser check failed:\n{text}");
    assert!(
        text.contains("secure-1") && text.contains("secure-2"),
        "{text}"
    );
    srv.stop()?;
    Ok(())
}
