//! The HTTP side: the router, the data-plane handlers (ingest, dead letters, query, series,
//! status), the operator API (cases, fleet, devices, users, audit), Prometheus metrics and the
//! dashboard's assets; [`https`] serves the same router over TLS.

pub mod api;
pub mod dashboard;
pub mod data;
pub mod error;
pub mod https;
pub mod metrics;
pub mod router;
pub mod state;

#[cfg(test)]
mod tests;
