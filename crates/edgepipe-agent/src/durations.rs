//! Serde adapters for durations written as `"500ms"`, `"30s"` ([`dur`], [`opt_dur`]), used by
//! config.rs and every component's settings: the one adapter of `edgepipe-types`, under the
//! names the agent's modules use.

pub use edgepipe_types::duration_serde as dur;
pub use edgepipe_types::duration_serde::option as opt_dur;
