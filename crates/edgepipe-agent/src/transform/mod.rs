//! Per-stream transforms, applied in configuration order to every batch a collector hands the
//! pipeline, before detection and before the queue: filter expressions, deadband
//! (report-by-exception), windowed aggregation, scale/offset, rename and drop.
//!
//! Transforms are pure functions of their input and their own bounded state (last reported value
//! per metric for deadband, one open window per metric for aggregation); they take `now_ms` from
//! the caller and never read a clock. What they remove on purpose is counted as
//! `readings_transformed_away`, never as loss.

use std::collections::HashMap;
use std::time::Duration;

use edgepipe_types::{Metric, Reading, TsSource, Value};
use serde::{Deserialize, Serialize};

use crate::durations::{dur, opt_dur};
use crate::problem::Problem;

/// One transform step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformConfig {
    /// Keep only readings for which `expr` is true. Expressions use `metric`, `value`, `ts`,
    /// numbers, `"strings"`, `true`/`false`, `== != < <= > >=`, `~` (glob match, `*` and `?`),
    /// `&& || !` and parentheses, e.g. `metric ~ "pump*.temp" && value > -40`.
    Filter {
        /// The expression.
        expr: String,
    },
    /// Report by exception: forward a reading only if it differs from the last forwarded value
    /// of its metric by more than `abs` (or `pct` percent of it), or `max_silence` has passed.
    Deadband {
        /// Metric globs this applies to. Default `["*"]`.
        #[serde(default = "all")]
        metrics: Vec<String>,
        /// Absolute threshold. Default 0.
        #[serde(default)]
        abs: f64,
        /// Relative threshold in percent. Default 0.
        #[serde(default)]
        pct: f64,
        /// Forward anyway after this long without a forwarded reading. Default: never.
        #[serde(default, with = "opt_dur")]
        max_silence: Option<Duration>,
    },
    /// Replace readings of matching metrics by per-window aggregates (event-time windows),
    /// emitted as `<metric>.<fn>` at the window's end time once the window closes: when a
    /// reading of a later window arrives, or after the window has been idle for its length.
    Aggregate {
        /// Metric globs this applies to. Default `["*"]`.
        #[serde(default = "all")]
        metrics: Vec<String>,
        /// Window length, aligned to the epoch. Default "10s".
        #[serde(default = "ten_s", with = "dur")]
        window: Duration,
        /// Aggregates to emit. Default `["min", "max", "mean", "count", "last"]`.
        #[serde(default = "all_fns")]
        functions: Vec<AggFn>,
    },
    /// `value * factor + offset` for numeric readings of matching metrics (unit conversion).
    Scale {
        /// Metric globs this applies to. Default `["*"]`.
        #[serde(default = "all")]
        metrics: Vec<String>,
        /// Multiplier. Default 1.
        #[serde(default = "one")]
        factor: f64,
        /// Added after scaling. Default 0.
        #[serde(default)]
        offset: f64,
    },
    /// Rename a metric.
    Rename {
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// Remove readings of matching metrics.
    Drop {
        /// Metric globs.
        metrics: Vec<String>,
    },
}

fn all() -> Vec<String> {
    vec!["*".into()]
}
fn ten_s() -> Duration {
    Duration::from_secs(10)
}
fn one() -> f64 {
    1.0
}
fn all_fns() -> Vec<AggFn> {
    vec![
        AggFn::Min,
        AggFn::Max,
        AggFn::Mean,
        AggFn::Count,
        AggFn::Last,
    ]
}

/// A window aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggFn {
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Arithmetic mean.
    Mean,
    /// Number of readings.
    Count,
    /// Last value.
    Last,
}

impl AggFn {
    fn name(self) -> &'static str {
        match self {
            AggFn::Min => "min",
            AggFn::Max => "max",
            AggFn::Mean => "mean",
            AggFn::Count => "count",
            AggFn::Last => "last",
        }
    }
}

/// Simple glob: `*` any run, `?` one character.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

fn any_glob(globs: &[String], s: &str) -> bool {
    globs.iter().any(|g| glob(g, s))
}

// ---------------------------------------------------------------- filter expressions

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(f64),
    Str(String),
    Op(&'static str),
    LParen,
    RParen,
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'(' {
            out.push(Tok::LParen);
            i += 1;
        } else if c == b')' {
            out.push(Tok::RParen);
            i += 1;
        } else if c == b'"' || c == b'\'' {
            let end = src[i + 1..]
                .find(c as char)
                .ok_or_else(|| format!("unterminated string at offset {i}"))?;
            out.push(Tok::Str(src[i + 1..i + 1 + end].to_string()));
            i += end + 2;
        } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
            let start = i;
            i += 1;
            while i < b.len()
                && (b[i].is_ascii_digit() || matches!(b[i], b'.' | b'e' | b'E' | b'_'))
            {
                i += 1;
            }
            let text = src[start..i].replace('_', "");
            let n: f64 = text
                .parse()
                .map_err(|_| format!("bad number {text:?} at offset {start}"))?;
            out.push(Tok::Num(n));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(src[start..i].to_string()));
        } else {
            let two = src.get(i..i + 2).unwrap_or("");
            let op = ["&&", "||", "==", "!=", "<=", ">="]
                .into_iter()
                .find(|o| *o == two);
            if let Some(op) = op {
                out.push(Tok::Op(op));
                i += 2;
            } else {
                let op = match c {
                    b'<' => "<",
                    b'>' => ">",
                    b'!' => "!",
                    b'~' => "~",
                    _ => return Err(format!("unexpected {:?} at offset {i}", c as char)),
                };
                out.push(Tok::Op(op));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// A compiled filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `metric`.
    Metric,
    /// `value`.
    Value,
    /// `ts`.
    Ts,
    /// A literal.
    Lit(Lit),
    /// `!e`.
    Not(Box<Expr>),
    /// `a && b`.
    And(Box<Expr>, Box<Expr>),
    /// `a || b`.
    Or(Box<Expr>, Box<Expr>),
    /// `a op b`.
    Cmp(&'static str, Box<Expr>, Box<Expr>),
}

/// A literal or evaluated value.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// Number.
    Num(f64),
    /// String.
    Str(String),
    /// Boolean.
    Bool(bool),
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn eat_op(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn or(&mut self, depth: usize) -> Result<Expr, String> {
        let mut e = self.and(depth)?;
        while self.eat_op("||") {
            e = Expr::Or(Box::new(e), Box::new(self.and(depth)?));
        }
        Ok(e)
    }
    fn and(&mut self, depth: usize) -> Result<Expr, String> {
        let mut e = self.not(depth)?;
        while self.eat_op("&&") {
            e = Expr::And(Box::new(e), Box::new(self.not(depth)?));
        }
        Ok(e)
    }
    fn not(&mut self, depth: usize) -> Result<Expr, String> {
        if depth > 64 {
            return Err("expression nested too deeply".into());
        }
        if self.eat_op("!") {
            return Ok(Expr::Not(Box::new(self.not(depth + 1)?)));
        }
        let lhs = self.term(depth)?;
        for op in ["==", "!=", "<=", ">=", "<", ">", "~"] {
            if self.eat_op(op) {
                let rhs = self.term(depth)?;
                return Ok(Expr::Cmp(op_static(op), Box::new(lhs), Box::new(rhs)));
            }
        }
        Ok(lhs)
    }
    fn term(&mut self, depth: usize) -> Result<Expr, String> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        match t {
            Some(Tok::Ident(id)) => match id.as_str() {
                "metric" => Ok(Expr::Metric),
                "value" => Ok(Expr::Value),
                "ts" => Ok(Expr::Ts),
                "true" => Ok(Expr::Lit(Lit::Bool(true))),
                "false" => Ok(Expr::Lit(Lit::Bool(false))),
                other => Err(format!(
                    "unknown name {other:?} (use metric, value, ts, true, false)"
                )),
            },
            Some(Tok::Num(n)) => Ok(Expr::Lit(Lit::Num(n))),
            Some(Tok::Str(s)) => Ok(Expr::Lit(Lit::Str(s))),
            Some(Tok::LParen) => {
                let e = self.or(depth + 1)?;
                match self.toks.get(self.pos) {
                    Some(Tok::RParen) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => Err("missing )".into()),
                }
            }
            Some(t) => Err(format!("unexpected {t:?}")),
            None => Err("unexpected end of expression".into()),
        }
    }
}

fn op_static(op: &str) -> &'static str {
    match op {
        "==" => "==",
        "!=" => "!=",
        "<=" => "<=",
        ">=" => ">=",
        "<" => "<",
        ">" => ">",
        _ => "~",
    }
}

impl Expr {
    /// Parses a filter expression.
    pub fn parse(src: &str) -> Result<Expr, String> {
        let mut p = Parser {
            toks: lex(src)?,
            pos: 0,
        };
        let e = p.or(0)?;
        if p.pos != p.toks.len() {
            return Err(format!(
                "unexpected {:?} after the expression",
                p.toks[p.pos]
            ));
        }
        Ok(e)
    }

    fn eval(&self, r: &Reading) -> Lit {
        match self {
            Expr::Metric => Lit::Str(r.metric.as_str().to_string()),
            Expr::Value => match &r.value {
                Value::Str(s) => Lit::Str(s.clone()),
                Value::Bool(b) => Lit::Bool(*b),
                v => Lit::Num(v.as_f64().unwrap_or(f64::NAN)),
            },
            Expr::Ts => Lit::Num(r.ts as f64),
            Expr::Lit(l) => l.clone(),
            Expr::Not(e) => Lit::Bool(!e.truthy(r)),
            Expr::And(a, b) => Lit::Bool(a.truthy(r) && b.truthy(r)),
            Expr::Or(a, b) => Lit::Bool(a.truthy(r) || b.truthy(r)),
            Expr::Cmp(op, a, b) => {
                let (a, b) = (a.eval(r), b.eval(r));
                let ord = match (&a, &b) {
                    (Lit::Num(x), Lit::Num(y)) => x.partial_cmp(y),
                    (Lit::Str(x), Lit::Str(y)) => Some(x.cmp(y)),
                    (Lit::Bool(x), Lit::Bool(y)) => Some(x.cmp(y)),
                    _ => None,
                };
                use std::cmp::Ordering::*;
                Lit::Bool(match *op {
                    "~" => matches!((&a, &b), (Lit::Str(s), Lit::Str(p)) if glob(p, s)),
                    "==" => ord == Some(Equal),
                    "!=" => ord != Some(Equal),
                    "<" => ord == Some(Less),
                    "<=" => matches!(ord, Some(Less | Equal)),
                    ">" => ord == Some(Greater),
                    _ => matches!(ord, Some(Greater | Equal)),
                })
            }
        }
    }

    /// Whether the expression holds for `r` (a non-boolean result counts as false).
    pub fn truthy(&self, r: &Reading) -> bool {
        matches!(self.eval(r), Lit::Bool(true))
    }
}

// ---------------------------------------------------------------- compiled chain

#[derive(Debug, Clone)]
struct Window {
    start: i64,
    /// Wall time of the last reading added (for closing idle windows).
    touched: i64,
    min: f64,
    max: f64,
    sum: f64,
    count: u64,
    last: f64,
}

#[derive(Debug)]
enum Step {
    Filter(Expr),
    Deadband {
        metrics: Vec<String>,
        abs: f64,
        pct: f64,
        max_silence_ms: Option<i64>,
        last: HashMap<String, (f64, i64)>,
    },
    Aggregate {
        metrics: Vec<String>,
        window_ms: i64,
        functions: Vec<AggFn>,
        open: HashMap<String, Window>,
    },
    Scale {
        metrics: Vec<String>,
        factor: f64,
        offset: f64,
    },
    Rename {
        from: String,
        to: Metric,
    },
    Drop(Vec<String>),
}

/// A stream's compiled transform chain.
#[derive(Debug, Default)]
pub struct Chain {
    steps: Vec<Step>,
}

/// Most distinct metrics one deadband or aggregate step tracks; beyond it new metrics pass
/// through unchanged (bounded memory on hostile input).
const MAX_TRACKED: usize = 100_000;

impl Chain {
    /// Compiles `cfgs`, reporting every problem under `path`.
    pub fn compile(cfgs: &[TransformConfig], path: &str, problems: &mut Vec<Problem>) -> Chain {
        let mut steps = Vec::new();
        for (i, c) in cfgs.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match c {
                TransformConfig::Filter { expr } => match Expr::parse(expr) {
                    Ok(e) => steps.push(Step::Filter(e)),
                    Err(e) => problems.push(Problem::new(format!("{p}.expr"), e)),
                },
                TransformConfig::Deadband {
                    metrics,
                    abs,
                    pct,
                    max_silence,
                } => {
                    if !abs.is_finite() || *abs < 0.0 || !pct.is_finite() || *pct < 0.0 {
                        problems.push(Problem::new(
                            p.clone(),
                            "abs and pct must be finite and not negative",
                        ));
                    }
                    steps.push(Step::Deadband {
                        metrics: metrics.clone(),
                        abs: *abs,
                        pct: *pct,
                        max_silence_ms: max_silence
                            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                        last: HashMap::new(),
                    });
                }
                TransformConfig::Aggregate {
                    metrics,
                    window,
                    functions,
                } => {
                    if window.as_millis() < 1 {
                        problems.push(Problem::new(format!("{p}.window"), "must be at least 1ms"));
                    }
                    if functions.is_empty() {
                        problems.push(Problem::new(format!("{p}.functions"), "must not be empty"));
                    }
                    steps.push(Step::Aggregate {
                        metrics: metrics.clone(),
                        window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1),
                        functions: functions.clone(),
                        open: HashMap::new(),
                    });
                }
                TransformConfig::Scale {
                    metrics,
                    factor,
                    offset,
                } => {
                    if !factor.is_finite() || !offset.is_finite() {
                        problems.push(Problem::new(p.clone(), "factor and offset must be finite"));
                    }
                    steps.push(Step::Scale {
                        metrics: metrics.clone(),
                        factor: *factor,
                        offset: *offset,
                    });
                }
                TransformConfig::Rename { from, to } => match Metric::new(to.as_str()) {
                    Ok(to) => steps.push(Step::Rename {
                        from: from.clone(),
                        to,
                    }),
                    Err(e) => problems.push(Problem::new(format!("{p}.to"), e.to_string())),
                },
                TransformConfig::Drop { metrics } => steps.push(Step::Drop(metrics.clone())),
            }
        }
        Chain { steps }
    }

    /// Whether the chain does nothing.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Runs `input` through every step; windows that closed by `now_ms` are emitted too.
    pub fn apply(&mut self, input: Vec<Reading>, now_ms: i64) -> Vec<Reading> {
        let mut cur = input;
        for step in &mut self.steps {
            cur = step.apply(cur, now_ms);
        }
        cur
    }

    /// Emits windows that closed by `now_ms` (called periodically without input). Readings
    /// emitted by step `i` still pass through the steps after it.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Reading> {
        let mut out: Vec<Reading> = Vec::new();
        for step in &mut self.steps {
            let carried = std::mem::take(&mut out);
            let mut next = if carried.is_empty() {
                Vec::new()
            } else {
                step.apply(carried, now_ms)
            };
            if let Step::Aggregate { .. } = step {
                next.extend(step.close_windows(now_ms));
            }
            out = next;
        }
        out
    }
}

fn num_value(v: &Value) -> Option<f64> {
    match v {
        Value::F64(x) => Some(*x),
        Value::I64(x) => Some(*x as f64),
        _ => None,
    }
}

impl Step {
    fn apply(&mut self, input: Vec<Reading>, now_ms: i64) -> Vec<Reading> {
        match self {
            Step::Filter(e) => input.into_iter().filter(|r| e.truthy(r)).collect(),
            Step::Drop(globs) => input
                .into_iter()
                .filter(|r| !any_glob(globs, r.metric.as_str()))
                .collect(),
            Step::Rename { from, to } => input
                .into_iter()
                .map(|mut r| {
                    if r.metric.as_str() == from {
                        r.metric = to.clone();
                    }
                    r
                })
                .collect(),
            Step::Scale {
                metrics,
                factor,
                offset,
            } => input
                .into_iter()
                .map(|mut r| {
                    if any_glob(metrics, r.metric.as_str())
                        && let Some(x) = num_value(&r.value)
                    {
                        let y = x * *factor + *offset;
                        if y.is_finite() {
                            r.value = Value::F64(y);
                        }
                    }
                    r
                })
                .collect(),
            Step::Deadband {
                metrics,
                abs,
                pct,
                max_silence_ms,
                last,
            } => input
                .into_iter()
                .filter(|r| {
                    if !any_glob(metrics, r.metric.as_str()) {
                        return true;
                    }
                    let Some(x) = r.value.as_f64() else {
                        return true;
                    };
                    let key = r.metric.as_str();
                    let pass = match last.get(key) {
                        None => true,
                        Some(&(prev, at)) => {
                            let d = (x - prev).abs();
                            d > *abs && (*pct <= 0.0 || d > prev.abs() * *pct / 100.0)
                                || max_silence_ms.is_some_and(|s| r.ts - at >= s)
                        }
                    };
                    if pass && (last.len() < MAX_TRACKED || last.contains_key(key)) {
                        last.insert(key.to_string(), (x, r.ts));
                    }
                    pass
                })
                .collect(),
            Step::Aggregate {
                metrics, window_ms, ..
            } => {
                let (window_ms, globs) = (*window_ms, metrics.clone());
                let mut out = Vec::new();
                for r in input {
                    let x = num_value(&r.value);
                    let Some(x) = x.filter(|_| any_glob(&globs, r.metric.as_str())) else {
                        out.push(r);
                        continue;
                    };
                    let start = r.ts.div_euclid(window_ms) * window_ms;
                    let key = r.metric.as_str().to_string();
                    let Step::Aggregate { open, .. } = self else {
                        continue;
                    };
                    if let Some(w) = open.get(&key)
                        && w.start != start
                    {
                        // A reading from another window closes the open one.
                        let w = w.clone();
                        open.remove(&key);
                        out.extend(self.emit(&key, &w));
                    }
                    let Step::Aggregate { open, .. } = self else {
                        continue;
                    };
                    if open.len() >= MAX_TRACKED && !open.contains_key(&key) {
                        out.push(r);
                        continue;
                    }
                    let w = open.entry(key).or_insert(Window {
                        start,
                        touched: now_ms,
                        min: f64::INFINITY,
                        max: f64::NEG_INFINITY,
                        sum: 0.0,
                        count: 0,
                        last: x,
                    });
                    w.min = w.min.min(x);
                    w.max = w.max.max(x);
                    w.sum += x;
                    w.count += 1;
                    w.last = x;
                    w.touched = now_ms;
                }
                out
            }
        }
    }

    fn close_windows(&mut self, now_ms: i64) -> Vec<Reading> {
        let Step::Aggregate {
            window_ms, open, ..
        } = self
        else {
            return Vec::new();
        };
        let w_ms = *window_ms;
        // A window closes when a reading of a later window arrives (in `apply`), or here once
        // its end has passed and it has been idle for one window length of wall time, so
        // backfilled data is aggregated by event time and a stopped stream still flushes.
        let closed: Vec<(String, Window)> = open
            .iter()
            .filter(|(_, w)| {
                w.start.saturating_add(w_ms) <= now_ms && now_ms.saturating_sub(w.touched) >= w_ms
            })
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect();
        let mut out = Vec::new();
        for (k, w) in closed {
            if let Step::Aggregate { open, .. } = self {
                open.remove(&k);
            }
            out.extend(self.emit(&k, &w));
        }
        out
    }

    fn emit(&self, metric: &str, w: &Window) -> Vec<Reading> {
        let Step::Aggregate {
            window_ms,
            functions,
            ..
        } = self
        else {
            return Vec::new();
        };
        let ts = w.start.saturating_add(*window_ms);
        functions
            .iter()
            .filter_map(|f| {
                let value = match f {
                    AggFn::Min => Value::F64(w.min),
                    AggFn::Max => Value::F64(w.max),
                    AggFn::Mean => Value::F64(w.sum / w.count.max(1) as f64),
                    AggFn::Count => Value::I64(i64::try_from(w.count).unwrap_or(i64::MAX)),
                    AggFn::Last => Value::F64(w.last),
                };
                Some(Reading {
                    metric: Metric::new(format!("{metric}.{}", f.name())).ok()?,
                    ts,
                    value,
                    ts_source: TsSource::Device,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
