//! Backoff per client address after repeated authentication failures (password guessing over
//! MQTT or HTTP): after `after` failures within a minute, the address is refused without its
//! credentials being looked at, for 1 s, then 2 s, 4 s … up to 5 min while failures go on. A
//! success clears the address. Loopback addresses are exempt unless asked (local agents and
//! tools). Memory is bounded: at most [`MAX_ADDRESSES`] addresses are tracked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Most addresses tracked; beyond it the stalest entries are dropped.
pub const MAX_ADDRESSES: usize = 100_000;
const WINDOW_MS: i64 = 60_000;
const FIRST_BLOCK_MS: i64 = 1_000;
const MAX_BLOCK_MS: i64 = 300_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start_ms: i64,
    blocked_until_ms: i64,
    block_ms: i64,
    last_ms: i64,
}

/// The per-address failure record of a server.
#[derive(Debug)]
pub struct AuthGuard {
    after: u32,
    loopback: bool,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl AuthGuard {
    /// A guard that backs off after `after` failures per minute (0: never), loopback included
    /// when `loopback`.
    pub fn new(after: u32, loopback: bool) -> Self {
        Self {
            after,
            loopback,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn applies(&self, ip: IpAddr) -> bool {
        self.after > 0 && (self.loopback || !ip.is_loopback())
    }

    /// Whether `ip` may try to authenticate now; Err(ms to wait) while it backs off.
    pub fn check(&self, ip: IpAddr, now_ms: i64) -> Result<(), i64> {
        if !self.applies(ip) {
            return Ok(());
        }
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(&ip) {
            Some(e) if e.blocked_until_ms > now_ms => Err(e.blocked_until_ms - now_ms),
            _ => Ok(()),
        }
    }

    /// Records a failed authentication from `ip`; returns the block it started, if any.
    pub fn failed(&self, ip: IpAddr, now_ms: i64) -> Option<i64> {
        if !self.applies(ip) {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ADDRESSES && !entries.contains_key(&ip) {
            // Drop what is neither blocked nor recent, then the stalest tenth if still full.
            entries.retain(|_, e| e.blocked_until_ms > now_ms || now_ms - e.last_ms < WINDOW_MS);
            if entries.len() >= MAX_ADDRESSES {
                let mut ages: Vec<i64> = entries.values().map(|e| e.last_ms).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 10];
                entries.retain(|_, e| e.last_ms > cut);
            }
        }
        let e = entries.entry(ip).or_insert(Entry {
            failures: 0,
            window_start_ms: now_ms,
            blocked_until_ms: 0,
            block_ms: 0,
            last_ms: now_ms,
        });
        if now_ms - e.window_start_ms > WINDOW_MS && e.blocked_until_ms <= now_ms {
            e.failures = 0;
            e.window_start_ms = now_ms;
            e.block_ms = 0;
        }
        e.failures += 1;
        e.last_ms = now_ms;
        if e.failures < self.after {
            return None;
        }
        e.block_ms = if e.block_ms == 0 {
            FIRST_BLOCK_MS
        } else {
            (e.block_ms * 2).min(MAX_BLOCK_MS)
        };
        e.blocked_until_ms = now_ms + e.block_ms;
        Some(e.block_ms)
    }

    /// Records a success: the address starts afresh.
    pub fn succeeded(&self, ip: IpAddr) {
        if !self.applies(ip) {
            return;
        }
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_backs_off_after_repeated_failures_and_doubles_while_they_go_on() {
        let g = AuthGuard::new(5, false);
        let ip: IpAddr = "203.0.113.7".parse().expect("ip");
        let other: IpAddr = "203.0.113.8".parse().expect("ip");
        let t = 1_000_000;
        for i in 0..4 {
            assert_eq!(g.failed(ip, t + i), None);
            assert_eq!(g.check(ip, t + i), Ok(()));
        }
        assert_eq!(g.failed(ip, t + 4), Some(1_000));
        assert_eq!(g.check(ip, t + 5), Err(999));
        assert_eq!(
            g.check(other, t + 5),
            Ok(()),
            "other addresses are not affected"
        );
        assert_eq!(g.check(ip, t + 1_004), Ok(()));
        assert_eq!(
            g.failed(ip, t + 1_010),
            Some(2_000),
            "a failure after a block doubles it"
        );
        assert_eq!(g.failed(ip, t + 3_010), Some(4_000));
        g.succeeded(ip);
        assert_eq!(g.check(ip, t + 3_011), Ok(()));
        assert_eq!(g.failed(ip, t + 3_012), None, "a success starts afresh");
    }

    #[test]
    fn loopback_is_exempt_unless_asked_and_zero_turns_it_off() {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let g = AuthGuard::new(1, false);
        assert_eq!(g.failed(lo, 0), None);
        assert_eq!(g.check(lo, 1), Ok(()));
        let g = AuthGuard::new(1, true);
        assert_eq!(g.failed(lo, 0), Some(1_000));
        assert!(g.check(lo, 1).is_err());
        let off = AuthGuard::new(0, true);
        assert_eq!(off.failed(lo, 0), None);
    }

    #[test]
    fn old_failures_fall_out_of_the_window() {
        let g = AuthGuard::new(3, false);
        let ip: IpAddr = "198.51.100.1".parse().expect("ip");
        assert_eq!(g.failed(ip, 0), None);
        assert_eq!(g.failed(ip, 1), None);
        assert_eq!(
            g.failed(ip, 70_000),
            None,
            "the first two are older than a minute"
        );
        assert_eq!(g.failed(ip, 70_001), None);
        assert_eq!(g.failed(ip, 70_002), Some(1_000));
    }
}
