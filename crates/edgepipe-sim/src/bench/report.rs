//! [`BenchReport`]: the result of one load-generator run.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// What one [`run_ingest`](super::run_ingest) measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Connections used.
    pub connections: usize,
    /// QoS used.
    pub qos: u8,
    /// Readings per message.
    pub batch: usize,
    /// Target total msgs/s (`None`: as fast as possible).
    pub rate: Option<u64>,
    /// Messages written to the network.
    pub messages_sent: u64,
    /// Messages acknowledged by PUBACK (QoS 1); with QoS 0, messages written to the network.
    pub messages_acked: u64,
    /// `messages_acked x batch`.
    pub readings_acked: u64,
    /// From the start of sending (all connections already up) to the last acknowledgement
    /// (QoS 1) or the last write (QoS 0).
    #[serde(rename = "elapsed_s", serialize_with = "secs")]
    pub elapsed: Duration,
    /// `messages_acked / elapsed`.
    pub msgs_per_s: f64,
    /// `readings_acked / elapsed`.
    pub readings_per_s: f64,
    /// Median PUBACK latency in µs (QoS 1 only).
    pub latency_p50_us: Option<u64>,
    /// 99th percentile PUBACK latency in µs (QoS 1 only).
    pub latency_p99_us: Option<u64>,
    /// Largest PUBACK latency in µs (QoS 1 only).
    pub latency_max_us: Option<u64>,
    /// PUBACKs whose latency was measured.
    pub latency_samples: u64,
    /// Connection errors during the run (each followed by a reconnect attempt).
    pub errors: u64,
    /// Times a connection stopped sending because the next packet id was still unacknowledged
    /// while later ones were: the server acknowledged out of order (rumqttc reuses packet ids
    /// `1..=inflight` in turn and waits for that one id's PUBACK before it sends again).
    pub ack_order_stalls: u64,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl BenchReport {
    /// The report as a JSON object (durations in seconds, latencies in µs, `null` where not
    /// measured).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn us(v: Option<u64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v >= 10_000 => format!("{:.1}ms", v as f64 / 1000.0),
        Some(v) => format!("{v}us"),
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = match self.rate {
            Some(r) => format!("{r} msg/s"),
            None => "max rate".to_owned(),
        };
        write!(
            f,
            "qos{} conns={} batch={} {rate}: {} msgs acked in {:.2}s = {:.0} msgs/s, {:.0} readings/s",
            self.qos,
            self.connections,
            self.batch,
            self.messages_acked,
            self.elapsed.as_secs_f64(),
            self.msgs_per_s,
            self.readings_per_s,
        )?;
        if self.qos > 0 {
            write!(
                f,
                "; PUBACK p50 {} p99 {} max {}",
                us(self.latency_p50_us),
                us(self.latency_p99_us),
                us(self.latency_max_us)
            )?;
        }
        write!(f, "; {} errors", self.errors)?;
        if self.ack_order_stalls > 0 {
            write!(f, "; {} out-of-order ack stalls", self.ack_order_stalls)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_one_line_and_json() {
        let r = BenchReport {
            connections: 2,
            qos: 1,
            batch: 10,
            rate: Some(1000),
            messages_sent: 2000,
            messages_acked: 2000,
            readings_acked: 20_000,
            elapsed: Duration::from_secs(2),
            msgs_per_s: 1000.0,
            readings_per_s: 10_000.0,
            latency_p50_us: Some(250),
            latency_p99_us: Some(12_500),
            latency_max_us: Some(40_000),
            latency_samples: 2000,
            errors: 0,
            ack_order_stalls: 0,
        };
        let line = r.to_string();
        assert!(!line.contains('\n'));
        assert!(
            line.contains("1000 msgs/s") && line.contains("10000 readings/s"),
            "{line}"
        );
        assert!(line.contains("p50 250us p99 12.5ms max 40.0ms"), "{line}");
        let j = r.to_json();
        assert_eq!(j["elapsed_s"], 2.0);
        assert_eq!(j["latency_p99_us"], 12_500);
        assert_eq!(j["readings_acked"], 20_000);
        assert_eq!(j["ack_order_stalls"], 0);
        assert!(!line.contains("out-of-order"), "{line}");
        let stalled = BenchReport {
            ack_order_stalls: 3,
            ..r.clone()
        };
        assert!(stalled.to_string().ends_with("; 3 out-of-order ack stalls"));
        let q0 = BenchReport {
            qos: 0,
            latency_p50_us: None,
            ..r
        };
        assert!(!q0.to_string().contains("PUBACK"));
        assert!(q0.to_json()["latency_p50_us"].is_null());
    }
}
