//! The detection stage on a real WAL and lake.

use super::*;
use anyhow::Context as _;
use edgepipe_types::{IngestRecord, Reading, TsSource, Value};
use edgepipe_wal::{FullPolicy, WalConfig};

/// A detector snapshot of an older layout (an upgrade added detector state) does not stop
/// the stage: it starts its series afresh at the checkpointed position and takes the
/// promoted model and the operators' feedback again. A newer layout (a downgrade) or a
/// damaged snapshot of the current one is refused with the file named.
#[tokio::test]
async fn an_older_detector_snapshot_restarts_the_series_at_the_checkpoint() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let wal = Wal::open(dir.path().join("wal"), WalConfig::default())?;
    let open = |detector: Vec<u8>| {
        let st = StateFile {
            version: STATE_VERSION,
            next_seq: 0,
            silence_clock: 1_700_000_000_000,
            detector,
            feedback_pos: 42,
        };
        let (wal, root) = (wal.clone(), dir.path().to_path_buf());
        async move {
            std::fs::create_dir_all(root.join("detect"))?;
            std::fs::write(root.join("detect/state.bin"), postcard::to_allocvec(&st)?)?;
            DetectStage::open(
                &root,
                wal,
                LakeStore::local(root.join("lake"))?,
                DetectConfig::default(),
                None,
                Arc::new(DetectMetrics::default()),
            )
            .await
        }
    };
    let mut older = postcard::to_allocvec(&(DETECTOR_SNAPSHOT_VERSION - 1))?;
    older.extend_from_slice(&[7, 7, 7]);
    let stage = open(older).await?;
    assert_eq!(stage.next_seq, 0);
    assert_eq!(stage.silence_clock, 1_700_000_000_000);
    assert_eq!(stage.feedback_pos, 0, "feedback is applied again");
    assert_eq!(stage.detector.series_count(), 0);
    drop(stage);

    let mut newer = postcard::to_allocvec(&(DETECTOR_SNAPSHOT_VERSION + 1))?;
    newer.extend_from_slice(&[7, 7, 7]);
    let err = format!("{:#}", open(newer).await.err().context("a newer layout")?);
    assert!(err.contains("snapshot version"), "{err}");
    assert!(err.contains("state.bin"), "the file is named: {err}");

    for first in [DETECTOR_SNAPSHOT_VERSION, 0] {
        let mut damaged = postcard::to_allocvec(&first)?;
        damaged.extend_from_slice(&[7, 7, 7]);
        let err = format!("{:#}", open(damaged).await.err().context("damaged")?);
        assert!(err.contains("state.bin"), "the file is named: {err}");
    }
    Ok(())
}

/// The WAL's disk budget (`drop_oldest`) deletes records before the stage reads them: the
/// stage moves past the deleted range, scores every surviving reading exactly once (a
/// second pass would find them late), and scored + deleted is what was appended.
#[tokio::test]
async fn records_the_wal_budget_deleted_are_skipped_and_the_rest_scored_once() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let wal = Wal::open(
        dir.path().join("wal"),
        WalConfig {
            segment_bytes: 4096,
            max_bytes: 32 * 1024,
            full_policy: FullPolicy::DropOldest,
            ..WalConfig::default()
        },
    )?;
    let store = LakeStore::local(dir.path().join("lake"))?;
    let metrics = Arc::new(DetectMetrics::default());
    let mut stage = DetectStage::open(
        dir.path(),
        wal.clone(),
        store,
        DetectConfig::default(),
        None,
        metrics.clone(),
    )
    .await?;
    let total = 3000u64;
    for s in 0..total as i64 / 10 {
        let mut batch = Vec::new();
        for k in 0..10 {
            let ts = 1_700_000_000_000 + (s * 10 + k) * 1000;
            let rec = IngestRecord {
                device_id: DeviceId::new("d1")?,
                received_at: ts,
                transport: Transport::Mqtt5,
                origin: None,
                tags: Vec::new(),
                readings: vec![Reading {
                    metric: Metric::new("m")?,
                    ts,
                    value: Value::F64((k % 3) as f64),
                    ts_source: TsSource::Device,
                }],
            };
            batch.push(rec.encode());
        }
        wal.append_batch(batch).await?;
    }
    while stage.step()? {}
    let dropped = wal.stats().dropped_records;
    assert!(
        dropped > 0,
        "the budget deleted nothing; the test did not exercise it"
    );
    let scored = metrics.scored.load(Ordering::Relaxed);
    assert_eq!(
        metrics.late.load(Ordering::Relaxed),
        0,
        "a reading scored twice"
    );
    assert_eq!(
        scored + dropped,
        total,
        "scored {scored}, deleted {dropped}"
    );
    assert_eq!(stage.next_seq, wal.durable_end());
    Ok(())
}
