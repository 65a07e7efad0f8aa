//! How every listing command prints (`devices list`, `users list`, `cases list`,
//! `deadletters list`, `models list`, `lake stats`): one `--format table|json|csv` flag, an
//! aligned table for people by default, a JSON array of objects or CSV with a header row for
//! scripts. `query --format` takes the same names (and `arrow`).

use std::io::Write;

use clap::{Args, ValueEnum};

/// A listing's output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns with a header and a count line.
    #[default]
    Table,
    /// A JSON array, one object per row.
    Json,
    /// CSV (RFC 4180) with a header row.
    Csv,
}

/// The output flag of a listing command.
#[derive(Debug, Args)]
pub struct FormatArg {
    /// Output: table (for people), json (an array of objects) or csv (with a header row).
    #[arg(long, value_enum, default_value_t)]
    pub format: ListFormat,
    /// Same as `--format json` (the older flag, kept for scripts).
    #[arg(long, hide = true, conflicts_with = "format")]
    pub json: bool,
}

impl FormatArg {
    /// The format asked for.
    pub fn get(&self) -> ListFormat {
        if self.json {
            ListFormat::Json
        } else {
            self.format
        }
    }
}

/// One listing: the column names, a row of text cells per item (table and CSV), the items as
/// JSON objects (their fields keep their types: numbers stay numbers), and a line the table
/// ends with (a count, a hint).
#[derive(Debug, Default)]
pub struct Listing {
    /// Column names, lower case (the table prints them upper case).
    pub columns: Vec<&'static str>,
    /// One cell per column, per row.
    pub rows: Vec<Vec<String>>,
    /// One object per row, for `--format json`.
    pub objects: Vec<serde_json::Value>,
    /// Printed under the table only (to stderr for json and csv, which must parse).
    pub footer: Option<String>,
}

impl Listing {
    /// A listing with these columns and no rows yet.
    pub fn new(columns: &[&'static str]) -> Self {
        Self {
            columns: columns.to_vec(),
            ..Self::default()
        }
    }

    /// Adds a row: its cells (in column order) and its JSON object.
    pub fn push(&mut self, cells: Vec<String>, object: serde_json::Value) {
        self.rows.push(cells);
        self.objects.push(object);
    }

    /// Writes the listing to stdout in `format`.
    pub fn print(&self, format: ListFormat) -> anyhow::Result<()> {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        self.write(format, &mut out)?;
        out.flush()?;
        drop(out);
        if format != ListFormat::Table
            && let Some(f) = &self.footer
        {
            eprintln!("{f}");
        }
        Ok(())
    }

    /// Writes the listing in `format` (the table's footer included; not the others').
    pub fn write(&self, format: ListFormat, out: &mut impl Write) -> std::io::Result<()> {
        match format {
            ListFormat::Table => {
                let mut widths: Vec<usize> = self.columns.iter().map(|c| c.len()).collect();
                for row in &self.rows {
                    for (w, cell) in widths.iter_mut().zip(row) {
                        *w = (*w).max(cell.chars().count());
                    }
                }
                let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = String>| {
                    let mut text = String::new();
                    for (i, (cell, w)) in cells.zip(&widths).enumerate() {
                        if i > 0 {
                            text.push_str("  ");
                        }
                        text.push_str(&cell);
                        let pad = w.saturating_sub(cell.chars().count());
                        text.extend(std::iter::repeat_n(' ', pad));
                    }
                    writeln!(out, "{}", text.trim_end())
                };
                line(out, &mut self.columns.iter().map(|c| c.to_uppercase()))?;
                for row in &self.rows {
                    line(out, &mut row.iter().cloned())?;
                }
                if let Some(f) = &self.footer {
                    writeln!(out, "{f}")?;
                }
            }
            ListFormat::Json => {
                let text = serde_json::to_string_pretty(&self.objects)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                writeln!(out, "{text}")?;
            }
            ListFormat::Csv => {
                let mut record = |cells: &mut dyn Iterator<Item = &str>| {
                    let fields: Vec<String> = cells.map(csv_field).collect();
                    writeln!(out, "{}", fields.join(","))
                };
                record(&mut self.columns.iter().copied())?;
                for row in &self.rows {
                    record(&mut row.iter().map(String::as_str))?;
                }
            }
        }
        Ok(())
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (quotes doubled).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Listing {
        let mut l = Listing::new(&["device", "enabled", "note"]);
        l.push(
            vec!["pump-1".into(), "true".into(), "a, \"quoted\" note".into()],
            serde_json::json!({"device": "pump-1", "enabled": true}),
        );
        l.push(
            vec!["valve-22".into(), "false".into(), String::new()],
            serde_json::json!({"device": "valve-22", "enabled": false}),
        );
        l.footer = Some("2 devices".into());
        l
    }

    fn text(l: &Listing, f: ListFormat) -> String {
        let mut buf = Vec::new();
        l.write(f, &mut buf).expect("write to a Vec");
        String::from_utf8(buf).expect("utf-8")
    }

    #[test]
    fn a_table_aligns_its_columns_and_ends_with_the_footer() {
        let t = text(&sample(), ListFormat::Table);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "DEVICE    ENABLED  NOTE");
        assert_eq!(lines[1], "pump-1    true     a, \"quoted\" note");
        assert_eq!(lines[2], "valve-22  false");
        assert_eq!(lines[3], "2 devices");
    }

    #[test]
    fn csv_quotes_what_needs_it_and_leaves_out_the_footer() {
        let t = text(&sample(), ListFormat::Csv);
        assert_eq!(
            t,
            "device,enabled,note\npump-1,true,\"a, \"\"quoted\"\" note\"\nvalve-22,false,\n"
        );
    }

    #[test]
    fn json_is_an_array_of_the_objects_with_their_types() {
        let v: serde_json::Value =
            serde_json::from_str(&text(&sample(), ListFormat::Json)).expect("json");
        assert_eq!(v[1]["enabled"], serde_json::json!(false));
        assert_eq!(v.as_array().map(Vec::len), Some(2));
    }
}
