//! The notifier: delivers the outbox at least once, with retry and backoff across restarts.
//!
//! Each round takes the due notifications, groups them per channel and sends them: one by one
//! (several in flight), or — when more than `digest_threshold` wait for one channel — as one
//! digest (storm control: one message listing 500 changes instead of 500 messages). A
//! notification is marked delivered only after its channel accepted it; a crash between the
//! two sends it again with the same idempotency key, so receivers can drop the repeat. A
//! digest's own key names its first and last outbox ids, so a digest re-sent after a crash may
//! hold more notifications (those that became due meanwhile) under another key; every
//! notification inside a digest keeps its own `idempotency_key`, which is what receivers should
//! deduplicate on. A failing one is retried with exponential backoff (capped, jittered) and is
//! never dropped.

mod email;
mod template;
mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{CasesConfig, ChannelConfig};
use crate::model::{Millis, OutboxMessage};
use crate::store::CaseStore;
use crate::{Error, Result, now_ms};

pub use template::render;
pub use webhook::sign;

/// Counters of the notifier.
#[derive(Debug, Default)]
pub struct NotifyMetrics {
    /// Notifications delivered (each one in a digest counts).
    pub delivered: AtomicU64,
    /// Digests sent.
    pub digests: AtomicU64,
    /// Failed delivery attempts.
    pub failures: AtomicU64,
}

/// Delivers the outbox.
#[derive(Debug, Clone)]
pub struct Notifier {
    store: Arc<dyn CaseStore>,
    cfg: Arc<CasesConfig>,
    http: reqwest::Client,
    wake: Arc<Notify>,
    metrics: Arc<NotifyMetrics>,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundStats {
    /// Notifications delivered.
    pub delivered: u64,
    /// Notifications whose attempt failed.
    pub failed: u64,
    /// Digests sent.
    pub digests: u64,
}

impl Notifier {
    /// A notifier over `store` with the channels of `cfg`.
    pub fn new(store: Arc<dyn CaseStore>, cfg: Arc<CasesConfig>) -> Result<Self> {
        // HTTPS webhooks use rustls with ring, installed explicitly (a no-op when the
        // process already did).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::Channel {
                channel: "webhook".into(),
                reason: format!("HTTP client: {e}"),
            })?;
        Ok(Self {
            store,
            cfg,
            http,
            wake: Arc::new(Notify::new()),
            metrics: Arc::default(),
        })
    }

    /// Wakes the notifier now (call after a change that enqueued notifications).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The notifier's counters.
    pub fn metrics(&self) -> Arc<NotifyMetrics> {
        self.metrics.clone()
    }

    /// Delivers until `stop`: a round whenever woken, at least every `poll`.
    pub async fn run(self, poll: Duration, stop: CancellationToken) {
        loop {
            if stop.is_cancelled() {
                return;
            }
            let more = match self.round(now_ms()).await {
                Ok(s) => s.delivered + s.failed > 0,
                Err(e) => {
                    tracing::error!(error = %e, "notifier: round failed");
                    false
                }
            };
            if more {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    /// One round: sends what is due at `now`.
    pub async fn round(&self, now: Millis) -> Result<RoundStats> {
        let due = self.store.outbox_due(now, 1000).await?;
        let mut stats = RoundStats::default();
        if due.is_empty() {
            return Ok(stats);
        }
        let mut by_channel: BTreeMap<String, Vec<OutboxMessage>> = BTreeMap::new();
        for m in due {
            by_channel.entry(m.channel.clone()).or_default().push(m);
        }
        let mut sends = Vec::new();
        for (name, msgs) in by_channel {
            let Some(ch) = self.cfg.channels.iter().find(|c| c.name() == name) else {
                let ids: Vec<i64> = msgs.iter().map(|m| m.id).collect();
                let err = format!("channel {name:?} is no longer configured; kept until it is");
                tracing::warn!(channel = %name, count = ids.len(), "notifier: {err}");
                self.store
                    .outbox_failed(&ids, now + ms(self.cfg.max_retry_backoff), &err)
                    .await?;
                stats.failed += ids.len() as u64;
                continue;
            };
            if msgs.len() > self.cfg.digest_threshold.max(1) {
                sends.push(self.send_digest(ch, msgs));
            } else {
                for m in msgs {
                    sends.push(self.send_one(ch, m));
                }
            }
        }
        // Sends run concurrently; each marks its own result.
        let results = futures_join(sends).await;
        for r in results {
            let (ids, outcome, digest) = r;
            match outcome {
                Ok(()) => {
                    self.store.outbox_delivered(&ids, now_ms()).await?;
                    stats.delivered += ids.len() as u64;
                    stats.digests += u64::from(digest);
                    self.metrics
                        .delivered
                        .fetch_add(ids.len() as u64, Ordering::Relaxed);
                    if digest {
                        self.metrics.digests.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err((attempts, e)) => {
                    let retry_at = now_ms() + backoff_ms(attempts, self.cfg.max_retry_backoff);
                    tracing::warn!(error = %e, count = ids.len(), "notifier: delivery failed; will retry");
                    self.store
                        .outbox_failed(&ids, retry_at, &e.to_string())
                        .await?;
                    stats.failed += ids.len() as u64;
                    self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(stats)
    }

    fn send_one(&self, ch: &ChannelConfig, m: OutboxMessage) -> SendFuture {
        let this = self.clone();
        let ch = ch.clone();
        Box::pin(async move {
            let r = this
                .deliver(&ch, &m.idempotency_key, &m.event, &m.payload)
                .await;
            (vec![m.id], r.map_err(|e| (m.attempts, e)), false)
        })
    }

    fn send_digest(&self, ch: &ChannelConfig, msgs: Vec<OutboxMessage>) -> SendFuture {
        let this = self.clone();
        let ch = ch.clone();
        Box::pin(async move {
            let ids: Vec<i64> = msgs.iter().map(|m| m.id).collect();
            let first = ids.first().copied().unwrap_or(0);
            let last = ids.last().copied().unwrap_or(0);
            let key = format!("digest-{}-{first}-{last}", ch.name());
            let attempts = msgs.iter().map(|m| m.attempts).max().unwrap_or(0);
            let payload = serde_json::json!({
                "event": "digest",
                "idempotency_key": key,
                "count": msgs.len(),
                "notifications": msgs.iter().map(|m| &m.payload).collect::<Vec<_>>(),
            });
            let r = this.deliver(&ch, &key, "digest", &payload).await;
            (ids, r.map_err(|e| (attempts, e)), true)
        })
    }

    async fn deliver(
        &self,
        ch: &ChannelConfig,
        key: &str,
        event: &str,
        payload: &serde_json::Value,
    ) -> Result<()> {
        match ch {
            ChannelConfig::Webhook {
                name,
                url,
                secret,
                template,
                timeout,
            } => {
                webhook::send(
                    &self.http,
                    name,
                    url,
                    secret,
                    template.as_deref(),
                    *timeout,
                    key,
                    event,
                    payload,
                )
                .await
            }
            ChannelConfig::Email { .. } => email::send(ch, key, event, payload).await,
        }
    }
}

type SendOutcome = (Vec<i64>, std::result::Result<(), (i64, Error)>, bool);
type SendFuture = std::pin::Pin<Box<dyn std::future::Future<Output = SendOutcome> + Send>>;

/// Runs the sends at most 16 at a time.
async fn futures_join(sends: Vec<SendFuture>) -> Vec<SendOutcome> {
    let mut out = Vec::with_capacity(sends.len());
    let mut set = tokio::task::JoinSet::new();
    let mut it = sends.into_iter();
    loop {
        while set.len() < 16 {
            match it.next() {
                Some(f) => {
                    set.spawn(f);
                }
                None => break,
            }
        }
        match set.join_next().await {
            Some(Ok(r)) => out.push(r),
            Some(Err(e)) => tracing::error!(error = %e, "notifier: a send task failed"),
            None => break,
        }
    }
    out
}

/// 1 s, 2 s, 4 s, ... capped at `max`, with ±20 % jitter.
fn backoff_ms(attempts: i64, max: Duration) -> i64 {
    use rand::Rng;
    let base = 1000_i64.saturating_mul(1_i64 << attempts.clamp(0, 20));
    let capped = base.min(ms(max).max(1000));
    let jitter = rand::rng().random_range(0.8..1.2);
    (capped as f64 * jitter) as i64
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(60);
        let b0 = backoff_ms(0, max);
        assert!((800..=1200).contains(&b0), "{b0}");
        let b3 = backoff_ms(3, max);
        assert!((6400..=9600).contains(&b3), "{b3}");
        let b30 = backoff_ms(30, max);
        assert!((48_000..=72_000).contains(&b30), "{b30}");
    }
}
