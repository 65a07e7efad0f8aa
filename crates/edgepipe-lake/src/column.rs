//! A column to encode ([`Column`]): Arrow arrays, or a string column as runs of one value.
//! The sort engine produces columns, the Parquet encoder writes them. A leaf: it uses neither.

use arrow::array::{Array, ArrayRef};

use crate::Result;
use crate::runs::Runs;

/// One column of a file to encode: Arrow arrays (pieces of one row group, in order), or a
/// string column as runs of one value (see [`crate::runs`]).
#[derive(Debug, Clone)]
pub(crate) enum Column<'a> {
    Arrays(Vec<ArrayRef>),
    Runs(Runs<'a>),
}

impl<'a> Column<'a> {
    /// Rows `start..start + len` of a one-piece column.
    pub(crate) fn slice(&self, start: usize, len: usize) -> Column<'a> {
        match self {
            Column::Arrays(a) => Column::Arrays(a.iter().map(|a| a.slice(start, len)).collect()),
            Column::Runs(r) => Column::Runs(crate::runs::slice(r, start, len)),
        }
    }

    /// The column as one Arrow array (runs repeated row by row).
    pub(crate) fn to_array(&self) -> Result<ArrayRef> {
        match self {
            Column::Arrays(a) if a.len() == 1 => Ok(a[0].clone()),
            Column::Arrays(a) => {
                let refs: Vec<&dyn Array> = a.iter().map(|a| a.as_ref()).collect();
                Ok(arrow::compute::concat(&refs)?)
            }
            Column::Runs(runs) => Ok(crate::runs::to_array(runs)),
        }
    }
}
