//! The sort engine: `readings` rows ordered by (hour, device_id, metric, ts, wal_seq), for the
//! lake writer's flushes ([`sort_runs`], keeping the id columns as runs) and compaction's merge
//! rounds ([`sort_readings`]). A leaf: it uses neither the writer nor the compactor.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, PrimitiveArray, RecordBatch, StringArray,
    TimestampMicrosecondArray, new_null_array,
};
use arrow::buffer::BooleanBuffer;
use arrow::compute::interleave;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Float64Type, Int64Type, SchemaRef, TimeUnit,
    TimestampMicrosecondType,
};

use crate::column::Column;
use crate::schema::{COL_TS, HOUR_US, readings_schema};
use crate::{Error, Result};

/// Interns strings to dense ids, remembering where the last one was found: ids of a WAL batch
/// come in runs (a record's device) and cycles (its metrics), so the next lookup is usually a
/// hit on the same or the following id, without hashing.
struct Interner<'a> {
    ids: std::collections::HashMap<&'a str, u32>,
    distinct: Vec<&'a str>,
    last: usize,
}

impl<'a> Interner<'a> {
    fn new() -> Self {
        Self {
            ids: std::collections::HashMap::new(),
            distinct: Vec::new(),
            last: 0,
        }
    }

    fn id(&mut self, v: &'a str) -> u32 {
        for probe in [self.last, self.last + 1, 0] {
            if self.distinct.get(probe) == Some(&v) {
                self.last = probe;
                return probe as u32;
            }
        }
        let next = self.distinct.len() as u32;
        let id = *self.ids.entry(v).or_insert(next);
        if id == next {
            self.distinct.push(v);
        }
        self.last = id as usize;
        id
    }

    /// Each id's rank among the distinct values in byte order.
    fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.distinct.len() as u32).collect();
        order.sort_unstable_by(|a, b| self.distinct[*a as usize].cmp(self.distinct[*b as usize]));
        let mut rank = vec![0u32; self.distinct.len()];
        for (r, id) in order.iter().enumerate() {
            rank[*id as usize] = r as u32;
        }
        rank
    }
}

/// Sorts `readings` rows (of any number of batches of one schema) into one batch ordered by
/// hour bucket, device_id, metric, ts, wal_seq; rows equal on all five keep their input order.
///
/// Sorting compares nothing per row in the usual case: device and metric are interned to ranks,
/// rows are placed by a counting sort on (hour, device, metric) and each series' run is only
/// sorted on (ts, wal_seq) when it is not already in order (WAL order is nearly time order).
/// The output is gathered from the input batches in one pass (no concatenation first).
pub(crate) fn sort_readings(batches: &[RecordBatch]) -> Result<RecordBatch> {
    if batches.is_empty() {
        return Ok(RecordBatch::new_empty(readings_schema()));
    }
    sort_runs(batches)?.into_batch()
}

/// Readings sorted by [`sort_runs`]: each column Arrow arrays, or, for the string columns that
/// come in runs (`device_id`, `metric`; any string column holding one value), the runs, so the
/// flush writes them without per-row work (see [`crate::runs`]).
pub(crate) struct Sorted<'a> {
    schema: SchemaRef,
    pub(crate) rows: usize,
    pub(crate) columns: Vec<Column<'a>>,
}

impl Sorted<'_> {
    /// The sorted rows as one batch.
    pub(crate) fn into_batch(self) -> Result<RecordBatch> {
        let columns = self
            .columns
            .iter()
            .map(Column::to_array)
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(self.schema, columns)?)
    }
}

/// [`sort_readings`], keeping the columns that come in runs as runs.
pub(crate) fn sort_runs<'a>(batches: &'a [RecordBatch]) -> Result<Sorted<'a>> {
    let Some(first) = batches.first() else {
        return Err(Error::Config("no batches to sort".into()));
    };
    let schema = first.schema();
    struct Cols<'a> {
        ts: &'a TimestampMicrosecondArray,
        seq: &'a Int64Array,
        dev: &'a StringArray,
        met: &'a StringArray,
    }
    let cols = batches
        .iter()
        .map(|batch| {
            let strings = |name: &str| -> Result<&StringArray> {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .ok_or_else(|| Error::Config(format!("column {name} is missing or not utf8")))
            };
            Ok(Cols {
                ts: batch
                    .column(COL_TS)
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .ok_or_else(|| Error::Config("ts column is not timestamp(us)".into()))?,
                seq: batch
                    .column_by_name("wal_seq")
                    .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                    .ok_or_else(|| {
                        Error::Config("column wal_seq is missing or not int64".into())
                    })?,
                dev: strings("device_id")?,
                met: strings("metric")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    if n > u32::MAX as usize {
        return Err(Error::Config(format!(
            "{n} rows are too many to sort at once"
        )));
    }
    // Pass 1: interned ids and the hour range.
    let mut devs = Interner::new();
    let mut mets = Interner::new();
    let mut ids: Vec<(u32, u32)> = Vec::with_capacity(n);
    let (mut hmin, mut hmax) = (i64::MAX, i64::MIN);
    for c in &cols {
        for i in 0..c.ts.len() {
            let dev = if c.dev.is_null(i) { "" } else { c.dev.value(i) };
            let met = if c.met.is_null(i) { "" } else { c.met.value(i) };
            ids.push((devs.id(dev), mets.id(met)));
            let h = c.ts.value(i).div_euclid(HOUR_US);
            hmin = hmin.min(h);
            hmax = hmax.max(h);
        }
    }
    let (dev_rank, met_rank) = (devs.ranks(), mets.ranks());
    let (nd, nm) = (dev_rank.len() as u64, met_rank.len() as u64);
    let hours = if n == 0 { 0 } else { hmax.abs_diff(hmin) + 1 };
    let groups = hours.saturating_mul(nd).saturating_mul(nm);
    let inverse = |rank: &[u32]| {
        let mut by_rank = vec![0usize; rank.len()];
        for (id, r) in rank.iter().enumerate() {
            by_rank[*r as usize] = id;
        }
        by_rank
    };
    let (dev_by_rank, met_by_rank) = (inverse(&dev_rank), inverse(&met_rank));
    // (batch, row) of every input row, in output order, and the output's runs of one series:
    // (device id, metric id, rows).
    let mut order: Vec<(usize, usize)> = Vec::with_capacity(n);
    let mut series_runs: Vec<(usize, usize, usize)> = Vec::new();
    if groups <= (2 * n as u64).max(1 << 16) && groups < u64::from(u32::MAX) {
        // Counting sort on the (hour, device, metric) group: stable, so each group's rows keep
        // WAL order.
        let mut keys: Vec<u32> = Vec::with_capacity(n);
        let mut counts = vec![0u32; groups as usize + 1];
        let mut k = 0usize;
        for c in &cols {
            for i in 0..c.ts.len() {
                let (d, m) = ids[k];
                k += 1;
                let h = (c.ts.value(i).div_euclid(HOUR_US) - hmin) as u64;
                let g = (h * nd + dev_rank[d as usize] as u64) * nm + met_rank[m as usize] as u64;
                keys.push(g as u32);
                counts[g as usize + 1] += 1;
            }
        }
        for g in 1..counts.len() {
            counts[g] += counts[g - 1];
        }
        let starts = counts.clone();
        order.resize(n, (0, 0));
        // Placing rows in input order, a group whose (ts, wal_seq) ever goes down is noted as
        // needing a sort.
        let mut last_key = vec![(i64::MIN, i64::MIN); groups as usize];
        let mut unsorted = vec![false; groups as usize];
        let mut k = 0usize;
        for (b, c) in cols.iter().enumerate() {
            let (ts, seq) = (c.ts.values(), c.seq.values());
            for i in 0..c.ts.len() {
                let g = keys[k] as usize;
                let slot = &mut counts[g];
                order[*slot as usize] = (b, i);
                *slot += 1;
                k += 1;
                let key = (ts[i], seq[i]);
                if key < last_key[g] {
                    unsorted[g] = true;
                }
                last_key[g] = key;
            }
        }
        // Each group's run in (ts, wal_seq) order: a stable sort where it is not already.
        let key = |&(b, i): &(usize, usize)| (cols[b].ts.value(i), cols[b].seq.value(i));
        for g in 0..groups as usize {
            let len = (starts[g + 1] - starts[g]) as usize;
            if len > 0 {
                let series = g as u64 % (nd * nm);
                let (d, m) = ((series / nm) as usize, (series % nm) as usize);
                series_runs.push((dev_by_rank[d], met_by_rank[m], len));
            }
            if unsorted[g] {
                order[starts[g] as usize..starts[g + 1] as usize].sort_by_key(key);
            }
        }
    } else {
        // Sparse groups (rows spread over many hours): a comparison sort on the same keys.
        let mut keyed: Vec<(i64, u32, u32, i64, i64, usize, usize)> = Vec::with_capacity(n);
        let mut k = 0usize;
        for (b, c) in cols.iter().enumerate() {
            for i in 0..c.ts.len() {
                let (d, m) = ids[k];
                k += 1;
                let t = c.ts.value(i);
                keyed.push((
                    t.div_euclid(HOUR_US),
                    dev_rank[d as usize],
                    met_rank[m as usize],
                    t,
                    c.seq.value(i),
                    b,
                    i,
                ));
            }
        }
        keyed.sort_unstable();
        order.extend(keyed.iter().map(|k| (k.5, k.6)));
        for k in &keyed {
            let (d, m) = (dev_by_rank[k.1 as usize], met_by_rank[k.2 as usize]);
            match series_runs.last_mut() {
                Some(last) if (last.0, last.1) == (d, m) => last.2 += 1,
                _ => series_runs.push((d, m, 1)),
            }
        }
    }
    let no_nulls = |name: &str| {
        batches
            .iter()
            .all(|b| b.column_by_name(name).is_some_and(|c| c.null_count() == 0))
    };
    let (dev_runs, met_runs) = (no_nulls("device_id"), no_nulls("metric"));
    // Columns are independent: gathered on the machine's cores.
    let fields = schema.fields().len();
    let runs_of = |distinct: &[&'a str], pick: fn(&(usize, usize, usize)) -> usize| {
        Column::Runs(
            series_runs
                .iter()
                .map(|r| (distinct[pick(r)], r.2))
                .collect(),
        )
    };
    let columns = crate::parallel::map(
        (0..fields).collect(),
        crate::parallel::threads_for(fields),
        |j| match schema.field(j).name().as_str() {
            "device_id" if dev_runs => Ok(runs_of(&devs.distinct, |r| r.0)),
            "metric" if met_runs => Ok(runs_of(&mets.distinct, |r| r.1)),
            _ => {
                let arrays: Vec<&dyn Array> =
                    batches.iter().map(|b| b.column(j).as_ref()).collect();
                gather(&arrays, &order, n)
            }
        },
    )?;
    Ok(Sorted {
        schema,
        rows: n,
        columns,
    })
}

/// The rows `order` picks from `arrays` (one per input batch), without gathering row by row
/// when the column holds a single value: all null (the value kinds a fleet does not send,
/// tags without topic mappings), one string (quality, source: kept as one run) or one boolean
/// (replayed).
fn gather<'a>(arrays: &[&'a dyn Array], order: &[(usize, usize)], n: usize) -> Result<Column<'a>> {
    let one_array = |a: ArrayRef| Column::Arrays(vec![a]);
    let Some(first) = arrays.first() else {
        return Ok(one_array(interleave(arrays, order)?));
    };
    let data_type = first.data_type();
    if arrays.iter().all(|a| a.null_count() == a.len()) {
        return Ok(one_array(new_null_array(data_type, n)));
    }
    if arrays.iter().any(|a| a.null_count() > 0) {
        return Ok(one_array(interleave(arrays, order)?));
    }
    let strings: Option<Vec<&'a StringArray>> = arrays
        .iter()
        .map(|a| a.as_any().downcast_ref::<StringArray>())
        .collect();
    if let Some(strings) = strings {
        let one = strings.iter().find(|a| !a.is_empty()).map(|a| a.value(0));
        if let Some(one) = one
            && strings.iter().all(|a| holds_only(a, one))
        {
            return Ok(Column::Runs(vec![(one, n)]));
        }
        return Ok(one_array(interleave(arrays, order)?));
    }
    let bools: Option<Vec<&BooleanArray>> = arrays
        .iter()
        .map(|a| a.as_any().downcast_ref::<BooleanArray>())
        .collect();
    if let Some(bools) = bools {
        let trues: usize = bools.iter().map(|a| a.true_count()).sum();
        if trues == 0 || trues == n {
            let values = if trues == n {
                BooleanBuffer::new_set(n)
            } else {
                BooleanBuffer::new_unset(n)
            };
            return Ok(one_array(Arc::new(BooleanArray::new(values, None))));
        }
        return Ok(one_array(interleave(arrays, order)?));
    }
    // The lake's fixed-width columns: read straight from each batch's values (no concatenated
    // copy first, no per-row dispatch on the type).
    let typed = match data_type {
        DataType::Int64 => gather_primitive::<Int64Type>(arrays, order),
        DataType::Float64 => gather_primitive::<Float64Type>(arrays, order),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            gather_primitive::<TimestampMicrosecondType>(arrays, order)
        }
        _ => None,
    };
    match typed {
        Some(a) => Ok(one_array(a)),
        None => Ok(one_array(interleave(arrays, order)?)),
    }
}

/// The rows `order` picks from null-free primitive arrays of type `T` (same data type, kept),
/// or `None` when an array is not of that type.
fn gather_primitive<T: ArrowPrimitiveType>(
    arrays: &[&dyn Array],
    order: &[(usize, usize)],
) -> Option<ArrayRef> {
    let values: Vec<&[T::Native]> = arrays
        .iter()
        .map(|a| a.as_primitive_opt::<T>().map(|p| p.values().as_ref()))
        .collect::<Option<_>>()?;
    let data_type = arrays.first()?.data_type().clone();
    let mut out: Vec<T::Native> = Vec::with_capacity(order.len());
    for &(b, i) in order {
        out.push(*values.get(b)?.get(i)?);
    }
    Some(Arc::new(
        PrimitiveArray::<T>::new(out.into(), None).with_data_type(data_type),
    ))
}

/// Whether every value of a null-free string array is `one` (compares the offsets and the
/// value bytes in bulk).
fn holds_only(a: &StringArray, one: &str) -> bool {
    let len = one.len();
    if a.value_offsets()
        .windows(2)
        .any(|w| (w[1] - w[0]) as usize != len)
    {
        return false;
    }
    let start = a.value_offsets().first().copied().unwrap_or(0) as usize;
    let bytes = &a.value_data()[start..start + len * a.len()];
    if len == 0 {
        return true;
    }
    let pattern = one.as_bytes().repeat((4096 / len).max(1));
    bytes
        .chunks(pattern.len())
        .all(|c| c == &pattern[..c.len()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgepipe_types::{DeviceId, IngestRecord, Metric, Reading, Transport, TsSource, Value};

    use crate::schema::RowsBuilder;
    use crate::test_rng::Rng;

    fn batches(rng: &mut Rng, hours_spread: i64, mixed: bool) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        let mut seq = 0u64;
        for _ in 0..1 + rng.below(4) {
            let mut b = RowsBuilder::new(i64::MAX);
            for _ in 0..rng.below(400) {
                let dev = format!("dev-{}", rng.below(7));
                let readings = (0..1 + rng.below(4))
                    .map(|_| {
                        let metric = ["b", "a", "ab", "z", "m"][rng.below(5) as usize];
                        // Mostly increasing time with duplicates, some late rows, a spread of hours.
                        let ts = 1_700_000_000_000
                            + (rng.below(hours_spread as u64 * 3600) as i64) * 1000
                            + rng.below(3) as i64;
                        let kind = if mixed { rng.below(4) } else { 0 };
                        let value = match kind {
                            0 => Value::F64(rng.below(1000) as f64),
                            1 => Value::I64(rng.below(1000) as i64),
                            2 => Value::Bool(rng.below(2) == 1),
                            _ => Value::Str(format!("s{}", rng.below(3))),
                        };
                        Ok(Reading {
                            metric: Metric::new(metric)?,
                            ts,
                            value,
                            ts_source: if mixed && rng.below(3) == 0 {
                                TsSource::Server
                            } else {
                                TsSource::Device
                            },
                        })
                    })
                    .collect::<Result<Vec<_>, edgepipe_types::Error>>();
                let (Ok(device_id), Ok(readings)) = (DeviceId::new(dev), readings) else {
                    continue;
                };
                let mixed_rec = mixed && rng.below(3) == 0;
                let rec = IngestRecord {
                    device_id,
                    received_at: 1_700_000_000_000,
                    transport: if mixed_rec {
                        Transport::Replay
                    } else {
                        Transport::Http
                    },
                    origin: None,
                    tags: if mixed_rec {
                        vec![("line".into(), "1".into())]
                    } else {
                        Vec::new()
                    },
                    readings,
                };
                // Some records repeat a sequence (compaction sorts rows of several files).
                seq += rng.below(2);
                b.push_record(seq, &rec);
            }
            if let Ok(batch) = b.finish() {
                out.push(batch);
            }
        }
        out
    }

    /// The expected order, by plain comparison of the keys (ties in input order).
    fn naive(batches: &[RecordBatch]) -> Vec<(i64, String, String, i64, i64, usize)> {
        let mut rows = Vec::new();
        for b in batches {
            let ts = b.column(COL_TS).as_primitive::<TimestampMicrosecondType>();
            let dev = b.column(0).as_string::<i32>();
            let met = b.column(1).as_string::<i32>();
            let seq = b.column(12).as_primitive::<arrow::datatypes::Int64Type>();
            for i in 0..b.num_rows() {
                rows.push((
                    ts.value(i).div_euclid(HOUR_US),
                    dev.value(i).to_owned(),
                    met.value(i).to_owned(),
                    ts.value(i),
                    seq.value(i),
                    rows.len(),
                ));
            }
        }
        rows.sort_by(|a, b| (a.0, &a.1, &a.2, a.3, a.4).cmp(&(b.0, &b.1, &b.2, b.3, b.4)));
        rows
    }

    #[test]
    fn sort_matches_a_plain_comparison_sort() -> Result<()> {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Dense hours use the counting sort; years of spread use the comparison fallback;
        // mixed value kinds, sources and tags take the row-by-row gather instead of the
        // single-value shortcuts.
        for spread in [1, 3, 24 * 365 * 30] {
            for round in 0..40 {
                let input = batches(&mut rng, spread, round % 2 == 1);
                let sorted = sort_readings(&input)?;
                // The expected batch: the input rows concatenated and taken in the order of a
                // stable comparison sort (ties keep input order).
                let expect_order: Vec<u32> = naive(&input).iter().map(|r| r.5 as u32).collect();
                let all = arrow::compute::concat_batches(&readings_schema(), &input)?;
                let idx = arrow::array::UInt32Array::from(expect_order);
                let cols = all
                    .columns()
                    .iter()
                    .map(|c| arrow::compute::take(c.as_ref(), &idx, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let expect = RecordBatch::try_new(readings_schema(), cols)?;
                assert_eq!(sorted, expect, "spread {spread} round {round}");
            }
        }
        assert_eq!(sort_readings(&[])?.num_rows(), 0);
        Ok(())
    }
}
