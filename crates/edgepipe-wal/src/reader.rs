//! Reading: sequential readers over durable records, named consumers with durable
//! checkpoints, and the retention their checkpoints drive.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};

use crate::Wal;
use crate::checkpoint::{valid_consumer_name, write_checkpoint};
use crate::error::{Error, Result, io_err};
use crate::format::{
    Bounded, Frame, OpenSegment, SEGMENT_HEADER_LEN, Segment, fsync_dir, read_frame,
};

/// Most readers [`Wal::read`] and [`Wal::read_each`] keep open (one per consumer is the common case).
const READ_CACHE: usize = 8;

impl Wal {
    /// Next sequence number to be durable: every record below it can be read.
    pub fn durable_end(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    /// Waits until the durable end is greater than `seq` (a record at `seq` is readable), or the
    /// WAL closes.
    pub async fn wait_beyond(&self, seq: u64) -> Result<u64> {
        let mut rx = self.shared.durable.subscribe();
        loop {
            let end = *rx.borrow_and_update();
            if end > seq {
                return Ok(end);
            }
            if rx.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    /// Like [`wait_beyond`](Self::wait_beyond), but returns no sooner than `not_before`: a
    /// consumer that read at `t` and passes `t + interval` reads a busy WAL in batches, at most
    /// once per interval, instead of once per group commit.
    pub async fn wait_beyond_no_sooner(
        &self,
        seq: u64,
        not_before: std::time::Instant,
    ) -> Result<u64> {
        let end = self.wait_beyond(seq).await?;
        tokio::time::sleep_until(tokio::time::Instant::from_std(not_before)).await;
        Ok(end)
    }

    /// Reads up to `max` durable records starting at `from`. A call that starts where an
    /// earlier one stopped continues in that call's open segment file (cost proportional to
    /// what it reads, not to the position in the segment).
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        self.read_each(from, max, |seq, payload| out.push((seq, payload.to_vec())))?;
        Ok(out)
    }

    /// Like [`read`](Self::read), but hands each record to `f` in place (no allocation or copy
    /// per record: the consumers' hot path). Returns how many records were handed over.
    pub fn read_each(&self, from: u64, max: usize, mut f: impl FnMut(u64, &[u8])) -> Result<usize> {
        let mut reader = self.reader(from)?;
        {
            let mut cache = self
                .shared
                .read_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(i) = cache.iter().position(|(next, _)| *next == from) {
                reader.current = cache.swap_remove(i).1;
            }
        }
        let mut scratch = Vec::new();
        let mut n = 0;
        while n < max {
            match reader.next_with(&mut scratch, &mut f)? {
                Some(()) => n += 1,
                None => break,
            }
        }
        let mut cache = self
            .shared
            .read_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if cache.len() >= READ_CACHE {
            cache.remove(0);
        }
        cache.push((reader.next, reader.current.take()));
        Ok(n)
    }

    /// A sequential reader positioned at `from` (it reads up to the durable end at each call).
    pub fn reader(&self, from: u64) -> Result<Reader> {
        let oldest = self
            .shared
            .lock()
            .segments
            .first()
            .map_or(0, |s| s.first_seq);
        if from < oldest {
            return Err(Error::Truncated {
                requested: from,
                oldest,
            });
        }
        Ok(Reader {
            wal: self.clone(),
            next: from,
            current: None,
        })
    }

    /// Registers (or reopens) the named consumer; a new one starts at the oldest retained record.
    pub fn consumer(&self, name: &str) -> Result<Consumer> {
        if !valid_consumer_name(name) {
            return Err(Error::InvalidConsumer(name.to_string()));
        }
        let mut st = self.shared.lock();
        let pos = match st.consumers.get(name) {
            Some(p) => *p,
            None => {
                let start = st.segments.first().map_or(0, |s| s.first_seq);
                write_checkpoint(&self.shared.dir, name, start)?;
                st.consumers.insert(name.to_string(), start);
                start
            }
        };
        // Gaps from drop-oldest can leave a checkpoint below the oldest segment.
        let oldest = st.segments.first().map_or(0, |s| s.first_seq);
        Ok(Consumer {
            wal: self.clone(),
            name: name.to_string(),
            position: pos.max(oldest),
        })
    }

    /// Unregisters a consumer so it no longer holds back retention.
    pub fn remove_consumer(&self, name: &str) -> Result<()> {
        let path = self
            .shared
            .dir
            .join("consumers")
            .join(format!("{name}.ckpt"));
        let mut st = self.shared.lock();
        st.consumers.remove(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        drop(st);
        self.apply_retention()
    }

    /// Names and checkpoints of registered consumers.
    pub fn consumers(&self) -> BTreeMap<String, u64> {
        self.shared.lock().consumers.clone()
    }

    /// Deletes closed segments every consumer has passed.
    fn apply_retention(&self) -> Result<()> {
        let doomed: Vec<Segment> = {
            let mut st = self.shared.lock();
            let Some(min) = st.consumers.values().copied().min() else {
                return Ok(());
            };
            let mut doomed = Vec::new();
            while st.segments.len() > 1 && st.segments[0].end_seq <= min {
                doomed.push(st.segments.remove(0));
            }
            doomed
        };
        for s in &doomed {
            fs::remove_file(&s.path).map_err(io_err(&s.path))?;
        }
        if !doomed.is_empty() {
            fsync_dir(&self.shared.dir.join("segments"))?;
        }
        Ok(())
    }
}

/// A sequential reader over durable records.
#[derive(Debug)]
pub struct Reader {
    wal: Wal,
    next: u64,
    current: Option<OpenSegment>,
}

impl Reader {
    /// Sequence of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next durable record, or `None` when the reader is at the durable end.
    pub fn next_record(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        let mut scratch = Vec::new();
        self.next_with(&mut scratch, |seq, payload| (seq, payload.to_vec()))
    }

    /// Hands the next durable record to `f` as `(seq, payload)` without copying it out of the
    /// read buffer (`scratch` holds the rare record that straddles a buffer refill; reuse it).
    /// `None` when the reader is at the durable end.
    pub fn next_with<R>(
        &mut self,
        scratch: &mut Vec<u8>,
        f: impl FnOnce(u64, &[u8]) -> R,
    ) -> Result<Option<R>> {
        if self.next >= self.wal.durable_end() {
            return Ok(None);
        }
        loop {
            if self.current.is_none() {
                let seg = {
                    let st = self.wal.shared.lock();
                    let oldest = st.segments.first().map_or(0, |s| s.first_seq);
                    if self.next < oldest {
                        return Err(Error::Truncated {
                            requested: self.next,
                            oldest,
                        });
                    }
                    st.segments
                        .iter()
                        .find(|s| {
                            s.first_seq <= self.next && self.next < s.end_seq.max(s.first_seq + 1)
                        })
                        .cloned()
                };
                let Some(seg) = seg else { return Ok(None) };
                let file = File::open(&seg.path).map_err(io_err(&seg.path))?;
                let mut r = BufReader::with_capacity(
                    256 * 1024,
                    Bounded {
                        file,
                        pos: 0,
                        limit: seg.bytes,
                    },
                );
                r.seek(SeekFrom::Start(SEGMENT_HEADER_LEN as u64))
                    .map_err(io_err(&seg.path))?;
                let mut seq = seg.first_seq;
                // Skip to `next`.
                let max = self.wal.shared.config.max_record_bytes;
                while seq < self.next {
                    match read_frame(&mut r, max, seq, scratch, |_, _| ())
                        .map_err(io_err(&seg.path))?
                    {
                        Frame::Record(()) => seq += 1,
                        Frame::End => return Ok(None),
                        Frame::Bad(reason) => {
                            return Err(Error::Corrupt {
                                path: seg.path.clone(),
                                offset: 0,
                                reason,
                            });
                        }
                    }
                }
                self.current = Some((seg.first_seq, r, seg.path));
            }
            // At the end of what this segment held when last looked at: read on if it holds
            // more records now, move on if a later segment starts here, otherwise stay on the
            // active segment for the next call.
            let Some((first, r, path)) = self.current.as_mut() else {
                return Ok(None);
            };
            if r.fill_buf().map_err(io_err(path))?.is_empty() {
                let (grown, more) = {
                    let st = self.wal.shared.lock();
                    let grown = st
                        .segments
                        .iter()
                        .find(|s| s.first_seq == *first)
                        .map(|s| s.bytes)
                        .filter(|b| *b > r.get_ref().limit);
                    (grown, st.segments.iter().any(|s| s.first_seq == self.next))
                };
                if let Some(bytes) = grown {
                    r.get_mut().limit = bytes;
                    continue;
                }
                if !more {
                    return Ok(None);
                }
                self.current = None;
                continue;
            }
            let max = self.wal.shared.config.max_record_bytes;
            return match read_frame(r, max, self.next, scratch, f).map_err(io_err(path))? {
                Frame::Record(out) => {
                    self.next += 1;
                    Ok(Some(out))
                }
                // Not reached: the buffer was just seen non-empty.
                Frame::End => Ok(None),
                // Could be a record still being written past the durable end; the durable
                // check above rules that out, so this is corruption.
                Frame::Bad(reason) => Err(Error::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason,
                }),
            };
        }
    }
}

/// A named consumer with a durable checkpoint.
#[derive(Debug)]
pub struct Consumer {
    wal: Wal,
    name: String,
    position: u64,
}

impl Consumer {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The checkpointed position: the next sequence this consumer has not processed.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// A reader starting at the checkpoint.
    pub fn reader(&self) -> Result<Reader> {
        self.wal.reader(self.position)
    }

    /// Durably records that every record below `next_seq` is processed. When this returns, a
    /// restart resumes at `next_seq`; segments every consumer has passed are deleted.
    pub fn commit(&mut self, next_seq: u64) -> Result<()> {
        let end = self.wal.durable_end();
        let next_seq = next_seq.min(end);
        write_checkpoint(&self.wal.shared.dir, &self.name, next_seq)?;
        self.position = next_seq;
        self.wal
            .shared
            .lock()
            .consumers
            .insert(self.name.clone(), next_seq);
        self.wal.apply_retention()
    }
}
