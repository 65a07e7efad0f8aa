//! Tests of `compact`.

use super::*;
use crate::parquet_io::{decode_parquet, encode_parquet};
use crate::schema::RowsBuilder;
use crate::swap::{STAGING_PREFIX, recover_compactions};
use edgepipe_types::{DeviceId, IngestRecord, Metric, Reading, Transport, TsSource, Value};

use crate::test_rng::Rng;

const HOUR_START_MS: i64 = 1_700_000_000_000 / 3_600_000 * 3_600_000;

/// Outputs kept in memory.
fn in_memory(_key: &str) -> Result<Vec<u8>> {
    Ok(Vec::new())
}

/// Flush-like files of one hour: each sorted, later files rewriting some earlier
/// (device, metric, ts) with other values, as a resend or replay would.
fn files(rng: &mut Rng, n_files: usize) -> Result<Vec<(String, Bytes, RecordBatch)>> {
    let mut out = Vec::new();
    let mut seq = 0u64;
    for f in 0..n_files {
        let mut b = RowsBuilder::new(i64::MAX);
        let first = seq;
        for _ in 0..rng.below(300) {
            let dev = format!("dev-{:02}", rng.below(23));
            let readings = (0..1 + rng.below(3))
                .filter_map(|_| {
                    let metric = ["b", "a", "ab", "z"][rng.below(4) as usize];
                    Some(Reading {
                        metric: Metric::new(metric).ok()?,
                        // Few distinct seconds: many duplicates within and across files.
                        ts: HOUR_START_MS + rng.below(40) as i64 * 1000,
                        value: Value::F64(rng.below(1000) as f64),
                        ts_source: TsSource::Device,
                    })
                })
                .collect::<Vec<_>>();
            let Ok(device_id) = DeviceId::new(dev) else {
                continue;
            };
            let rec = IngestRecord {
                device_id,
                received_at: HOUR_START_MS,
                transport: Transport::Http,
                origin: None,
                tags: Vec::new(),
                readings,
            };
            b.push_record(seq, &rec);
            seq += 1;
        }
        let sorted = sort_readings(&[b.finish()?])?;
        let bytes = encode_parquet(&readings_schema(), std::slice::from_ref(&sorted), 1024)?;
        out.push((
            format!("readings/date=x/hour=y/part-{first:020}-{f:020}.parquet"),
            bytes,
            sorted,
        ));
    }
    Ok(out)
}

fn decode_all(files: &[(String, Bytes)]) -> Result<RecordBatch> {
    let mut batches = Vec::new();
    let mut schema = None;
    for (_, data) in files {
        let (s, bs) = decode_parquet(data.clone())?;
        schema = Some(s);
        batches.extend(bs);
    }
    let schema = schema.unwrap_or_else(readings_schema);
    Ok(arrow::compute::concat_batches(&schema, &batches)?)
}

/// The bounded-memory merge gives exactly what sorting and deduplicating the whole
/// partition at once gives: rows, their order, and both rollups, whatever the batch size
/// (1 row per input at a time up to everything in one round) and however many files.
#[test]
fn streaming_merge_equals_the_whole_partition_at_once() -> Result<()> {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for round in 0..12 {
        let inputs = files(&mut rng, 1 + round % 6)?;
        let all: Vec<RecordBatch> = inputs.iter().map(|(_, _, b)| b.clone()).collect();
        let expect = dedup_last_wins(&sort_readings(&all)?)?;
        let expect_1m = rollup(&expect, 60_000_000)?;
        let expect_1h = rollup(&expect, HOUR_US)?;
        for batch_rows in [1, 3, 17, 1 << 20] {
            let plan = MergePlan {
                dir: "readings/date=x/hour=y".into(),
                first: 0,
                last: 9,
                row_group_rows: 1024,
                // Small: several output files.
                target_file_bytes: 2000,
                rollups: true,
                batch_rows,
            };
            let merged = merge_partition(
                inputs
                    .iter()
                    .map(|(k, d, _)| (k.clone(), d.clone()))
                    .collect(),
                &plan,
                in_memory,
            )?;
            let rows_in: usize = all.iter().map(RecordBatch::num_rows).sum();
            assert_eq!(merged.rows_in, rows_in);
            assert_eq!(merged.rows_out, expect.num_rows());
            let got = decode_all(&merged.outputs)?;
            assert_eq!(got, expect, "round {round}, batch_rows {batch_rows}");
            let r1m = decode_all(&merged.rollup_files[..1])?;
            let r1h = decode_all(&merged.rollup_files[1..])?;
            assert_eq!(
                r1m, expect_1m,
                "1m rollup, round {round}, batch_rows {batch_rows}"
            );
            assert_eq!(
                r1h, expect_1h,
                "1h rollup, round {round}, batch_rows {batch_rows}"
            );
            if expect.num_rows() > 2000 {
                assert!(merged.outputs.len() > 1, "target size splits the output");
            }
        }
    }
    Ok(())
}

#[test]
fn an_empty_partition_merges_to_no_rows_and_empty_rollups() -> Result<()> {
    let empty = encode_parquet(
        &readings_schema(),
        &[RecordBatch::new_empty(readings_schema())],
        1024,
    )?;
    let plan = MergePlan {
        dir: "readings/date=x/hour=y".into(),
        first: 0,
        last: 0,
        row_group_rows: 1024,
        target_file_bytes: 1 << 20,
        rollups: true,
        batch_rows: 8,
    };
    let merged = merge_partition(vec![("k".into(), empty)], &plan, in_memory)?;
    assert_eq!(merged.rows_out, 0);
    assert!(merged.outputs.is_empty());
    assert_eq!(merged.rollup_files.len(), 2);
    Ok(())
}

/// A crash in the middle of the swap (one output moved into the partition, the other
/// still staged) is finished on start: the staged output moved in, the inputs deleted; an
/// orphan staged by a run that never wrote its marker is deleted. A marker of the earlier
/// layout (outputs written in place, one missing) is rolled back: inputs kept.
#[tokio::test]
async fn an_interrupted_swap_goes_forward_and_staged_leftovers_are_cleared()
-> std::result::Result<(), Box<dyn std::error::Error>> {
    let part = "readings/date=2023-11-14/hour=22";
    let inputs = [
        format!("{part}/part-00000000000000000000-00000000000000000009.parquet"),
        format!("{part}/part-00000000000000000010-00000000000000000019.parquet"),
    ];
    let outputs = [
        format!("{part}/compacted-00000000000000000000-00000000000000000019-000.parquet"),
        format!("{part}/compacted-00000000000000000000-00000000000000000019-001.parquet"),
    ];
    for legacy in [false, true] {
        let dir = tempfile::tempdir()?;
        let store = LakeStore::local(dir.path())?;
        for k in &inputs {
            store.put(k, Bytes::from_static(b"input")).await?;
        }
        store.put(&outputs[0], Bytes::from_static(b"moved")).await?;
        if !legacy {
            store
                .put(&staging_key(&outputs[1]), Bytes::from_static(b"staged"))
                .await?;
        }
        let orphan = staging_key(&format!("{part}/compacted-1-2-000.parquet"));
        store.put(&orphan, Bytes::from_static(b"orphan")).await?;
        // An upload a crash interrupted: a local store's temporary file, not listed.
        let partial = dir.path().join(format!("{orphan}#3"));
        std::fs::write(&partial, b"partial")?;
        let marker = Marker {
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
            rollups: Vec::new(),
        };
        put_marker(&store, part, &marker).await?;
        recover_compactions(&store).await?;
        let left: Vec<String> = store.list("").await?.into_iter().map(|(k, _)| k).collect();
        if legacy {
            // The earlier layout wrote outputs in place: one missing means roll back.
            assert_eq!(left, inputs.to_vec());
        } else {
            assert_eq!(left, outputs.to_vec());
            assert_eq!(store.get(&outputs[1]).await?, Bytes::from_static(b"staged"));
        }
        // Nothing staged is left, not even directories or unlisted upload files.
        assert!(!dir.path().join(STAGING_PREFIX).exists());
    }
    Ok(())
}

/// A crash in the swap of a partition compacted again (outputs named like the inputs they
/// replace: a forced run over two compacted files): recovery moves the staged outputs into
/// place and deletes only the inputs no output replaces, whatever had been moved already.
#[tokio::test]
async fn an_interrupted_swap_over_same_named_files_goes_forward()
-> std::result::Result<(), Box<dyn std::error::Error>> {
    let part = "readings/date=2023-11-14/hour=22";
    let name = |i: u32| format!("{part}/compacted-{:020}-{:020}-{i:03}.parquet", 0, 19);
    let rollup = "rollup_1m/date=2023-11-14/hour=22/rollup.parquet".to_owned();
    // Crash points: before any move (0), after the rollup (1), after the first output (2).
    for moved in 0..3 {
        let dir = tempfile::tempdir()?;
        let store = LakeStore::local(dir.path())?;
        let inputs = [name(0), name(1), name(2)];
        let outputs = [name(0), name(1)];
        for k in &inputs {
            store.put(k, Bytes::from_static(b"old")).await?;
        }
        store.put(&rollup, Bytes::from_static(b"old")).await?;
        for k in outputs.iter().chain([&rollup]) {
            store
                .put(&staging_key(k), Bytes::from_static(b"new"))
                .await?;
        }
        if moved >= 1 {
            store.rename(&staging_key(&rollup), &rollup).await?;
        }
        if moved >= 2 {
            store.rename(&staging_key(&outputs[0]), &outputs[0]).await?;
        }
        let marker = Marker {
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
            rollups: vec![rollup.clone()],
        };
        put_marker(&store, part, &marker).await?;
        recover_compactions(&store).await?;
        let mut want = vec![rollup.clone()];
        want.extend(outputs.iter().cloned());
        want.sort();
        let left: Vec<String> = store.list("").await?.into_iter().map(|(k, _)| k).collect();
        assert_eq!(left, want, "crash after {moved} moves");
        for k in &want {
            assert_eq!(store.get(k).await?, Bytes::from_static(b"new"), "{k}");
        }
    }
    Ok(())
}

/// The store path of the merge: inputs read by ranges from a local lake, outputs streamed
/// to staging keys in parts; the staged files hold the rows of the in-memory merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn compaction_through_the_store_stages_the_rows_of_the_in_memory_merge()
-> std::result::Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = LakeStore::local(dir.path())?;
    let mut rng = Rng(11);
    let files = files(&mut rng, 6)?;
    let part = "readings/date=2023-11-14/hour=22";
    let mut expected = Vec::new();
    for (i, (_, data, _)) in files.iter().enumerate() {
        let first = i * 100;
        let key = format!("{part}/part-{first:020}-{:020}.parquet", first + 99);
        store.put(&key, data.clone()).await?;
        expected.push((key, data.clone()));
    }
    let plan = MergePlan {
        dir: part.into(),
        first: 0,
        last: 599,
        row_group_rows: 1024,
        target_file_bytes: 4_000,
        rollups: true,
        batch_rows: 500,
    };
    let in_mem = merge_partition(expected.clone(), &plan, in_memory)?;
    let handle = tokio::runtime::Handle::current();
    let readers: Vec<(String, RangeReader)> = store
        .list(&format!("{part}/"))
        .await?
        .into_iter()
        .map(|(k, m)| {
            let r = RangeReader::new(store.clone(), k.clone(), m.size, handle.clone());
            (k, r)
        })
        .collect();
    let probes = readers.clone();
    let (s2, h2) = (store.clone(), handle.clone());
    let staged = tokio::task::spawn_blocking(move || {
        merge_partition(readers, &plan, |key: &str| {
            UploadSink::create(s2.clone(), staging_key(key), h2.clone())
        })
    })
    .await??;
    assert_eq!(staged.rows_out, in_mem.rows_out);
    assert_eq!(staged.outputs.len(), in_mem.outputs.len());
    assert!(staged.outputs.len() > 1, "several outputs");
    assert_eq!(staged.rollup_files.len(), 2);
    assert_eq!(in_mem.rollup_files.len(), 2);
    let both = in_mem
        .outputs
        .iter()
        .zip(&staged.outputs)
        .chain(in_mem.rollup_files.iter().zip(&staged.rollup_files));
    for ((k1, bytes), (k2, size)) in both {
        assert_eq!(k1, k2);
        let stored = store.get(&staging_key(k2)).await?;
        assert_eq!(stored.len() as u64, *size);
        assert_eq!(
            decode_all(&[(k1.clone(), bytes.clone())])?,
            decode_all(&[(k2.clone(), stored)])?
        );
    }
    // Small inputs are fetched whole, once: never more than the file.
    for ((_, r), (_, data)) in probes.iter().zip(&expected) {
        assert_eq!(r.fetched(), data.len() as u64);
    }
    Ok(())
}

/// Nice value of the calling thread, from /proc (Linux).
fn own_nice() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the parenthesised command name; nice is field 19 (index 16 after it).
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(16)?.parse().ok()
}

#[test]
fn compaction_threads_run_at_nice_10() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let before = std::thread::spawn(own_nice).join().ok().flatten();
    let after = std::thread::spawn(|| {
        background_priority();
        // Threads started from here (the sort's helpers) inherit it.
        std::thread::spawn(own_nice).join().ok().flatten()
    })
    .join()
    .ok()
    .flatten();
    // Nice 10, or the process's own nice if that is already lower priority (an
    // unprivileged thread cannot raise its priority).
    let before = before.ok_or("no nice value in /proc/thread-self/stat")?;
    assert_eq!(after, Some(before.max(10)));
    Ok(())
}

#[test]
fn a_corrupt_input_is_named() {
    let plan = MergePlan {
        dir: "d".into(),
        first: 0,
        last: 0,
        row_group_rows: 1024,
        target_file_bytes: 1 << 20,
        rollups: false,
        batch_rows: 8,
    };
    let e = merge_partition(
        vec![("bad-key".into(), Bytes::from_static(b"not parquet"))],
        &plan,
        in_memory,
    );
    match e {
        Err(Error::Corrupt { key, .. }) => assert_eq!(key, "bad-key"),
        other => panic!("expected a corrupt-file error, got {other:?}"),
    }
}
