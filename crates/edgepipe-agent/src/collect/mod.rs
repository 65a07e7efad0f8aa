//! Collectors: everything that brings readings into the agent. Each runs as its own task and
//! hands batches to the pipeline ([`crate::pipeline::Input`]) on the bounded input channel,
//! waiting (block policy) when it is full.
//!
//! | `type` | source | position kept in the queue |
//! | --- | --- | --- |
//! | `mqtt` | local broker (Mosquitto), QoS 1, manual ack after the append | broker redelivers unacked |
//! | `file` | tail of a CSV or JSON-lines file, survives rotation | inode + offset |
//! | `stdin` | CSV or JSON lines on standard input | — |
//! | `http` | `POST /api/v1/push` on the local HTTP endpoint; 200 after the append | client retries |
//! | `generator` | deterministic counter series (tests, benchmarks) | counter |
//! | `simulator` | sine waves with injected anomalies (demos) | — |
//! | `system` | the gateway's own CPU, memory, load, uptime | — |
//! | `modbus` | Modbus TCP registers polled every `interval` | — |

pub mod file;
pub mod lines;
pub mod modbus;
pub mod mqtt;
pub mod sim;
pub mod stdin;
pub mod system;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use std::path::PathBuf;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::pipeline::{Input, InputTx};

/// Why a collector stopped or a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline stopped (shutdown).
    #[error("the agent pipeline has stopped")]
    PipelineClosed,
    /// The queue refused the readings (disk budget full with `reject`, fsync failure).
    #[error("append refused: {0}")]
    Refused(String),
    /// Reading the source failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or stream.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A setting cannot be used (checked again at start).
    #[error("{what}: {reason}")]
    Setting {
        /// The setting.
        what: String,
        /// Why.
        reason: String,
    },
    /// A Modbus request failed.
    #[error("modbus register {metric:?}: {reason}")]
    Modbus {
        /// The register's metric.
        metric: String,
        /// Timeout, transport error or Modbus exception.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// What kind of collector and its settings (`type = "..."` in `[[collectors]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CollectorKind {
    /// Subscribe to a local MQTT broker.
    Mqtt(mqtt::MqttCollectorConfig),
    /// Tail a file.
    File(file::FileConfig),
    /// Read standard input.
    Stdin(stdin::StdinConfig),
    /// Accept pushes on the local HTTP endpoint.
    Http(HttpPushConfig),
    /// Deterministic counter series.
    Generator(sim::GeneratorConfig),
    /// Demo simulator.
    Simulator(sim::SimulatorConfig),
    /// Gateway system metrics.
    System(system::SystemConfig),
    /// Modbus TCP polling.
    Modbus(modbus::ModbusConfig),
}

/// `type = "http"`: readings pushed to `POST /api/v1/push` on `[http] listen` (JSON, NDJSON or
/// line protocol, like the server's ingest endpoint). No settings of its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPushConfig {}

/// One `[[collectors]]` entry.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Unique name (used in position keys and logs).
    pub name: String,
    /// Stream its readings go to. Default `telemetry`.
    pub stream: String,
    /// The kind and its settings.
    pub kind: CollectorKind,
}

/// What a running collector gets.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Collector name.
    pub name: String,
    /// Target stream.
    pub stream: String,
    /// Pipeline input.
    pub tx: InputTx,
    /// Clock.
    pub clock: SharedClock,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Stop signal.
    pub cancel: CancellationToken,
    /// Last durable positions of this collector, by key.
    pub positions: std::collections::BTreeMap<String, u64>,
}

impl Ctx {
    /// Sends readings and waits until they are durable. `Err` if refused or the pipeline stopped.
    pub async fn send_durable(
        &self,
        readings: Vec<edgepipe_types::Reading>,
        positions: Vec<(String, u64)>,
    ) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Input {
                stream: self.stream.clone(),
                readings,
                positions,
                ack: Some(tx),
                raw: false,
            })
            .await
            .map_err(|_| Error::PipelineClosed)?;
        rx.await
            .map_err(|_| Error::PipelineClosed)?
            .map_err(Error::Refused)
    }

    /// Sends readings without waiting for durability (sources that cannot resend anyway).
    pub async fn send(&self, readings: Vec<edgepipe_types::Reading>) -> Result<(), Error> {
        self.tx
            .send(Input {
                stream: self.stream.clone(),
                readings,
                positions: Vec::new(),
                ack: None,
                raw: false,
            })
            .await
            .map_err(|_| Error::PipelineClosed)
    }

    /// The position key `kind:name:what`.
    pub fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.name)
    }
}

/// Starts a collector task (the `http` collector is served by [`crate::http`]).
pub fn spawn(kind: CollectorKind, ctx: Ctx, agent_id: &str) {
    let agent_id = agent_id.to_string();
    tokio::spawn(async move {
        let name = ctx.name.clone();
        let r = match kind {
            CollectorKind::Mqtt(c) => mqtt::run(c, ctx, agent_id).await,
            CollectorKind::File(c) => file::run(c, ctx).await,
            CollectorKind::Stdin(c) => stdin::run(c, ctx).await,
            CollectorKind::Generator(c) => sim::run_generator(c, ctx).await,
            CollectorKind::Simulator(c) => sim::run_simulator(c, ctx).await,
            CollectorKind::System(c) => system::run(c, ctx).await,
            CollectorKind::Modbus(c) => modbus::run(c, ctx).await,
            CollectorKind::Http(_) => Ok(()),
        };
        if let Err(e) = r {
            tracing::error!(collector = %name, error = %e, "collector stopped");
        }
    });
}
