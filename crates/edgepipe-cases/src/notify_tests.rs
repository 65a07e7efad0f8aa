//! The notifier against real receivers: a webhook endpoint on a loopback socket
//! ([`crate::loopback`], raw HTTP/1.1) and aiosmtpd, a real SMTP server from PyPI.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::CasesConfig;
use crate::model::*;
use crate::notify::{Notifier, sign};
use crate::store::{CaseStore, SqlCaseStore};

#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook receiver that answers 503 to the first `fail_first` requests, then 200.
async fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let g = got.clone();
    let url = crate::loopback::webhook_receiver(fail_first, move |(headers, body)| {
        g.lock().expect("lock").push(Received { headers, body });
    })
    .await
    .expect("bind");
    (url, got)
}

fn ev(id: &str, device: &str) -> CaseEvent {
    CaseEvent {
        id: id.into(),
        category: Category::Anomaly,
        device_id: device.into(),
        metric: Some("temp".into()),
        metrics: vec![],
        ts: 1_700_000_000_000,
        kind: "anomaly".into(),
        score: 0.995,
        model_version: "m1".into(),
        explanation: serde_json::json!({}),
    }
}

async fn store_with(cfg: serde_json::Value) -> (tempfile::TempDir, Arc<SqlCaseStore>, Notifier) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg: CasesConfig = serde_json::from_value(cfg).expect("config");
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    let store = Arc::new(
        SqlCaseStore::open(
            &format!("sqlite://{}/c.db", dir.path().display()),
            cfg.clone(),
        )
        .await
        .expect("open"),
    );
    let n = Notifier::new(store.clone(), Arc::new(cfg)).expect("notifier");
    (dir, store, n)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::test]
async fn webhook_is_signed_keyed_and_retried_until_delivered() {
    let (url, got) = receiver(2).await;
    let (_d, store, n) = store_with(serde_json::json!({
        "channels": [{"name": "hook", "type": "webhook", "url": url, "secret": "s3cret"}]
    }))
    .await;
    let t = now();
    store
        .ingest(&[ev("w1", "dev-1"), ev("w2", "dev-2")], t)
        .await
        .expect("ingest");
    // Two failures (503) first: both notifications fail once, then go through.
    let r1 = n.round(t).await.expect("round");
    assert_eq!((r1.delivered, r1.failed), (0, 2));
    assert_eq!(store.outbox_stats(t).await.expect("stats").failing, 2);
    assert!(
        store.outbox_due(t + 500, 10).await.expect("due").is_empty(),
        "backoff"
    );
    let r2 = n.round(t + 2_000).await.expect("round");
    assert_eq!((r2.delivered, r2.failed), (2, 0));
    let got = got.lock().expect("lock").clone();
    assert_eq!(got.len(), 2);
    let mut keys = Vec::new();
    for g in &got {
        let sig = g.header("x-edgepipe-signature").expect("signed");
        assert_eq!(
            sig,
            sign("s3cret", &g.body),
            "signature over the exact body"
        );
        let body: serde_json::Value = serde_json::from_slice(&g.body).expect("json body");
        assert_eq!(body["event"], "opened");
        let key = g
            .header("x-edgepipe-idempotency-key")
            .expect("key")
            .to_owned();
        assert_eq!(body["idempotency_key"], key.as_str());
        keys.push(key);
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 2, "distinct keys");
    let st = store.outbox_stats(t).await.expect("stats");
    assert_eq!((st.pending, st.delivered), (0, 2));
    // Nothing left: a further round sends nothing.
    assert_eq!(n.round(t + 600_000).await.expect("round").delivered, 0);
}

#[tokio::test]
async fn a_storm_becomes_one_digest() {
    let (url, got) = receiver(0).await;
    let (_d, store, n) = store_with(serde_json::json!({
        "digest_threshold": 5,
        "channels": [{"name": "hook", "type": "webhook", "url": url, "secret": "k",
                      "template": "{\"text\": \"{{event}} {{count}}\"}"}]
    }))
    .await;
    let t = now();
    let evs: Vec<CaseEvent> = (0..40)
        .map(|i| ev(&format!("s{i}"), &format!("storm-{i}")))
        .collect();
    store.ingest(&evs, t).await.expect("ingest");
    let r = n.round(t).await.expect("round");
    assert_eq!((r.delivered, r.digests), (40, 1));
    let got = got.lock().expect("lock").clone();
    assert_eq!(got.len(), 1, "one message, not 40");
    assert_eq!(
        String::from_utf8_lossy(&got[0].body),
        r#"{"text": "digest 40"}"#
    );
    assert_eq!(got[0].header("x-edgepipe-event"), Some("digest"));
}

#[tokio::test]
async fn email_reaches_a_real_smtp_server() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let maildir = tempfile::tempdir().expect("tempdir");
    let mbox = maildir.path().join("mail");
    let mut smtp = std::process::Command::new("python3")
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(&mbox)
        .spawn()
        .expect("python3 -m aiosmtpd (pip install aiosmtpd; .ci/run does)");
    // Wait for it to listen.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_d, store, n) = store_with(serde_json::json!({
        "channels": [{"name": "mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": port,
                      "tls": "none", "from": "edgepipe@example.com", "to": ["ops@example.com"]}]
    }))
    .await;
    let t = now();
    store
        .ingest(&[ev("m1", "pump-7")], t)
        .await
        .expect("ingest");
    let r = n.round(t).await.expect("round");
    let _ = smtp.kill();
    let _ = smtp.wait();
    assert_eq!(r.delivered, 1, "{r:?}");
    let mut found = String::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(mbox.join(sub)) {
            for e in rd.flatten() {
                found.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    assert!(
        found.contains("Subject: [edgepipe] medium opened: #1 Anomaly on pump-7: temp"),
        "{found}"
    );
    assert!(found.contains("ops@example.com"), "{found}");
}
