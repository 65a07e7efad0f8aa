//! After the WAL: the stages that consume the acknowledged readings (each a named WAL consumer
//! with its own checkpoint) and what they feed: the lake, detection and its models, cases and
//! alarms.

pub mod alarms;
pub mod cases;
pub mod detect;
pub mod lake;
pub mod models;
