//! Durations in configuration, written as humantime strings (`"500ms"`, `"30s"`, `"5m"`): the
//! one serde adapter every edgepipe config struct uses (`#[serde(with = "...")]`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Writes `d` as a humantime string.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// Reads a humantime string, naming the bad value in the error.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?}: {e} (write e.g. \"500ms\")"
        ))
    })
}
