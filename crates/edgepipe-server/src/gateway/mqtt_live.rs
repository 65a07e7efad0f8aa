//! Live MQTT connections that must end when their credentials do: a device disabled, or its
//! certificate revoked (`edgepipe devices disable|revoke-cert`, which may run in another
//! process), loses its open connections within a second, not at its next reconnect.
//!
//! Each worker thread keeps its own list (ntex connections live on one thread) and one ticker
//! that looks at the list only when the device registry changed.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::gateway::ingest::Ingestor;

/// How often each worker looks for a registry change.
const TICK: Duration = Duration::from_millis(250);

struct Live {
    device: String,
    cert_not_before_ms: Option<i64>,
    io: ntex::io::IoRef,
    alive: Weak<()>,
}

thread_local! {
    static LIVE: RefCell<Option<Vec<Live>>> = const { RefCell::new(None) };
}

/// Keeps a connection on this worker's list while the returned handle lives (the connection
/// state holds it).
pub(crate) fn track(device: &str, cert_not_before_ms: Option<i64>, io: ntex::io::IoRef) -> Rc<()> {
    let alive = Rc::new(());
    LIVE.with(|l| {
        if let Some(list) = l.borrow_mut().as_mut() {
            list.push(Live {
                device: device.to_owned(),
                cert_not_before_ms,
                io,
                alive: Rc::downgrade(&alive),
            });
        }
    });
    alive
}

/// Starts this worker's ticker (once per thread).
pub(crate) fn install(ing: Arc<Ingestor>) {
    let first = LIVE.with(|l| {
        let mut l = l.borrow_mut();
        if l.is_some() {
            return false;
        }
        *l = Some(Vec::new());
        true
    });
    if !first {
        return;
    }
    ntex::rt::spawn(async move {
        let mut seen = None;
        loop {
            ntex::time::sleep(TICK).await;
            let generation = match ing.devices().generation() {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "mqtt: device registry unreadable; open connections stay");
                    continue;
                }
            };
            let changed = seen != Some(generation);
            seen = Some(generation);
            LIVE.with(|l| {
                let mut l = l.borrow_mut();
                let Some(list) = l.as_mut() else { return };
                list.retain(|c| c.alive.strong_count() > 0 && !c.io.is_closed());
                if !changed {
                    return;
                }
                list.retain(|c| {
                    // `generation()` above read the registry again; no file access per connection.
                    let stay = ing.devices().may_stay(&c.device, c.cert_not_before_ms);
                    if !stay {
                        ing.metrics()
                            .connections_closed_by_revocation
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            device = %c.device,
                            by_certificate = c.cert_not_before_ms.is_some(),
                            "mqtt: closing a connection: the device was disabled or its certificate revoked"
                        );
                        c.io.close();
                    }
                    stay
                });
            });
        }
    });
}
