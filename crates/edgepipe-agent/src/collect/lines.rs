//! Line formats shared by the file and stdin collectors: JSON lines (one edgepipe reading object
//! per line, `{"ts": ..., "metrics": {...}}`) and CSV with a header row (a `ts` column in ms
//! since the epoch, optional, and one column per metric).

use edgepipe_protocol::Limits;
use edgepipe_types::{Metric, Reading, TsSource, Value};
use serde::{Deserialize, Serialize};

/// A line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// One JSON reading object per line.
    #[default]
    Jsonl,
    /// CSV with a header row.
    Csv,
}

/// Parses lines of one format; CSV remembers its header.
#[derive(Debug, Default)]
pub struct LineParser {
    format: LineFormat,
    header: Option<Vec<String>>,
    limits: Limits,
}

impl LineParser {
    /// A parser for `format`; CSV starts expecting a header row.
    pub fn new(format: LineFormat) -> Self {
        Self {
            format,
            header: None,
            limits: Limits::default(),
        }
    }

    /// Parses one line (without its newline). Blank lines and the CSV header give no readings.
    pub fn parse(&mut self, line: &str, now_ms: i64) -> Result<Vec<Reading>, String> {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            return Ok(Vec::new());
        }
        match self.format {
            LineFormat::Jsonl => {
                edgepipe_protocol::decode_payload(line.as_bytes(), now_ms, &self.limits)
                    .map(|d| d.readings)
                    .map_err(|e| e.to_string())
            }
            LineFormat::Csv => {
                let cells: Vec<&str> = line.split(',').map(str::trim).collect();
                let Some(header) = &self.header else {
                    for c in &cells {
                        if *c != "ts" {
                            Metric::new(*c).map_err(|e| e.to_string())?;
                        }
                    }
                    self.header = Some(cells.iter().map(|c| c.to_string()).collect());
                    return Ok(Vec::new());
                };
                if cells.len() != header.len() {
                    return Err(format!(
                        "{} cells, the header has {}",
                        cells.len(),
                        header.len()
                    ));
                }
                let mut ts = None;
                for (h, c) in header.iter().zip(&cells) {
                    if h == "ts" {
                        ts = Some(c.parse::<i64>().map_err(|_| format!("bad ts {c:?}"))?);
                    }
                }
                let (ts, ts_source) = match ts {
                    Some(t) => (t, TsSource::Device),
                    None => (now_ms, TsSource::Server),
                };
                let mut out = Vec::new();
                for (h, c) in header.iter().zip(&cells) {
                    if h == "ts" || c.is_empty() {
                        continue;
                    }
                    let value = if let Ok(i) = c.parse::<i64>() {
                        Value::I64(i)
                    } else if let Ok(f) = c.parse::<f64>() {
                        if !f.is_finite() {
                            return Err(format!("{h}: {c:?} is not finite"));
                        }
                        Value::F64(f)
                    } else if let Ok(b) = c.parse::<bool>() {
                        Value::Bool(b)
                    } else {
                        Value::Str(c.to_string())
                    };
                    out.push(Reading {
                        metric: Metric::new(h.as_str()).map_err(|e| e.to_string())?,
                        ts,
                        value,
                        ts_source,
                    });
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_header() {
        let mut p = LineParser::new(LineFormat::Csv);
        assert_eq!(p.parse("ts,temp,state", 5), Ok(vec![]));
        let r = p.parse("1700000000000,21.5,ok", 5).unwrap_or_default();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].value, Value::F64(21.5));
        assert_eq!(r[1].value, Value::Str("ok".into()));
        assert!(p.parse("1,2", 5).is_err());
        assert!(p.parse("x,1,2", 5).is_err());
        assert!(LineParser::new(LineFormat::Csv).parse("ts,a b", 5).is_err());
    }

    #[test]
    fn json_lines() {
        let mut p = LineParser::new(LineFormat::Jsonl);
        let r = p
            .parse(
                r#"{"ts": 1700000000000, "metrics": {"a": 1}}"#,
                1_700_000_000_000,
            )
            .unwrap_or_default();
        assert_eq!(r.len(), 1);
        assert!(p.parse("{nope", 5).is_err());
        assert_eq!(p.parse("   ", 5), Ok(vec![]));
    }
}
