//! `type = "file"`: tails a CSV or JSON-lines file and survives rotation.
//!
//! The collector reads whole lines, hands them to the pipeline with its position (`inode`,
//! `offset` after the last complete line), and waits until they are durable before reading on.
//! The position is stored in the same queue record as the readings, so after a crash the tail
//! resumes exactly after the last stored line: no line twice, none skipped. Rotation: when the
//! path names a new inode, the old file is read to its end first, then the new one from its
//! start; a file truncated in place (copytruncate) is read again from its start.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::lines::{LineFormat, LineParser};
use super::{Ctx, Error};
use crate::durations::dur;

/// `type = "file"` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file to tail.
    pub path: PathBuf,
    /// `jsonl` (default) or `csv`.
    #[serde(default)]
    pub format: LineFormat,
    /// Where to start a file never read before: `beginning` (default) or `end`.
    #[serde(default)]
    pub start_at: StartAt,
    /// How often to look for new data and rotation. Default "250ms".
    #[serde(default = "poll", with = "dur")]
    pub poll_interval: Duration,
    /// Most lines handed over at once. Default 1000.
    #[serde(default = "max_lines")]
    pub max_lines: usize,
}

fn poll() -> Duration {
    Duration::from_millis(250)
}
fn max_lines() -> usize {
    1000
}

/// Where a new file is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// From its first byte.
    #[default]
    Beginning,
    /// From its current end.
    End,
}

struct Open {
    file: tokio::fs::File,
    ino: u64,
    offset: u64,
}

async fn open(path: &PathBuf) -> Option<(tokio::fs::File, u64, u64)> {
    let file = tokio::fs::File::open(path).await.ok()?;
    let md = file.metadata().await.ok()?;
    Some((file, md.ino(), md.len()))
}

/// Runs the tail until cancelled.
pub async fn run(cfg: FileConfig, ctx: Ctx) -> Result<(), Error> {
    let (k_ino, k_off) = (ctx.key("inode"), ctx.key("offset"));
    let mut parser = LineParser::new(cfg.format);
    let mut cur: Option<Open> = None;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        if cur.is_none() {
            if let Some((mut file, ino, len)) = open(&cfg.path).await {
                let saved = (ctx.positions.get(&k_ino), ctx.positions.get(&k_off));
                let offset = match saved {
                    (Some(&i), Some(&o)) if i == ino && o <= len => o,
                    (Some(_), _) => 0,
                    _ if cfg.start_at == StartAt::End => len,
                    _ => 0,
                };
                if file.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                    if cfg.format == LineFormat::Csv && offset > 0 {
                        parser = header_of(&cfg, parser).await;
                    }
                    buf.clear();
                    cur = Some(Open { file, ino, offset });
                }
            }
            if cur.is_none() {
                sleep_or_cancel(&ctx, cfg.poll_interval).await;
                continue;
            }
        }
        let Some(o) = cur.as_mut() else { continue };
        // Complete lines already buffered go first; read only when none is left.
        let n = if buf.contains(&b'\n') {
            0
        } else {
            let mut chunk = vec![0u8; 64 * 1024];
            let n = o
                .file
                .read(&mut chunk)
                .await
                .map_err(Error::io(&cfg.path))?;
            buf.extend_from_slice(&chunk[..n]);
            n
        };
        if buf.contains(&b'\n') {
            let mut readings = Vec::new();
            let mut consumed = 0usize;
            let mut lines = 0usize;
            while let Some(nl) = buf[consumed..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&buf[consumed..consumed + nl]).into_owned();
                consumed += nl + 1;
                lines += 1;
                match parser.parse(&line, ctx.clock.now_ms()) {
                    Ok(rs) => readings.extend(rs),
                    Err(e) => {
                        tracing::warn!(collector = %ctx.name, error = %e, "line refused");
                        ctx.metrics.reject("file_parse", 1);
                    }
                }
                if lines >= cfg.max_lines {
                    break;
                }
            }
            if consumed > 0 {
                let offset = o.offset + consumed as u64;
                ctx.send_durable(
                    readings,
                    vec![(k_ino.clone(), o.ino), (k_off.clone(), offset)],
                )
                .await?;
                o.offset = offset;
                buf.drain(..consumed);
            }
            continue;
        }
        if n > 0 {
            // A partial line: wait for the rest.
            continue;
        }
        // At the end of the open file: rotated, truncated, or just no new data?
        let now = tokio::fs::metadata(&cfg.path).await.ok();
        match now {
            Some(md) if md.ino() != o.ino => {
                // Lines the writer added to the old file just before renaming it come first.
                let before = o.offset + buf.len() as u64;
                let mut tail = [0u8; 1];
                let extra = o.file.read(&mut tail).await.map_err(Error::io(&cfg.path))?;
                if extra > 0 {
                    o.file
                        .seek(std::io::SeekFrom::Start(before))
                        .await
                        .map_err(Error::io(&cfg.path))?;
                    continue;
                }
                tracing::info!(collector = %ctx.name, "file rotated; continuing with the new one");
                cur = None;
                parser = LineParser::new(cfg.format);
                let (file, ino, _) = match open(&cfg.path).await {
                    Some(x) => x,
                    None => continue,
                };
                buf.clear();
                ctx.send_durable(Vec::new(), vec![(k_ino.clone(), ino), (k_off.clone(), 0)])
                    .await?;
                cur = Some(Open {
                    file,
                    ino,
                    offset: 0,
                });
            }
            Some(md) if md.len() < o.offset => {
                tracing::info!(collector = %ctx.name, "file truncated; reading from its start");
                o.file
                    .seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(Error::io(&cfg.path))?;
                o.offset = 0;
                buf.clear();
            }
            _ => sleep_or_cancel(&ctx, cfg.poll_interval).await,
        }
    }
}

/// A CSV parser that has seen the file's header row (resuming mid-file after a restart).
async fn header_of(cfg: &FileConfig, mut parser: LineParser) -> LineParser {
    if let Ok(text) = tokio::fs::read(&cfg.path).await {
        let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let _ = parser.parse(&String::from_utf8_lossy(first), 0);
    }
    parser
}

pub(crate) async fn sleep_or_cancel(ctx: &Ctx, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = ctx.cancel.cancelled() => {}
    }
}
