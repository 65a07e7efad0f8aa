//! Partition pruning from time predicates: a `ts` (or `bucket`) range in a query's filters
//! becomes a `date`/`hour` predicate on the Hive partition columns, so the listing table opens
//! only the partitions that can hold matching rows. The original filters still run (the derived
//! ones only remove partitions that cannot match), so results never change, only the work.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{col, lit};
use edgepipe_lake::schema::{HOUR_US, partition_of_hour};

/// Wraps a Hive-partitioned listing table and adds partition predicates derived from `ts`.
#[derive(Debug)]
pub(crate) struct PrunedTable {
    inner: Arc<dyn TableProvider>,
}

impl PrunedTable {
    pub(crate) fn new(inner: Arc<dyn TableProvider>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl TableProvider for PrunedTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut all = filters.to_vec();
        all.extend(partition_filters(filters));
        self.inner.scan(state, projection, &all, limit).await
    }
}

/// Bounds in µs since the epoch: `lo <= ts` and `ts <= hi` (inclusive; strictness does not
/// matter at hour granularity).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) lo: Option<i64>,
    pub(crate) hi: Option<i64>,
}

impl Bounds {
    fn lower(&mut self, v: i64) {
        self.lo = Some(self.lo.map_or(v, |l| l.max(v)));
    }
    fn upper(&mut self, v: i64) {
        self.hi = Some(self.hi.map_or(v, |h| h.min(v)));
    }
}

fn ts_micros(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampMicrosecond(Some(x), _) => Some(*x),
        ScalarValue::TimestampMillisecond(Some(x), _) => x.checked_mul(1000),
        ScalarValue::TimestampSecond(Some(x), _) => x.checked_mul(1_000_000),
        ScalarValue::TimestampNanosecond(Some(x), _) => Some(x.div_euclid(1000)),
        _ => None,
    }
}

fn is_time_col(e: &Expr) -> bool {
    match e {
        Expr::Column(c) => c.name == "ts" || c.name == "bucket",
        Expr::Cast(c) => is_time_col(&c.expr),
        _ => false,
    }
}

fn literal_ts(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(v, _) => ts_micros(v),
        Expr::Cast(c) => literal_ts(&c.expr),
        _ => None,
    }
}

/// Collects `ts` bounds from conjunctive filters.
pub(crate) fn ts_bounds(filters: &[Expr]) -> Bounds {
    let mut b = Bounds::default();
    for f in filters {
        collect(f, &mut b);
    }
    b
}

fn collect(e: &Expr, b: &mut Bounds) {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if *op == Operator::And {
                collect(left, b);
                collect(right, b);
                return;
            }
            let (op, v) = if is_time_col(left) {
                match literal_ts(right) {
                    Some(v) => (*op, v),
                    None => return,
                }
            } else if is_time_col(right) {
                match (literal_ts(left), op.swap()) {
                    (Some(v), Some(op)) => (op, v),
                    _ => return,
                }
            } else {
                return;
            };
            match op {
                Operator::Gt | Operator::GtEq => b.lower(v),
                Operator::Lt | Operator::LtEq => b.upper(v),
                Operator::Eq => {
                    b.lower(v);
                    b.upper(v);
                }
                _ => {}
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_time_col(expr) => {
            if let Some(v) = literal_ts(low) {
                b.lower(v);
            }
            if let Some(v) = literal_ts(high) {
                b.upper(v);
            }
        }
        _ => {}
    }
}

/// `date`/`hour` predicates implied by the filters' time bounds.
pub(crate) fn partition_filters(filters: &[Expr]) -> Vec<Expr> {
    let b = ts_bounds(filters);
    // Bounds outside four-digit years would not compare correctly as partition strings; they
    // prune nothing anyway.
    let usable = |v: i64| {
        chrono::DateTime::from_timestamp_micros(v)
            .map(|t| (1..=9999).contains(&chrono::Datelike::year(&t)))
            .unwrap_or(false)
    };
    let mut out = Vec::new();
    if let Some(lo) = b.lo.filter(|v| usable(*v)) {
        let (d, h) = partition_of_hour(lo.div_euclid(HOUR_US));
        // (date, hour) >= (d, h)
        out.push(
            col("date")
                .gt(lit(d.clone()))
                .or(col("date").eq(lit(d)).and(col("hour").gt_eq(lit(h)))),
        );
    }
    if let Some(hi) = b.hi.filter(|v| usable(*v)) {
        let (d, h) = partition_of_hour(hi.div_euclid(HOUR_US));
        out.push(
            col("date")
                .lt(lit(d.clone()))
                .or(col("date").eq(lit(d)).and(col("hour").lt_eq(lit(h)))),
        );
    }
    out
}
