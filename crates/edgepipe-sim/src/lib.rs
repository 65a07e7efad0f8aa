//! Device fleet simulator and ingest load generator: the traffic source in front of the gateway.
//!
//! This crate owns everything that *pretends to be devices*:
//!
//! - [`signal`]: a deterministic-by-seed model of a fleet of N devices x M metrics with
//!   realistic signals (daily cycle, noise, slow trend, metrics that move together within a
//!   device) and injected, labelled anomalies (spike, level shift, drift, stuck sensor, noise
//!   burst, dropout). The labels are the ground truth detectors are scored against, written as
//!   CSV `device,metric,start_ms,end_ms,kind`.
//! - [`mqtt`]: runs such a fleet over real MQTT 3.1.1, one client per device, publishing JSON
//!   readings to `edgepipe/v1/{device_id}/telemetry` at QoS 1 in (optionally sped-up) real time.
//!   `edgepipe demo` uses it.
//! - [`bench`](mod@bench): the load generator behind `edgepipe bench ingest`: N connections publishing
//!   batches at a fixed or unbounded rate, reporting acked messages/readings per second and
//!   PUBACK latency percentiles.
//!
//! It sits *before* the gateway in the data flow and talks to it only over the wire, so it works
//! just as well against any other MQTT broker (the tests use Mosquitto).

pub mod bench;
mod error;
pub mod http;
pub mod mqtt;
mod net;
pub mod signal;

pub use error::{Error, Result};
