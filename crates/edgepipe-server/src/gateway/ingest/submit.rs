//! The ingest core's seam to the WAL: how a transport's appends travel to the WAL writer.

use edgepipe_wal::Wal;

/// How a transport hands the ingest core's WAL appends to the WAL writer. The core decides
/// what to append; the transport decides how appends travel: one at a time ([`Direct`]), or
/// gathered with other appends of the same worker thread (the MQTT gateway's
/// [`crate::gateway::mqtt_submit::Batched`]).
pub trait Submit {
    /// Appends `payload` to `wal`; when this resolves `Ok`, the record is durable and
    /// `on_durable` has run with its sequence number (on the WAL writer).
    fn append_then(
        &self,
        wal: &Wal,
        payload: Vec<u8>,
        on_durable: impl FnOnce(u64) + Send + 'static,
    ) -> impl Future<Output = edgepipe_wal::Result<u64>> + Send;
}

/// Each append goes to the WAL writer at once ([`Wal::append_then`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Direct;

impl Submit for Direct {
    fn append_then(
        &self,
        wal: &Wal,
        payload: Vec<u8>,
        on_durable: impl FnOnce(u64) + Send + 'static,
    ) -> impl Future<Output = edgepipe_wal::Result<u64>> + Send {
        wal.append_then(payload, on_durable)
    }
}
