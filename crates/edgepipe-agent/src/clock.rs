//! Wall-clock access, injected so domain code never reads `SystemTime::now()` itself.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of event time in ms since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in ms since the epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// Shared clock handle.
pub type SharedClock = Arc<dyn Clock>;
