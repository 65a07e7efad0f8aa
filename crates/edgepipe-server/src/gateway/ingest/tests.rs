//! The ingest core on a real WAL: batch replays in flight, failed and durable appends.

use super::*;
use edgepipe_types::SystemClock;

/// An ingest core on a WAL in `dir` with `wal`'s settings and defaults otherwise.
fn ingestor(
    dir: &std::path::Path,
    wal: edgepipe_wal::WalConfig,
) -> Result<Ingestor, Box<dyn std::error::Error>> {
    Ok(Ingestor::new(IngestorParts {
        wal: Wal::open(dir.join("wal"), wal)?,
        deadletters: DeadLetters::open(dir, &Default::default())?,
        devices: DeviceRegistry::open(dir)?,
        limits: Limits::default(),
        max_payload: 128 * 1024,
        device_msgs_per_sec: 0,
        mappings: Vec::new(),
        clock: Arc::new(SystemClock),
        metrics: Arc::new(Metrics::default()),
        auto_register: false,
    })?)
}

#[test]
fn a_batch_copy_is_refused_while_another_is_in_flight() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let ing = ingestor(dir.path(), edgepipe_wal::WalConfig::default())?;
    let dev = DeviceId::new("gw-1")?;
    let o = BatchOrigin {
        source: "agent-a".into(),
        stream: "telemetry".into(),
        seq: 7,
    };
    let BatchStart::Write(first) = ing.begin_batch(&dev, &o) else {
        return Err("a new batch is not ours to write".into());
    };
    assert!(matches!(ing.begin_batch(&dev, &o), BatchStart::InFlight));
    // Another seq of the same stream is independent.
    let other = BatchOrigin {
        seq: 8,
        ..o.clone()
    };
    let BatchStart::Write(_eight) = ing.begin_batch(&dev, &other) else {
        return Err("seq 8 is not ours to write".into());
    };
    // The first append failed or was never queued (its mark dropped with the callback):
    // the next copy is written.
    drop(first);
    let BatchStart::Write(second) = ing.begin_batch(&dev, &o) else {
        return Err("a failed batch could not be written again".into());
    };
    // Stored: every later copy is a duplicate, and only seq 8 is still in flight.
    second.stored(&ing.dedup);
    assert!(matches!(ing.begin_batch(&dev, &o), BatchStart::Stored));
    assert_eq!(
        ing.batches_in_flight
            .lock()
            .map_err(|e| e.to_string())?
            .len(),
        1,
        "only seq 8 is still in flight"
    );
    Ok(())
}

/// Through the real append path: an agent batch whose append fails (too large for the
/// WAL; the durable callback, holding the in-flight mark, is dropped unrun) can be written
/// again, and one whose append is durable is a duplicate from then on; neither leaves a
/// mark behind.
#[tokio::test]
async fn an_append_that_fails_clears_the_mark_and_a_durable_one_stores_it()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // Records over 512 bytes are refused by the WAL: an append that fails.
    let ing = ingestor(
        dir.path(),
        edgepipe_wal::WalConfig {
            max_record_bytes: 512,
            ..edgepipe_wal::WalConfig::default()
        },
    )?;
    let dev = DeviceId::new("gw-1")?;
    let batch = |seq: u64, n: i64| -> Result<Decoded, edgepipe_types::Error> {
        Ok(Decoded {
            origin: Some(BatchOrigin {
                source: "agent-a".into(),
                stream: "telemetry".into(),
                seq,
            }),
            readings: (0..n)
                .map(|i| {
                    Ok(edgepipe_types::Reading {
                        metric: edgepipe_types::Metric::new(format!("m{i}"))?,
                        ts: 1_700_000_000_000,
                        value: edgepipe_types::Value::F64(i as f64),
                        ts_source: edgepipe_types::TsSource::Device,
                    })
                })
                .collect::<Result<_, edgepipe_types::Error>>()?,
        })
    };
    let too_big = ing
        .write(&Direct, &dev, batch(1, 100)?, Vec::new(), Transport::Mqtt5)
        .await;
    assert!(matches!(too_big, Err(Rejection::Unavailable(_))));
    let origin = |seq| BatchOrigin {
        source: "agent-a".into(),
        stream: "telemetry".into(),
        seq,
    };
    assert!(matches!(
        ing.begin_batch(&dev, &origin(1)),
        BatchStart::Write(_)
    ));
    let ok = ing
        .write(&Direct, &dev, batch(2, 2)?, Vec::new(), Transport::Mqtt5)
        .await;
    assert!(matches!(
        ok,
        Ok(Accepted {
            duplicate: false,
            ..
        })
    ));
    assert!(matches!(
        ing.begin_batch(&dev, &origin(2)),
        BatchStart::Stored
    ));
    assert!(
        ing.batches_in_flight
            .lock()
            .map_err(|e| e.to_string())?
            .is_empty()
    );
    Ok(())
}
