use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;
use crate::format::{FORMAT_VERSION, parse_segment_header, segment_header, segment_path};
use crate::recovery::scan_segment;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime")
}

fn all_records(wal: &Wal) -> Result<Vec<(u64, Vec<u8>)>> {
    let first = wal.stats().first_seq;
    wal.read(first, usize::MAX)
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = fs::read_dir(dir.join("segments"))
        .expect("segments dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

/// Writes `garbage` right after the last record of the last segment, as a write torn by a
/// crash leaves it (in a preallocated segment, over the zeros; otherwise at the file's end).
fn tear_last_segment(dir: &Path, cfg: &WalConfig, garbage: &[u8]) -> TestResult {
    use std::os::unix::fs::FileExt;
    let seg = last_segment(dir);
    let first: u64 = seg
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("segment name")?
        .parse()?;
    let (_, valid, torn, _) = scan_segment(&seg, first, cfg.max_record_bytes)?;
    assert!(torn.is_none(), "segment already torn");
    let f = OpenOptions::new().write(true).open(&seg)?;
    f.write_all_at(garbage, valid)?;
    Ok(())
}

#[test]
fn append_read_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rt = rt();
    let wal = Wal::open(dir.path(), WalConfig::test_config())?;
    let mut seqs = Vec::new();
    for i in 0..100u32 {
        seqs.push(rt.block_on(wal.append(format!("rec-{i}-{:050}", 0).into_bytes()))?);
    }
    assert_eq!(seqs, (0..100).collect::<Vec<u64>>());
    let unconfirmed = rt.block_on(wal.append_unconfirmed(b"u".to_vec()))?;
    assert_eq!(unconfirmed, 100);
    let batch = rt.block_on(wal.append_batch(vec![b"a".to_vec(), b"b".to_vec()]))?;
    assert_eq!(batch, 101);
    assert!(wal.stats().segments > 1, "4 KiB segments must roll");
    wal.close();

    let wal = Wal::open(dir.path(), WalConfig::test_config())?;
    let recs = all_records(&wal)?;
    assert_eq!(recs.len(), 103);
    assert!(recs[7].1.starts_with(b"rec-7-"));
    assert_eq!(recs[102].1, b"b");
    assert_eq!(rt.block_on(wal.append(b"next".to_vec()))?, 103);
    assert_eq!(wal.stats().torn_records_truncated, 0);
    Ok(())
}

#[test]
fn torn_tail_is_truncated_and_counted() -> TestResult {
    for preallocate in [true, false] {
        let cfg = WalConfig {
            preallocate,
            ..WalConfig::test_config()
        };
        let dir = tempfile::tempdir()?;
        let rt = rt();
        let wal = Wal::open(dir.path(), cfg.clone())?;
        for i in 0..5u8 {
            rt.block_on(wal.append(vec![i; 10]))?;
        }
        wal.close();
        // A crash in the middle of writing a record: a header promising more than was written.
        tear_last_segment(
            dir.path(),
            &cfg,
            &[50, 0, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0, 9, 9],
        )?;
        let wal = Wal::open(dir.path(), cfg.clone())?;
        let st = wal.stats();
        assert_eq!(st.torn_records_truncated, 1, "preallocate {preallocate}");
        assert_eq!(st.torn_bytes_truncated, 18, "preallocate {preallocate}");
        assert_eq!(all_records(&wal)?.len(), 5);
        assert_eq!(rt.block_on(wal.append(b"x".to_vec()))?, 5);
        wal.close();
        // The recovered segment takes records again where the torn one stood.
        let wal = Wal::open(dir.path(), cfg)?;
        assert_eq!(wal.stats().torn_records_truncated, 0);
        assert_eq!(all_records(&wal)?.len(), 6);
    }
    Ok(())
}

/// A valid segment header that names format `version`.
fn header_of_version(first_seq: u64, version: u32) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = segment_header(first_seq);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A crash can persist a later page of a group and lose an earlier one: zeros right after the
/// last record, then bytes further on. That is a torn tail in the last segment (cut off and
/// counted up to the last non-zero byte) and corruption in a sealed one, never an end of log
/// that would hide the bytes.
#[test]
fn bytes_after_zeros_are_a_torn_tail_or_corruption() -> TestResult {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir()?;
    let rt = rt();
    let cfg = WalConfig::test_config();
    let wal = Wal::open(dir.path(), cfg.clone())?;
    for i in 0..3u8 {
        rt.block_on(wal.append(vec![i; 10]))?;
    }
    wal.close();
    let seg = last_segment(dir.path());
    let (_, valid, _, _) = scan_segment(&seg, 0, cfg.max_record_bytes)?;
    OpenOptions::new()
        .write(true)
        .open(&seg)?
        .write_all_at(&[7, 7, 7], valid + 1000)?;
    let wal = Wal::open(dir.path(), cfg.clone())?;
    let st = wal.stats();
    assert_eq!(st.torn_records_truncated, 1);
    assert_eq!(st.torn_bytes_truncated, 1003);
    assert_eq!(all_records(&wal)?.len(), 3);
    // Fill past the first segment, then plant a byte after the zeros of the sealed one.
    for _ in 0..60 {
        rt.block_on(wal.append(vec![1u8; 100]))?;
    }
    assert!(wal.stats().segments > 1);
    wal.close();
    let first = segment_path(dir.path(), 0);
    let (_, valid, torn, _) = scan_segment(&first, 0, cfg.max_record_bytes)?;
    assert!(torn.is_none());
    let len = fs::metadata(&first)?.len();
    assert!(len > valid + 1, "the sealed segment keeps a zero tail");
    OpenOptions::new()
        .write(true)
        .open(&first)?
        .write_all_at(&[7], len - 1)?;
    let err = Wal::open(dir.path(), cfg).err();
    assert!(
        matches!(err, Some(Error::Corrupt { .. })),
        "bytes after the zeros of a sealed segment must be reported, got {err:?}"
    );
    Ok(())
}

/// A segment of format version 1 (written before preallocation) is read, and is left to grow
/// as written so older builds can still read it; the segments after it are version 2 and
/// zero-filled.
#[test]
fn version_1_segments_are_read_and_not_preallocated() -> TestResult {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir()?;
    let rt = rt();
    let cfg = WalConfig {
        segment_bytes: 8 * 1024,
        ..WalConfig::test_config()
    };
    let old = WalConfig {
        preallocate: false,
        ..cfg.clone()
    };
    let wal = Wal::open(dir.path(), old)?;
    for i in 0..3u8 {
        rt.block_on(wal.append(vec![i; 100]))?;
    }
    wal.close();
    // Make it a version 1 segment, as an older build wrote it.
    let seg = last_segment(dir.path());
    OpenOptions::new()
        .write(true)
        .open(&seg)?
        .write_all_at(&header_of_version(0, 1), 0)?;
    let len = fs::metadata(&seg)?.len();

    let wal = Wal::open(dir.path(), cfg)?;
    assert_eq!(
        fs::metadata(&seg)?.len(),
        len,
        "a version 1 segment is not zero-filled"
    );
    assert_eq!(all_records(&wal)?.len(), 3);
    for i in 0..200u32 {
        rt.block_on(wal.append(vec![(i % 7) as u8; 100]))?;
    }
    let recs = all_records(&wal)?;
    assert_eq!(recs.len(), 203);
    assert_eq!(recs[2].1, vec![2u8; 100]);
    wal.close();
    let newest = last_segment(dir.path());
    assert_ne!(newest, seg);
    let mut head = [0u8; SEGMENT_HEADER_LEN];
    File::open(&newest)?.read_exact(&mut head)?;
    assert_eq!(parse_segment_header(&head)?.1, FORMAT_VERSION);
    // A version this build does not know is refused by name.
    let err = parse_segment_header(&header_of_version(0, 9))
        .err()
        .unwrap_or_default();
    assert!(err.contains("version 9"), "{err}");
    Ok(())
}

/// Preallocated segments are zero-filled to their full size up front, the rolls take the
/// spare a background thread prepared, and the zeros after the last record are read as the
/// end of the log, not as a torn write, both by readers and at reopen.
#[test]
fn preallocated_segments_hold_zeros_after_the_records() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rt = rt();
    let cfg = WalConfig {
        segment_bytes: 64 * 1024,
        ..WalConfig::test_config()
    };
    let wal = Wal::open(dir.path(), cfg.clone())?;
    let seg = last_segment(dir.path());
    assert_eq!(fs::metadata(&seg)?.len(), 64 * 1024, "zero-filled at open");
    let mut reader = wal.reader(0)?;
    let mut seen = 0u64;
    for i in 0..400u32 {
        // Let the spare thread finish now and then, so rolls find it ready.
        if i % 100 == 99 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        rt.block_on(wal.append(vec![(i % 251) as u8; 500]))?;
        // A reader kept on the active segment sees each record as it becomes durable.
        while let Some((seq, p)) = reader.next_record()? {
            assert_eq!(seq, seen);
            assert_eq!(p, vec![(seq % 251) as u8; 500]);
            seen += 1;
        }
    }
    assert_eq!(seen, 400);
    let st = wal.stats();
    assert!(st.segments >= 3, "{} segments", st.segments);
    wal.close();
    let mut full = 0;
    for e in fs::read_dir(dir.path().join("segments"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "seg") && fs::metadata(&p)?.len() == 64 * 1024 {
            full += 1;
        }
    }
    assert!(
        full >= 2,
        "rolls took preallocated spares ({full} full-size segments)"
    );
    let wal = Wal::open(dir.path(), cfg)?;
    assert_eq!(wal.stats().torn_records_truncated, 0);
    let recs = all_records(&wal)?;
    assert_eq!(recs.len(), 400);
    assert_eq!(rt.block_on(wal.append(b"next".to_vec()))?, 400);
    Ok(())
}

#[test]
fn corrupt_closed_segment_is_an_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rt = rt();
    let wal = Wal::open(dir.path(), WalConfig::test_config())?;
    for _ in 0..100 {
        rt.block_on(wal.append(vec![7u8; 100]))?;
    }
    wal.close();
    let first = segment_path(dir.path(), 0);
    let mut bytes = fs::read(&first)?;
    bytes[SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 3] ^= 0xff;
    fs::write(&first, bytes)?;
    let err = Wal::open(dir.path(), WalConfig::test_config()).err();
    assert!(
        matches!(err, Some(Error::Corrupt { .. })),
        "bit flip in a sealed segment must be reported, got {err:?}"
    );
    Ok(())
}

#[test]
fn consumers_checkpoint_and_retention_deletes_passed_segments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rt = rt();
    let wal = Wal::open(dir.path(), WalConfig::test_config())?;
    let mut a = wal.consumer("lake")?;
    let mut b = wal.consumer("detect")?;
    for _ in 0..200 {
        rt.block_on(wal.append(vec![1u8; 100]))?;
    }
    let segs_before = wal.stats().segments;
    assert!(segs_before > 3);
    a.commit(150)?;
    assert_eq!(wal.stats().segments, segs_before, "detect still at 0");
    b.commit(120)?;
    let st = wal.stats();
    assert!(st.segments < segs_before);
    assert!(st.first_seq <= 120, "nothing detect still needs is deleted");
    wal.close();

    let wal = Wal::open(dir.path(), WalConfig::test_config())?;
    let a = wal.consumer("lake")?;
    assert_eq!(a.position(), 150);
    let mut r = a.reader()?;
    let (seq, _) = r.next_record()?.ok_or("record 150")?;
    assert_eq!(seq, 150);
    assert!(matches!(wal.reader(0).err(), Some(Error::Truncated { .. })));
    assert!(wal.consumer("../evil").is_err());
    Ok(())
}

#[test]
fn budget_reject_refuses_and_drop_oldest_records_gap() -> TestResult {
    let rt = rt();
    let dir = tempfile::tempdir()?;
    let cfg = WalConfig {
        segment_bytes: 1024,
        max_bytes: 4096,
        ..WalConfig::test_config()
    };
    let wal = Wal::open(dir.path(), cfg.clone())?;
    let mut refused = 0;
    for _ in 0..100 {
        match rt.block_on(wal.append(vec![0u8; 200])) {
            Ok(_) => {}
            Err(Error::Full { budget, .. }) => {
                assert_eq!(budget, 4096);
                refused += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    assert!(refused > 0);
    assert_eq!(wal.stats().rejected_full, refused);
    assert!(wal.stats().disk_bytes <= 4096);
    wal.close();

    let dir = tempfile::tempdir()?;
    let wal = Wal::open(
        dir.path(),
        WalConfig {
            full_policy: FullPolicy::DropOldest,
            ..cfg
        },
    )?;
    let c = wal.consumer("slow")?;
    for _ in 0..100 {
        rt.block_on(wal.append(vec![0u8; 200]))?;
    }
    let st = wal.stats();
    assert!(st.disk_bytes <= 4096);
    assert!(st.dropped_records > 0);
    let lost: u64 = wal.gaps().iter().map(|g| g.to - g.from).sum();
    assert_eq!(lost, st.dropped_records);
    assert_eq!(lost + (st.next_seq - st.first_seq), 100);
    drop(c);
    let c = wal.consumer("slow")?;
    assert_eq!(c.position(), st.first_seq, "consumer skips past the gap");
    Ok(())
}

#[test]
fn oversized_record_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let wal = Wal::open(dir.path(), WalConfig::test_config())?;
    let err = rt().block_on(wal.append(vec![0; 64 * 1024 + 1])).err();
    assert!(matches!(
        err,
        Some(Error::RecordTooLarge { limit: 65536, .. })
    ));
    Ok(())
}

#[test]
fn group_commit_covers_concurrent_appends() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let wal = Wal::open(dir.path(), WalConfig::default())?;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..64 {
            let wal = wal.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    wal.append(format!("{t}-{i}").into_bytes()).await?;
                }
                Ok::<_, Error>(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let st = wal.stats();
    assert_eq!(st.appended_records, 3200);
    assert!(
        st.fsyncs < 3200,
        "64 concurrent writers must share fsyncs ({} fsyncs)",
        st.fsyncs
    );
    Ok(())
}

#[test]
fn on_durable_runs_even_when_the_caller_is_dropped_and_not_on_failure() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rt = rt();
    let wal = Wal::open(dir.path(), WalConfig::test_config())?;
    let (tx, rx) = std::sync::mpsc::channel();
    rt.block_on(async {
        let t = tx.clone();
        let fut = wal.append_then(b"a".to_vec(), move |seq| {
            let _ = t.send(seq);
        });
        tokio::pin!(fut);
        // Poll once (the request reaches the writer), then drop the caller mid-await.
        tokio::select! {
            biased;
            _ = &mut fut => {}
            _ = async {} => {}
        }
    });
    let seq = rx.recv_timeout(std::time::Duration::from_secs(10))?;
    assert_eq!(seq, 0);
    assert_eq!(
        wal.read(0, 10)?,
        vec![(0, b"a".to_vec())],
        "durable before the callback"
    );
    let t = tx.clone();
    let err = rt
        .block_on(wal.append_then(vec![0; 64 * 1024 + 1], move |s| {
            let _ = t.send(s);
        }))
        .err();
    assert!(matches!(err, Some(Error::RecordTooLarge { .. })));
    assert!(rx.try_recv().is_err(), "no callback for a refused append");
    Ok(())
}

#[test]
fn waiting_reader_sees_new_records() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rt = rt();
    let wal = Wal::open(dir.path(), WalConfig::test_config())?;
    let mut reader = wal.reader(0)?;
    assert!(reader.next_record()?.is_none());
    rt.block_on(async {
        let w = wal.clone();
        let waiter = tokio::spawn(async move { w.wait_beyond(0).await });
        wal.append(b"x".to_vec()).await?;
        assert_eq!(waiter.await.map_err(|e| e.to_string())??, 1);
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    assert_eq!(reader.next_record()?, Some((0, b"x".to_vec())));
    Ok(())
}

#[test]
fn paced_wait_needs_a_new_record_and_its_time() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rt = rt();
    let wal = Wal::open(dir.path(), WalConfig::test_config())?;
    rt.block_on(async {
        // A record already there: it still waits for `not_before`.
        wal.append(b"a".to_vec()).await?;
        let not_before = std::time::Instant::now() + std::time::Duration::from_millis(30);
        assert_eq!(wal.wait_beyond_no_sooner(0, not_before).await?, 1);
        assert!(std::time::Instant::now() >= not_before);
        // A time already passed: it still waits for a record beyond `seq`.
        let w = wal.clone();
        let past = std::time::Instant::now();
        let waiter = tokio::spawn(async move { w.wait_beyond_no_sooner(1, past).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        wal.append(b"b".to_vec()).await?;
        assert_eq!(waiter.await.map_err(|e| e.to_string())??, 2);
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}

// ---- model-based property test ----

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Batch(Vec<Vec<u8>>),
    Reopen,
    /// Close, append garbage to the last segment (a torn write), reopen.
    CrashTorn(Vec<u8>),
    /// Commit consumer `0|1` at a fraction of the log.
    Commit(usize, u8),
    Read,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Append),
        2 => proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..5)
            .prop_map(Op::Batch),
        1 => Just(Op::Reopen),
        1 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(Op::CrashTorn),
        2 => (0..2usize, any::<u8>()).prop_map(|(c, f)| Op::Commit(c, f)),
        2 => Just(Op::Read),
    ]
}

fn check_against_model(wal: &Wal, model: &[Vec<u8>], positions: &[u64; 2]) {
    let st = wal.stats();
    assert_eq!(st.next_seq, model.len() as u64);
    let min = positions.iter().copied().min().unwrap_or(0);
    assert!(st.first_seq <= min, "retention deleted unconsumed records");
    let recs = wal.read(st.first_seq, usize::MAX).expect("read");
    assert_eq!(recs.len() as u64, st.next_seq - st.first_seq);
    for (seq, payload) in recs {
        assert_eq!(&model[seq as usize], &payload, "record {seq} differs");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn wal_matches_model(ops in proptest::collection::vec(op(), 1..60), preallocate in any::<bool>()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = WalConfig { segment_bytes: 512, max_bytes: 1 << 30, preallocate, ..WalConfig::test_config() };
        let rt = rt();
        let mut wal = Wal::open(dir.path(), cfg.clone()).expect("open");
        let mut model: Vec<Vec<u8>> = Vec::new();
        let mut positions = [0u64; 2];
        let names = ["c0", "c1"];
        for n in names { wal.consumer(n).expect("consumer"); }
        for op in ops {
            match op {
                Op::Append(p) => {
                    let seq = rt.block_on(wal.append(p.clone())).expect("append");
                    prop_assert_eq!(seq, model.len() as u64);
                    model.push(p);
                }
                Op::Batch(ps) => {
                    let seq = rt.block_on(wal.append_batch(ps.clone())).expect("batch");
                    prop_assert_eq!(seq, model.len() as u64);
                    model.extend(ps);
                }
                Op::Reopen => {
                    wal.close();
                    wal = Wal::open(dir.path(), cfg.clone()).expect("reopen");
                    prop_assert_eq!(wal.stats().torn_records_truncated, 0);
                }
                Op::CrashTorn(garbage) => {
                    wal.close();
                    tear_last_segment(dir.path(), &cfg, &garbage).expect("tear");
                    wal = Wal::open(dir.path(), cfg.clone()).expect("recover");
                }
                Op::Commit(c, frac) => {
                    let target = model.len() as u64 * u64::from(frac) / 255;
                    let target = target.max(positions[c]);
                    let mut consumer = wal.consumer(names[c]).expect("consumer");
                    consumer.commit(target).expect("commit");
                    positions[c] = target;
                }
                Op::Read => {}
            }
            check_against_model(&wal, &model, &positions);
        }
    }
}

// ---- kill -9 loop ----

const CHILD_ENV: &str = "EDGEPIPE_WAL_KILL9_DIR";

/// Runs only as the child of `kill9_loop_keeps_every_acked_record`: appends from many tasks
/// and prints `ACK <seq> <payload>` after each durable append.
#[test]
#[ignore = "child process of kill9_loop_keeps_every_acked_record"]
fn kill9_child() -> TestResult {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cfg = WalConfig {
        segment_bytes: 64 * 1024,
        ..WalConfig::default()
    };
    let wal = Wal::open(&dir, cfg)?;
    let run = std::process::id();
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for t in 0..16 {
            let wal = wal.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let payload = format!("{run}-{t}-{i}");
                    let durable = i % 4 != 0;
                    let seq = if durable {
                        wal.append(payload.clone().into_bytes()).await
                    } else {
                        wal.append_unconfirmed(payload.clone().into_bytes()).await
                    };
                    match seq {
                        Ok(seq) if durable => {
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "ACK {seq} {payload}");
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("append failed: {e}");
                            return;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    Ok(())
}

#[test]
fn kill9_loop_keeps_every_acked_record() -> TestResult {
    use rand::Rng;
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut rng = rand::rng();
    let mut acked: Vec<(u64, String)> = Vec::new();
    for round in 0..8 {
        let mut child = Command::new(&exe)
            .args(["tests::kill9_child", "--exact", "--ignored", "--nocapture"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("child stdout")?;
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ACK ")
                    && let Some((seq, payload)) = rest.split_once(' ')
                    && let Ok(seq) = seq.parse::<u64>()
                {
                    lines.push((seq, payload.to_string()));
                }
            }
            lines
        });
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(150..600)));
        child.kill()?; // SIGKILL on Unix
        child.wait()?;
        let round_acked = reader.join().map_err(|_| "reader thread")?;
        assert!(
            !round_acked.is_empty() || round == 0,
            "child acknowledged nothing in round {round}"
        );
        acked.extend(round_acked);

        // The child's configuration: opening with another segment size would fill the
        // active segment with zeros to that size.
        let wal = Wal::open(
            dir.path(),
            WalConfig {
                segment_bytes: 64 * 1024,
                ..WalConfig::default()
            },
        )?;
        let recs = wal.read(0, usize::MAX)?;
        let by_seq: std::collections::HashMap<u64, &[u8]> =
            recs.iter().map(|(s, p)| (*s, p.as_slice())).collect();
        for (seq, payload) in &acked {
            assert_eq!(
                by_seq.get(seq).copied(),
                Some(payload.as_bytes()),
                "acked record {seq} lost or changed after kill -9 (round {round})"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (_, p) in &recs {
            assert!(seen.insert(p.clone()), "record stored twice");
        }
        wal.close();
    }
    assert!(acked.len() > 100, "only {} acks over 8 rounds", acked.len());
    Ok(())
}

/// Reads that continue where the last one stopped (the consumers' pattern) return the same
/// records as fresh reads, across appends made in between and across segment rotation, and
/// reads from other positions are not disturbed by the readers kept open.
#[test]
fn continued_reads_match_fresh_reads_across_appends_and_segments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = WalConfig {
        segment_bytes: 4096,
        ..WalConfig::test_config()
    };
    let wal = Wal::open(dir.path(), cfg)?;
    let rt = rt();
    let payload = |i: u64| format!("record-{i:04}-{}", "x".repeat((i % 97) as usize)).into_bytes();
    let mut next = 0u64;
    let mut appended = 0u64;
    for round in 0..20u64 {
        for _ in 0..(7 + round % 5) {
            rt.block_on(wal.append(payload(appended)))?;
            appended += 1;
        }
        // The consumer's continued read, in two steps.
        let part = wal.read(next, 3)?;
        let rest = wal.read(next + part.len() as u64, usize::MAX)?;
        let got: Vec<(u64, Vec<u8>)> = part.into_iter().chain(rest).collect();
        let want: Vec<(u64, Vec<u8>)> = (next..appended).map(|s| (s, payload(s))).collect();
        assert_eq!(got, want, "round {round}");
        next = appended;
        // A read elsewhere in the log, as another consumer would make.
        let mid = appended / 2;
        assert_eq!(
            wal.read(mid, 2)?,
            vec![(mid, payload(mid)), (mid + 1, payload(mid + 1))]
        );
    }
    assert!(wal.stats().segments > 3, "the test crossed segments");
    Ok(())
}

/// Records of many sizes in big segments: most frames lie whole in the 256 KiB read buffer and
/// are handed over in place, some straddle a refill (header or payload cut) and are assembled;
/// both paths give exactly what was appended, and a corrupted frame is still refused.
#[test]
fn in_place_reads_match_appends_across_buffer_refills() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = WalConfig {
        segment_bytes: 4 * 1024 * 1024,
        max_bytes: 64 * 1024 * 1024,
        max_record_bytes: 300 * 1024,
        ..WalConfig::test_config()
    };
    let wal = Wal::open(dir.path(), cfg)?;
    let rt = rt();
    // Sizes cycle through tiny, medium and larger-than-the-buffer records.
    let sizes = [1usize, 7, 100, 4_000, 70_000, 1, 250_000, 13, 0, 180_000];
    let payload = |i: usize| -> Vec<u8> {
        let n = sizes[i % sizes.len()] + i % 5;
        (0..n)
            .map(|k| (k as u8).wrapping_mul(31) ^ (i as u8))
            .collect()
    };
    let total = 120;
    for i in 0..total {
        rt.block_on(wal.append(payload(i)))?;
    }
    // Continued reads in uneven steps, each record handed to the callback.
    let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut next = 0u64;
    for step in [1usize, 3, 7, 2, 50, usize::MAX].into_iter().cycle() {
        let n = wal.read_each(next, step, |seq, p| got.push((seq, p.to_vec())))?;
        if n == 0 {
            break;
        }
        next += n as u64;
    }
    assert_eq!(got.len(), total);
    for (i, (seq, p)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        assert_eq!(p, &payload(i), "record {i}");
    }
    // A byte flipped under the open WAL, deep in the first segment (in some record's payload,
    // past the first buffer fill), is reported as corruption by a new read.
    let seg = segment_path(dir.path(), 0);
    let mut bytes = fs::read(&seg)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    fs::write(&seg, &bytes)?;
    let r = wal.read_each(0, usize::MAX, |_, _| ());
    assert!(
        matches!(r, Err(Error::Corrupt { .. })),
        "corruption not reported: {r:?}"
    );
    Ok(())
}

/// Prepared appends handed over together share one group commit (one fsync), keep their order,
/// run their callbacks, and each resolves to its own sequence, across a segment roll too. One
/// prepared and never handed over resolves to `Closed` and leaves nothing behind; a record over
/// the limit is refused when prepared.
#[test]
fn prepared_appends_handed_over_together_share_one_fsync() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rt = rt();
    let wal = Wal::open(dir.path(), WalConfig::test_config())?;
    let called = Arc::new(Mutex::new(Vec::new()));
    let mut batch = Vec::new();
    let mut outcomes = Vec::new();
    // 60 records of ~100 bytes do not fit one 4 KiB segment: the group rolls once.
    for i in 0..60u8 {
        let called = called.clone();
        let (p, fut) = wal.prepare_then(vec![i; 100], move |seq| {
            called.lock().unwrap_or_else(|p| p.into_inner()).push(seq);
        })?;
        batch.push(p);
        outcomes.push(fut);
    }
    let (unsent, never) = wal.prepare_then(b"dropped".to_vec(), |_| {})?;
    drop(unsent);
    let fsyncs = wal.stats().fsyncs;
    rt.block_on(wal.submit_prepared(batch));
    let mut seqs = Vec::new();
    for fut in outcomes {
        seqs.push(rt.block_on(fut)?);
    }
    assert_eq!(seqs, (0..60).collect::<Vec<u64>>());
    // The group's own fsync; a roll inside it syncs the sealed segment first.
    let used = wal.stats().fsyncs - fsyncs;
    assert!(
        (1..=2).contains(&used),
        "one group commit (plus the roll's sync), got {used} fsyncs"
    );
    assert_eq!(*called.lock().unwrap_or_else(|p| p.into_inner()), seqs);
    assert!(matches!(rt.block_on(never), Err(Error::Closed)));
    let recs = all_records(&wal)?;
    assert_eq!(recs.len(), 60);
    for (i, (seq, payload)) in recs.iter().enumerate() {
        assert_eq!((*seq, payload.as_slice()), (i as u64, &[i as u8; 100][..]));
    }
    assert!(matches!(
        wal.prepare_then(vec![0; 64 * 1024 + 1], |_| {}),
        Err(Error::RecordTooLarge { .. })
    ));
    // An empty hand-over is a no-op.
    rt.block_on(wal.submit_prepared(Vec::new()));
    assert!(wal.same_as(&wal.clone()));
    Ok(())
}
