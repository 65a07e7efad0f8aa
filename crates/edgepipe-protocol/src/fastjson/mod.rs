//! The fast path of the JSON reading format: the shapes devices send nearly always
//! (`{"ts":1700000000123,"metrics":{"temp":21.5}}`, or an array of such objects) decoded
//! straight from the bytes into readings, without building a [`Node`](crate::json) tree.
//!
//! It only ever answers `Some` with exactly what the general decoder
//! ([`json::parse`](crate::json::parse) then [`json::decode_document`](crate::json)) returns for
//! the same input. Whatever it does not handle itself, it gives up on (`None`) and the general
//! decoder decides, with its error messages: a key or string with an escape, an unknown field,
//! `null`, nested values, a number it would have to round differently, any syntax error, any
//! limit exceeded. A property test compares the two on generated documents.

use edgepipe_types::{DeviceId, Metric, Reading, TsSource, Value};

use crate::Limits;
use crate::validate::{check_str, check_ts, smallest_duplicate};

/// Decodes `bytes` (a reading object or an array of them) when it is one of the plain shapes;
/// `None` hands the document to the general decoder.
pub(crate) fn decode(
    bytes: &[u8],
    now_ms: i64,
    limits: &Limits,
    device: Option<&DeviceId>,
    already: usize,
) -> Option<Vec<Reading>> {
    let mut c = Cursor { b: bytes, i: 0 };
    let mut out = Vec::new();
    let cx = Context {
        now_ms,
        limits,
        device,
        already,
    };
    c.ws();
    match c.peek()? {
        b'{' => {
            c.i += 1;
            c.object(&cx, &mut out)?;
        }
        b'[' => {
            c.i += 1;
            c.ws();
            loop {
                if c.peek()? != b'{' {
                    return None;
                }
                c.i += 1;
                c.object(&cx, &mut out)?;
                c.ws();
                match c.peek()? {
                    b',' => {
                        c.i += 1;
                        c.ws();
                    }
                    b']' => {
                        c.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        _ => return None,
    }
    c.ws();
    (c.i == bytes.len()).then_some(out)
}

struct Context<'l> {
    now_ms: i64,
    limits: &'l Limits,
    device: Option<&'l DeviceId>,
    already: usize,
}

/// A number as the general decoder would type it.
enum Num {
    I64(i64),
    F64(f64),
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// After an object member: consumes `,` (false: another member follows) or `}` (true: the
    /// object ends); anything else is not a plain document.
    fn object_member_end(&mut self) -> Option<bool> {
        self.ws();
        let end = match self.peek()? {
            b',' => false,
            b'}' => true,
            _ => return None,
        };
        self.i += 1;
        Some(end)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\r' | b'\n') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// A string without escapes or control characters, after its opening quote was seen at
    /// the cursor; the cursor ends past the closing quote.
    fn plain_str(&mut self) -> Option<&'a str> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let len = self.b.get(start..)?.iter().position(|b| *b == b'"')?;
        let raw = &self.b[start..start + len];
        // An escape (the quote found may be escaped) or a raw control character: general path.
        if raw.iter().any(|b| *b == b'\\' || *b < 0x20) {
            return None;
        }
        self.i = start + len + 1;
        std::str::from_utf8(raw).ok()
    }

    /// A JSON number, typed as the general decoder types it; `None` for the few it would
    /// type otherwise than plainly (`-0`, integers beyond `i64`) and for anything malformed.
    fn number(&mut self) -> Option<Num> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let int_start = self.i;
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.i += 1;
                }
            }
            _ => return None,
        }
        let int_end = self.i;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits()?;
            float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits()?;
            float = true;
        }
        let text = &self.b[start..self.i];
        // Exact (correctly rounded), as the general decoder's `float_roundtrip` parse. The
        // text was checked above to be ASCII digits, signs, dots and exponents.
        let as_float = || {
            let v: f64 = std::str::from_utf8(text).ok()?.parse().ok()?;
            v.is_finite().then_some(Num::F64(v))
        };
        if float {
            return as_float();
        }
        // The general decoder's typing: `-0` and integers beyond `i64` (below `i64::MIN`, or
        // above `u64::MAX`) are floats; those in (i64::MAX, u64::MAX] are out of range, which
        // it reports.
        let magnitude = self.b[int_start..int_end].iter().try_fold(0u64, |m, d| {
            m.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        match magnitude.ok_or(()) {
            Ok(0) if negative => as_float(),
            Ok(m) if negative && m <= 1 << 63 => Some(Num::I64((m as i64).wrapping_neg())),
            Ok(_) if negative => as_float(),
            Ok(m) => i64::try_from(m).ok().map(Num::I64),
            Err(_) => as_float(),
        }
    }

    fn digits(&mut self) -> Option<()> {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        (self.i > start).then_some(())
    }

    /// One reading object's body, after its `{`: `ts`, `metrics` and `device_id`, each at most
    /// once, in any order. Its readings are appended to `out`.
    fn object(&mut self, cx: &Context<'_>, out: &mut Vec<Reading>) -> Option<()> {
        let first = out.len();
        let mut ts: Option<i64> = None;
        let mut seen_metrics = false;
        let mut seen_device = false;
        self.ws();
        if self.peek()? == b'}' {
            // No metrics: the general decoder names what is missing.
            return None;
        }
        loop {
            self.ws();
            let key = self.plain_str()?;
            self.eat(b':')?;
            self.ws();
            match key {
                "ts" if ts.is_none() => match self.number()? {
                    Num::I64(v) => ts = Some(v),
                    Num::F64(_) => return None,
                },
                "metrics" if !seen_metrics => {
                    seen_metrics = true;
                    self.metrics(cx, out)?;
                }
                "device_id" if !seen_device => {
                    seen_device = true;
                    let declared = self.plain_str()?;
                    if cx.device.is_some_and(|d| d.as_str() != declared) {
                        return None;
                    }
                }
                _ => return None,
            }
            if self.object_member_end()? {
                break;
            }
        }
        if !seen_metrics {
            return None;
        }
        let (ts, ts_source) = match ts {
            Some(ts) => {
                check_ts(ts, cx.now_ms, cx.limits).ok()?;
                (ts, TsSource::Device)
            }
            None => (cx.now_ms, TsSource::Server),
        };
        for r in &mut out[first..] {
            r.ts = ts;
            r.ts_source = ts_source;
        }
        Some(())
    }

    /// A `metrics` object: at least one entry, names valid and distinct, values numbers,
    /// booleans or strings within the limits. Readings are pushed with a placeholder time the
    /// caller fills in.
    fn metrics(&mut self, cx: &Context<'_>, out: &mut Vec<Reading>) -> Option<()> {
        if self.peek()? != b'{' {
            return None;
        }
        self.i += 1;
        let first = out.len();
        loop {
            self.ws();
            let name = self.plain_str()?;
            self.eat(b':')?;
            self.ws();
            let value = match self.peek()? {
                b'"' => {
                    let s = self.plain_str()?;
                    check_str(String::new, s, cx.limits).ok()?;
                    Value::Str(s.to_owned())
                }
                b't' => {
                    self.literal(b"true")?;
                    Value::Bool(true)
                }
                b'f' => {
                    self.literal(b"false")?;
                    Value::Bool(false)
                }
                _ => match self.number()? {
                    Num::I64(v) => Value::I64(v),
                    Num::F64(v) => Value::F64(v),
                },
            };
            if cx.already.saturating_add(out.len()) >= cx.limits.max_readings_per_message {
                return None;
            }
            out.push(Reading {
                metric: Metric::new(name).ok()?,
                ts: 0,
                value,
                ts_source: TsSource::Device,
            });
            if self.object_member_end()? {
                break;
            }
        }
        // Duplicate names are refused by the general decoder.
        smallest_duplicate(&out[first..], |r| r.metric.as_str())
            .is_none()
            .then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }
}

#[cfg(test)]
mod tests;
