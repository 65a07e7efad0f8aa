//! Starting and stopping a server: lock the data directory, open the WAL, the dead-letter store
//! and the device registry, bind both ports (a taken port is a clear error naming the flag),
//! start the lake writer, the MQTT endpoint and the HTTP API; shut down in order: stop
//! accepting, let in-flight publishes finish, flush the lake, close the WALs.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::ServerConfig;
use crate::gateway::deadletter::{DeadLetterError, DeadLetters};
use crate::gateway::devices::{DeviceError, DeviceRegistry};
use edgepipe_types::{SharedClock, SystemClock};

use crate::gateway::ingest::{Ingestor, IngestorParts};
use crate::gateway::metrics::Metrics;
use crate::gateway::mqtt::{self, MqttHandle, MqttSettings};
use crate::gateway::tls::{ClientAuth, ClientTrust, ReloadingCert};
use crate::gateway::tls_config::server_config;
use crate::stages::lake::LakeService;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Another process uses the data directory.
    #[error(
        "data directory {0} is in use by another edgepipe process (pass --data-dir to use another)"
    )]
    Locked(PathBuf),
    /// A port is taken.
    #[error("cannot listen on {addr} for {what}: {source} (pass {flag} to choose another address)")]
    Bind {
        /// Which endpoint.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Flag to change it.
        flag: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The WAL did not open.
    #[error("opening the wal: {0}")]
    Wal(#[from] edgepipe_wal::Error),
    /// The dead-letter store did not open.
    #[error(transparent)]
    DeadLetters(#[from] DeadLetterError),
    /// The device registry did not open.
    #[error(transparent)]
    Devices(#[from] DeviceError),
    /// The lake did not open.
    /// The certificate or key does not load.
    #[error("TLS: {0}")]
    Tls(#[from] crate::gateway::tls::TlsError),
    #[error("opening the lake: {0}")]
    Lake(#[from] edgepipe_lake::Error),
    /// The state store (cases, users) did not open.
    #[error("opening the case store: {0:#}")]
    Cases(anyhow::Error),
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// Context.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Takes the data directory's lock file; held for the process's life.
pub fn lock_data_dir(dir: &Path) -> Result<File, StartError> {
    std::fs::create_dir_all(dir).map_err(|source| StartError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let path = dir.join("LOCK");
    let f = File::create(&path).map_err(|source| StartError::Io {
        what: format!("creating {}", path.display()),
        source,
    })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::Io {
            what: format!("locking {}", path.display()),
            source,
        }),
    }
}

/// The local CLI's API user: a fresh admin token at every start, in `<data>/cli.token`
/// (readable by the owner only), so `edgepipe` commands on this machine can talk to the
/// running server without a token on their command line.
pub const CLI_USER: &str = "local-cli";

async fn write_cli_token(
    store: &edgepipe_cases::SqlCaseStore,
    data_dir: &Path,
) -> Result<(), StartError> {
    let token = store
        .user_put(CLI_USER, edgepipe_cases::Role::Admin, true, "system")
        .await
        .map_err(|e| StartError::Cases(e.into()))?;
    let path = data_dir.join("cli.token");
    let io = |source| StartError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        f.write_all(token.as_bytes()).map_err(io)?;
    }
    Ok(())
}

/// Binds a listener with an error that names the flag to change.
pub fn bind(
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).map_err(|source| StartError::Bind {
        what,
        addr,
        flag,
        source,
    })
}

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    /// Where MQTT listens.
    pub mqtt_addr: SocketAddr,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// Whether `http_addr` serves HTTPS.
    pub https: bool,
    /// Where MQTT over TLS listens (when TLS is configured).
    pub mqtts_addr: Option<SocketAddr>,
    /// Where MQTT over WebSocket listens (`ws://…/mqtt`), when configured.
    pub ws_addr: Option<SocketAddr>,
    /// Where MQTT over WebSocket over TLS listens (`wss://…/mqtt`), when configured.
    pub wss_addr: Option<SocketAddr>,
    /// The certificate the TLS listeners present (when TLS is configured).
    pub tls_cert: Option<Arc<ReloadingCert>>,
    /// The shared ingest core (for status lines and tests).
    pub ingestor: Arc<Ingestor>,
    /// SQL over the lake and fresh rows.
    pub query: edgepipe_query::QueryEngine,
    /// Lake writer counters.
    pub lake_metrics: Arc<edgepipe_lake::LakeMetrics>,
    lake: Option<LakeService>,
    /// The case service (cases, users, notifications).
    pub cases: Option<crate::stages::cases::CaseService>,
    detect_stop: CancellationToken,
    /// Stops detection and retraining if the server is dropped without [`Self::shutdown`]
    /// (or `start` fails after spawning them).
    _detect_stop_on_drop: DropGuard,
    detect_task: Option<tokio::task::JoinHandle<()>>,
    retrain_task: Option<tokio::task::JoinHandle<()>>,
    mqtt: Option<MqttHandle>,
    http_cancel: CancellationToken,
    http_task: Option<tokio::task::JoinHandle<()>>,
    _lock: File,
}

impl RunningServer {
    /// Starts the server. The HTTP API, lake writer and compactor run on the calling runtime.
    pub async fn start(cfg: &ServerConfig) -> Result<RunningServer, StartError> {
        let mappings = cfg.validate()?;
        let lock = lock_data_dir(&cfg.data_dir)?;
        let mqtt_listener = bind(cfg.mqtt_addr, "MQTT", "--mqtt-addr")?;
        let http_listener = bind(cfg.http_addr, "HTTP", "--http-addr")?;
        let io = |what: &str| {
            let what = what.to_string();
            move |source| StartError::Io { what, source }
        };
        let mqtt_addr = mqtt_listener.local_addr().map_err(io("mqtt address"))?;
        let http_addr = http_listener.local_addr().map_err(io("http address"))?;
        let metrics = Arc::new(Metrics::default());
        // The certificate before anything is opened: a bad file stops the start here.
        let tls_cert = match (&cfg.tls.cert, &cfg.tls.key) {
            (Some(c), Some(k)) => {
                // Device CAs: the configured bundle and the built-in CA (`edgepipe ca init`,
                // possibly created while the server runs: picked up at the next reload).
                let trust = Some(ClientTrust {
                    ca_files: cfg.tls.client_ca.iter().cloned().collect(),
                    builtin: Some(cfg.data_dir.clone()),
                });
                Some(ReloadingCert::open(c, k, trust, metrics.tls.clone())?)
            }
            _ => None,
        };
        let mqtts_listener = match &tls_cert {
            Some(_) => Some(bind(cfg.tls.mqtt_addr, "MQTT over TLS", "--mqtts-addr")?),
            None => None,
        };
        let mqtts_addr = match &mqtts_listener {
            Some(l) => Some(l.local_addr().map_err(io("mqtts address"))?),
            None => None,
        };
        let ws_listener = match cfg.mqtt_ws_addr {
            Some(a) => Some(bind(a, "MQTT over WebSocket", "--ws-addr")?),
            None => None,
        };
        let wss_listener = match (cfg.tls.mqtt_ws_addr, &tls_cert) {
            (Some(a), Some(_)) => Some(bind(a, "MQTT over WebSocket over TLS", "--wss-addr")?),
            _ => None,
        };
        let local =
            |l: &Option<TcpListener>, what: &str| -> Result<Option<SocketAddr>, StartError> {
                match l {
                    Some(l) => Ok(Some(l.local_addr().map_err(io(what))?)),
                    None => Ok(None),
                }
            };
        let ws_addr = local(&ws_listener, "ws address")?;
        let wss_addr = local(&wss_listener, "wss address")?;

        let wal = edgepipe_wal::Wal::open(cfg.data_dir.join("wal"), cfg.wal.clone())?;
        let st = wal.stats();
        if st.torn_records_truncated > 0 {
            tracing::warn!(
                bytes = st.torn_bytes_truncated,
                "recovered wal: truncated a torn tail (never acknowledged)"
            );
        }
        let store = crate::stages::lake::open_store(&cfg.data_dir, &cfg.lake)?;
        let mut lake =
            LakeService::start(store, wal.clone(), cfg.lake.clone(), cfg.query.clone()).await?;
        // The one clock every component of this server reads.
        let clock: SharedClock = Arc::new(SystemClock);
        let deadletters = DeadLetters::open(&cfg.data_dir, &cfg.deadletters)?;
        let devices = DeviceRegistry::open(&cfg.data_dir)?.with_clock(clock.clone());
        let ingestor = Arc::new(
            Ingestor::new(IngestorParts {
                wal,
                deadletters,
                devices,
                limits: cfg.protocol_limits(),
                max_payload: cfg.limits.max_payload_bytes,
                device_msgs_per_sec: cfg.limits.device_msgs_per_sec,
                mappings,
                clock: clock.clone(),
                metrics,
                auto_register: cfg.auto_register,
            })?
            .with_cert_rules(crate::gateway::identity::CertRules {
                device_id_from: cfg.tls.device_id_from,
                register_by_certificate: cfg.tls.register_by_certificate,
                cert_required: cfg.tls.client_auth == ClientAuth::Required,
            })
            .with_auth_guard(crate::gateway::auth_guard::AuthGuard::new(
                cfg.limits.auth_backoff_after,
                cfg.limits.auth_backoff_loopback,
            ))
            .with_metric_limit(cfg.limits.max_metrics_per_device),
        );

        lake.export_deadletters(ingestor.clone());
        let case_store = crate::stages::cases::open_store(&cfg.data_dir, &cfg.cases)
            .await
            .map_err(StartError::Cases)?;
        write_cli_token(&case_store, &cfg.data_dir).await?;
        let detect_metrics: Arc<crate::stages::detect::DetectMetrics> = Arc::default();
        let watched = cfg.alarms.enabled.then(|| {
            (
                cfg.alarms.clone(),
                crate::stages::alarms::Watched {
                    wal: ingestor.wal().clone(),
                    wal_max_bytes: cfg.wal.max_bytes,
                    fresh: lake.fresh.clone(),
                    detect: detect_metrics.clone(),
                    detect_enabled: cfg.detect.enabled,
                },
            )
        });
        let cases = crate::stages::cases::CaseService::start(
            case_store,
            lake.engine.clone(),
            lake.store.clone(),
            watched,
            clock.clone(),
        )
        .map_err(StartError::Cases)?;
        let detect_stop = CancellationToken::new();
        let detect_stop_on_drop = detect_stop.clone().drop_guard();
        if !cfg.detect.enabled {
            // A disabled stage must not hold back WAL retention with a stale checkpoint.
            let _ = ingestor
                .wal()
                .remove_consumer(crate::stages::detect::CONSUMER);
        }
        let detect_task = cfg.detect.enabled.then(|| {
            tokio::spawn(crate::stages::detect::run_stage(
                cfg.data_dir.clone(),
                ingestor.wal().clone(),
                lake.store.clone(),
                cfg.detect.clone(),
                Some(cases.handler()),
                detect_metrics.clone(),
                detect_stop.clone(),
            ))
        });

        let retrain_task = (cfg.detect.enabled && !cfg.detect.retrain.every.is_zero()).then(|| {
            let mut qcfg = cfg.query.clone();
            qcfg.max_rows = usize::MAX;
            tokio::spawn(crate::stages::models::retrain_loop(
                cfg.data_dir.clone(),
                lake.engine.with_config(qcfg),
                cfg.detect.retrain.clone(),
                clock.clone(),
                detect_stop.clone(),
            ))
        });

        let workers = if cfg.mqtt_workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.mqtt_workers
        };
        let mqtts = match (mqtts_listener, &tls_cert) {
            (Some(l), Some(c)) => Some((l, server_config(c.clone(), &[b"mqtt"])?)),
            _ => None,
        };
        let wss = match (wss_listener, &tls_cert) {
            (Some(l), Some(c)) => Some((l, server_config(c.clone(), &[b"http/1.1"])?)),
            _ => None,
        };
        let mqtt = mqtt::spawn(
            mqtt_listener,
            mqtt::ExtraListeners {
                tls: mqtts,
                ws: ws_listener,
                wss,
            },
            ingestor.clone(),
            MqttSettings {
                workers,
                rules: mqtt::AdmitRules {
                    max_connections: cfg.limits.max_connections,
                },
                max_packet: (cfg.limits.max_payload_bytes + 64 * 1024) as u32,
                receive_max: 1024,
            },
        )
        .map_err(io("starting the mqtt endpoint"))?;

        http_listener
            .set_nonblocking(true)
            .map_err(io("http listener"))?;
        let http_listener =
            tokio::net::TcpListener::from_std(http_listener).map_err(io("http listener"))?;
        let app = crate::web::router::router(
            ingestor.clone(),
            cfg.limits.max_payload_bytes,
            crate::web::state::LakeApi {
                engine: lake.engine.clone(),
                metrics: lake.metrics.clone(),
                fresh: lake.fresh.clone(),
                detect: detect_metrics.clone(),
            },
            crate::web::state::CasesApi {
                store: cases.store.clone(),
                metrics: cases.metrics.clone(),
                notify: cases.notify_metrics.clone(),
                waker: cases.waker(),
                evidence_before_ms: i64::try_from(cfg.cases.evidence_before.as_millis())
                    .unwrap_or(i64::MAX),
            },
            clock.clone(),
        );
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let https = match &tls_cert {
            Some(cert) if cfg.tls.https => Some(server_config(cert.clone(), &[b"http/1.1"])?),
            _ => None,
        };
        let http_task = match https {
            Some(tls) => tokio::spawn(crate::web::https::serve(
                http_listener,
                tls,
                app,
                ingestor.metrics().tls.clone(),
                c,
            )),
            None => tokio::spawn(async move {
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                if let Err(e) = axum::serve(http_listener, app)
                    .with_graceful_shutdown(async move { c.cancelled().await })
                    .await
                {
                    tracing::error!(error = %e, "http server stopped");
                }
            }),
        };
        if let Some(cert) = &tls_cert {
            // Stops with the HTTP listener (`http_cancel`).
            tokio::spawn(cert.clone().watch(cfg.tls.reload_interval, cancel.clone()));
        }

        let https = cfg.tls.serves_https();
        let info = serde_json::json!({
            "pid": std::process::id(),
            "mqtt": mqtt_addr.to_string(),
            "http": http_addr.to_string(),
            "mqtts": mqtts_addr.map(|a| a.to_string()),
            "ws": ws_addr.map(|a| format!("ws://{a}/mqtt")),
            "wss": wss_addr.map(|a| format!("wss://{a}/mqtt")),
            "https": https,
            // The CLI pins this certificate when it talks to the server over HTTPS.
            "tls_cert": cfg
                .tls
                .cert
                .as_ref()
                .filter(|_| https)
                .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
        });
        let _ = std::fs::write(cfg.data_dir.join("server.json"), info.to_string());
        tracing::info!(mqtt = %mqtt_addr, http = %http_addr, mqtts = ?mqtts_addr, https, data_dir = %cfg.data_dir.display(), "edgepipe serving");
        Ok(RunningServer {
            mqtt_addr,
            http_addr,
            https,
            mqtts_addr,
            ws_addr,
            wss_addr,
            tls_cert,
            ingestor,
            query: lake.engine.clone(),
            lake_metrics: lake.metrics.clone(),
            lake: Some(lake),
            cases: Some(cases),
            detect_stop,
            _detect_stop_on_drop: detect_stop_on_drop,
            detect_task,
            retrain_task,
            mqtt: Some(mqtt),
            http_cancel: cancel,
            http_task: Some(http_task),
            _lock: lock,
        })
    }

    /// Ordered shutdown: stop accepting on both endpoints, let in-flight requests finish (their
    /// WAL appends complete and are acknowledged), flush buffered rows to the lake, then close
    /// the WALs.
    pub async fn shutdown(mut self) {
        if let Some(m) = self.mqtt.take() {
            let _ = tokio::task::spawn_blocking(move || m.stop()).await;
        }
        self.http_cancel.cancel();
        if let Some(t) = self.http_task.take() {
            let _ = t.await;
        }
        self.detect_stop.cancel();
        if let Some(t) = self.detect_task.take() {
            let _ = t.await;
        }
        if let Some(t) = self.retrain_task.take() {
            // A training in progress only writes whole files (temp file + rename): safe to drop.
            t.abort();
            let _ = t.await;
        }
        if let Some(c) = self.cases.take() {
            c.shutdown().await;
        }
        if let Some(l) = self.lake.take() {
            l.shutdown().await;
        }
        let ing = self.ingestor.clone();
        ing.wal().clone().close();
        ing.deadletters().clone().close();
        tracing::info!("edgepipe stopped");
    }
}
