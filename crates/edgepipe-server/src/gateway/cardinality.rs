//! The limit on distinct metric names per device (`limits.max_metrics_per_device`): a device
//! that invents names without end (a counter in the name, a bug, an attack) would make every
//! series structure downstream grow without bound. A message that would take a device past
//! the limit is refused whole into the dead-letter store (`too_many_metrics`); names the device
//! already has keep working. The names are remembered from the server's start (a restart lets
//! a device bring up to the limit anew; the lake keeps what was stored).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Shards of the per-device sets: every message of every MQTT worker passes here, so devices
/// on different shards do not wait for one lock.
const SHARDS: usize = 16;

/// Distinct metric names seen per device, bounded per device.
#[derive(Debug)]
pub struct CardinalityGuard {
    limit: usize,
    shards: [Mutex<HashMap<String, HashSet<String>>>; SHARDS],
}

impl CardinalityGuard {
    /// A guard allowing `limit` names per device (0: no limit, nothing remembered).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    /// Admits a message's metric names for `device`: Ok and remembered when the device stays
    /// within the limit; Err(how many names the device would have) otherwise, remembering
    /// nothing.
    pub fn admit<'a>(
        &self,
        device: &str,
        names: impl Iterator<Item = &'a str>,
    ) -> Result<(), usize> {
        if self.limit == 0 {
            return Ok(());
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        device.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        let mut seen = shard.lock().unwrap_or_else(|p| p.into_inner());
        // The device's key is allocated once, at its first message.
        if !seen.contains_key(device) {
            seen.insert(device.to_owned(), HashSet::new());
        }
        let Some(known) = seen.get_mut(device) else {
            return Ok(());
        };
        let mut new: HashSet<&str> = HashSet::new();
        for n in names {
            if !known.contains(n) {
                new.insert(n);
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let total = known.len() + new.len();
        if total > self.limit {
            return Err(total);
        }
        known.extend(new.into_iter().map(str::to_owned));
        Ok(())
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_keeps_its_names_and_may_not_go_past_the_limit() {
        let g = CardinalityGuard::new(3);
        assert_eq!(g.admit("d", ["a", "b"].into_iter()), Ok(()));
        assert_eq!(g.admit("d", ["a", "c", "c"].into_iter()), Ok(()));
        assert_eq!(g.admit("d", ["d", "e"].into_iter()), Err(5));
        assert_eq!(
            g.admit("d", ["a", "b", "c"].into_iter()),
            Ok(()),
            "known names still pass"
        );
        assert_eq!(
            g.admit("d", ["d"].into_iter()),
            Err(4),
            "nothing of the refused one was kept"
        );
        assert_eq!(
            g.admit("other", ["d", "e", "f"].into_iter()),
            Ok(()),
            "per device"
        );
        assert_eq!(
            CardinalityGuard::new(0).admit("d", ["x"; 5].into_iter()),
            Ok(())
        );
    }
}
