//! Wall-clock access, injected so domain code never reads `SystemTime::now()` itself: the one
//! `Clock` of `edgepipe-types`.

pub use edgepipe_types::clock::{Clock, SharedClock, SystemClock};
