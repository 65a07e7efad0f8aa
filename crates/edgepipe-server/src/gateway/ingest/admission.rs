//! What the ingestor checks about who may send what, beyond the token: how device
//! certificates are admitted, the per-address backoff after failed logins, the limit of
//! distinct metric names per device. Set once by the server at start.

use edgepipe_types::DeviceId;

use super::{Ingestor, Rejection};

impl Ingestor {
    /// Sets how device certificates are admitted (`[tls]`).
    pub fn with_cert_rules(mut self, rules: crate::gateway::identity::CertRules) -> Self {
        self.cert_rules = rules;
        self
    }

    /// Sets the per-address backoff after authentication failures (`limits.auth_backoff_*`).
    pub fn with_auth_guard(mut self, guard: crate::gateway::auth_guard::AuthGuard) -> Self {
        self.auth_guard = guard;
        self
    }

    /// Sets the limit of distinct metric names per device (`limits.max_metrics_per_device`).
    pub fn with_metric_limit(mut self, limit: usize) -> Self {
        self.metric_names = crate::gateway::cardinality::CardinalityGuard::new(limit);
        self
    }

    /// Refuses (into the dead letters) a message that would take `device` past its limit of
    /// distinct metric names.
    pub(super) fn check_metric_names(
        &self,
        device: &DeviceId,
        readings: &[edgepipe_types::Reading],
    ) -> Result<(), Rejection> {
        self.metric_names
            .admit(device.as_str(), readings.iter().map(|r| r.metric.as_str()))
            .map_err(|would_have| Rejection::TooManyMetrics {
                device: device.to_string(),
                would_have,
                limit: self.metric_names.limit(),
            })
    }

    /// The per-address backoff after authentication failures.
    pub fn auth_guard(&self) -> &crate::gateway::auth_guard::AuthGuard {
        &self.auth_guard
    }

    /// How device certificates are admitted.
    pub fn cert_rules(&self) -> crate::gateway::identity::CertRules {
        self.cert_rules
    }
}
