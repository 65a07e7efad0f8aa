//! Runs the load generator and the fleet against the Mosquitto broker on 127.0.0.1:1883 (started
//! before the tests; anonymous access allowed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgepipe_sim::bench::{BenchConfig, run_ingest};
use edgepipe_sim::mqtt::{Credentials, FleetRunOptions, SimStats, run_fleet};
use edgepipe_sim::signal::FleetConfig;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const HOST: &str = "127.0.0.1";
const PORT: u16 = 1883;

fn broker_hint(e: impl std::fmt::Display) -> String {
    format!(
        "{e}\nthese tests need Mosquitto on {HOST}:{PORT} with anonymous access (.ci/run starts it)"
    )
}

/// Client id prefix unique to this test process, so parallel runs do not kick each other off.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_qos1_against_mosquitto_measures_acks_and_latency() -> Result<(), String> {
    let cfg = BenchConfig {
        host: HOST.into(),
        port: PORT,
        connections: 2,
        qos: 1,
        batch: 10,
        duration: Duration::from_secs(2),
        client_prefix: unique("benchtest"),
        ..BenchConfig::default()
    };
    let report = run_ingest(cfg, false).await.map_err(broker_hint)?;
    println!("{report}");
    assert!(report.messages_acked > 0, "{report}");
    assert_eq!(report.readings_acked, report.messages_acked * 10);
    assert!(report.latency_samples > 0, "{report}");
    let p50 = report.latency_p50_us.ok_or("p50 missing")?;
    let p99 = report.latency_p99_us.ok_or("p99 missing")?;
    let max = report.latency_max_us.ok_or("max missing")?;
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{report}");
    assert!(report.elapsed >= Duration::from_millis(1900), "{report}");
    assert!(report.msgs_per_s > 0.0 && report.readings_per_s > report.msgs_per_s);
    assert_eq!(report.errors, 0, "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_at_a_fixed_rate_holds_the_rate() -> Result<(), String> {
    let cfg = BenchConfig {
        host: HOST.into(),
        port: PORT,
        connections: 3,
        qos: 1,
        rate: Some(500),
        duration: Duration::from_secs(2),
        client_prefix: unique("ratetest"),
        ..BenchConfig::default()
    };
    let report = run_ingest(cfg, false).await.map_err(broker_hint)?;
    println!("{report}");
    // 500 msg/s for 2 s; allow for timer edges on a busy machine.
    assert!(
        (850..=1010).contains(&report.messages_acked),
        "expected ~1000 acked: {report}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_qos0_reports_throughput_only() -> Result<(), String> {
    let cfg = BenchConfig {
        host: HOST.into(),
        port: PORT,
        connections: 1,
        qos: 0,
        rate: Some(1000),
        duration: Duration::from_secs(1),
        client_prefix: unique("qos0test"),
        ..BenchConfig::default()
    };
    // With the progress bar on (hidden when stderr is not a terminal): it must not get in the way.
    let report = run_ingest(cfg, true).await.map_err(broker_hint)?;
    assert!(report.messages_acked > 0, "{report}");
    assert_eq!(report.latency_p50_us, None);
    assert!(report.to_json()["latency_p99_us"].is_null());
    Ok(())
}

#[tokio::test]
async fn bench_against_a_closed_port_fails_with_a_clear_message() -> Result<(), String> {
    // Bind then drop to get a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let cfg = BenchConfig {
        host: HOST.into(),
        port,
        connections: 2,
        duration: Duration::from_secs(1),
        ..BenchConfig::default()
    };
    let err = run_ingest(cfg, false)
        .await
        .err()
        .ok_or("connecting to a closed port must fail")?
        .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("is the broker"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_publishes_gateway_json_per_device() -> Result<(), String> {
    let prefix = unique("simtest");
    // Subscribe first so no sample is missed. Each device's own topic rather than
    // `edgepipe/v1/+/telemetry`: the bench tests flood the shared broker, and Mosquitto drops
    // messages for a subscriber whose queue overflows.
    let mut opts = MqttOptions::new(unique("simtest-sub"), HOST, PORT);
    opts.set_keep_alive(Duration::from_secs(10));
    let (sub, mut events) = AsyncClient::new(opts, 100);
    for i in 1..=3 {
        sub.subscribe(
            format!("edgepipe/v1/{prefix}-{i:04}/telemetry"),
            QoS::AtLeastOnce,
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    let subscribed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut acks = 0;
        while acks < 3 {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => acks += 1,
                Ok(_) => {}
                Err(e) => return Err(broker_hint(e)),
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| broker_hint("no SUBACK within 10s"))?;
    subscribed?;

    let fleet = FleetConfig {
        devices: 3,
        metrics: 4,
        interval: Duration::from_millis(200),
        start_ms: edgepipe_types::Clock::now_ms(&edgepipe_types::SystemClock),
        anomaly_rate: 0.0,
        device_prefix: prefix.clone(),
        ..FleetConfig::default()
    };
    let run = FleetRunOptions {
        host: HOST.into(),
        port: PORT,
        fleet,
        credentials: Credentials::Shared("ignored-by-anonymous-broker".into()),
        ..FleetRunOptions::default()
    };
    let stats = Arc::new(SimStats::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let fleet_task = tokio::spawn(run_fleet(run, Arc::clone(&stats), stop.clone()));

    let mut per_device: HashMap<String, Vec<i64>> = HashMap::new();
    let collect = async {
        while per_device.len() < 3 || per_device.values().any(|v| v.len() < 3) {
            let ev = events.poll().await.map_err(broker_hint)?;
            let Event::Incoming(Packet::Publish(p)) = ev else {
                continue;
            };
            let parts: Vec<&str> = p.topic.split('/').collect();
            assert_eq!(parts.len(), 4, "{}", p.topic);
            assert!(parts[2].starts_with(&prefix), "{}", p.topic);
            assert_eq!(
                (parts[0], parts[1], parts[3]),
                ("edgepipe", "v1", "telemetry")
            );
            let v: serde_json::Value =
                serde_json::from_slice(&p.payload).map_err(|e| e.to_string())?;
            let ts = v["ts"].as_i64().ok_or("ts must be an integer")?;
            let metrics = v["metrics"]
                .as_object()
                .ok_or("metrics must be an object")?;
            let mut names: Vec<&str> = metrics.keys().map(String::as_str).collect();
            names.sort_unstable();
            assert_eq!(names, ["humidity", "power", "temp", "vibration"]);
            assert!(metrics.values().all(|m| m.as_f64().is_some()), "{v}");
            per_device.entry(parts[2].to_owned()).or_default().push(ts);
        }
        Ok::<_, String>(())
    };
    tokio::time::timeout(Duration::from_secs(15), collect)
        .await
        .map_err(|_| format!("fleet did not publish enough: {:?}", stats.snapshot()))??;

    for (dev, ts) in &per_device {
        assert!(
            ts.windows(2).all(|w| w[1] - w[0] == 200),
            "{dev}: {ts:?} {:?} {per_device:?}",
            stats.snapshot()
        );
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), fleet_task)
        .await
        .map_err(|_| "run_fleet did not stop on shutdown".to_string())?
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let s = stats.snapshot();
    assert!(s.published >= 9 && s.acked > 0, "{s:?}");
    assert_eq!(s.readings, s.published * 4);
    assert_eq!(s.connects, 3, "{s:?}");
    assert_eq!(s.connected, 0, "all disconnected after shutdown: {s:?}");
    assert_eq!((s.errors, s.auth_refused, s.dropped), (0, 0, 0), "{s:?}");
    Ok(())
}
