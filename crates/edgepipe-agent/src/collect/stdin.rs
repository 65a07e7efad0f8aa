//! `type = "stdin"`: CSV or JSON lines on standard input, until end of input.

use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;

use super::lines::{LineFormat, LineParser};
use super::{Ctx, Error};

/// `type = "stdin"` settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinConfig {
    /// `jsonl` (default) or `csv`.
    #[serde(default)]
    pub format: LineFormat,
}

/// Reads standard input line by line; each line is durable before the next is read.
pub async fn run(cfg: StdinConfig, ctx: Ctx) -> Result<(), Error> {
    let mut parser = LineParser::new(cfg.format);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            l = lines.next_line() => l.map_err(Error::io("stdin"))?,
            _ = ctx.cancel.cancelled() => return Ok(()),
        };
        let Some(line) = line else { return Ok(()) };
        match parser.parse(&line, ctx.clock.now_ms()) {
            Ok(rs) if rs.is_empty() => {}
            Ok(rs) => ctx.send_durable(rs, Vec::new()).await?,
            Err(e) => {
                tracing::warn!(collector = %ctx.name, error = %e, "line refused");
                ctx.metrics.reject("stdin_parse", 1);
            }
        }
    }
}
