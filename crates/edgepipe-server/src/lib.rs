//! `edgepipe-server`: the `edgepipe` binary's library. It owns the device gateway (MQTT 3.1.1/5
//! on ntex-mqtt, HTTP ingest on axum), the ingest core that acknowledges only after the WAL
//! append is durable, the device registry, the dead-letter store, metrics, the CLI and the demo.
//!
//! One reading's path through this crate: [`mqtt`] or [`http`] authenticates the device →
//! [`ingest::Ingestor`] routes, decodes (`edgepipe-protocol`), drops agent-batch replays and
//! appends an [`edgepipe_types::IngestRecord`] to the WAL (`edgepipe-wal`) → the ack is written
//! → [`lake`] runs the lake writer (a WAL consumer) that makes it queryable at once and writes
//! it to Parquet (`edgepipe-lake`), and the query engine (`edgepipe-query`) behind
//! `POST /api/v1/query`, `GET /api/v1/series` and `edgepipe query`. Anything refused is stored
//! by [`deadletter`] first. [`detect`] is the detection stage (another WAL consumer) that scores
//! every reading and stores anomaly events in the lake; [`cases`] turns them into cases
//! (`edgepipe-cases`), notifies, and feeds operators' verdicts back to detection. [`http`]
//! also serves the dashboard ([`dashboard`]) and the case, fleet and user APIs, with API
//! tokens and roles.

pub mod cli;
pub mod config;
pub mod gateway;
pub mod server;
pub mod stages;
pub mod web;
