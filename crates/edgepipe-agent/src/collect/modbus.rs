//! `type = "modbus"`: polls registers of a Modbus TCP device (tokio-modbus) every `interval`.
//!
//! Each `[[collectors.registers]]` entry reads `holding` or `input` registers (or `coil`s) and
//! decodes them as `u16`, `i16`, `u32`, `i32` or `f32` (multi-register values big-endian, high
//! word first), then multiplies by `scale`. A failed connection or read is logged and counted
//! (`readings_rejected_total{reason="modbus"}`) and retried at the next interval; polling has no
//! source position (a reading not polled while the agent is down does not exist).

use std::net::SocketAddr;
use std::time::Duration;

use edgepipe_types::{Metric, Reading, TsSource, Value};
use serde::Deserialize;
use tokio_modbus::Slave;
use tokio_modbus::client::{Context, Reader};

use super::{Ctx, Error};
use crate::durations::dur;

/// `type = "modbus"` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// Device `ip:port`.
    pub addr: SocketAddr,
    /// Unit (slave) id. Default 1.
    #[serde(default = "one")]
    pub unit: u8,
    /// Poll interval. Default "1s".
    #[serde(default = "second", with = "dur")]
    pub interval: Duration,
    /// Give up one request after this long. Default "2s".
    #[serde(default = "two", with = "dur")]
    pub timeout: Duration,
    /// What to read.
    pub registers: Vec<RegisterConfig>,
}

fn one() -> u8 {
    1
}
fn second() -> Duration {
    Duration::from_secs(1)
}
fn two() -> Duration {
    Duration::from_secs(2)
}

/// One value to poll.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// Metric name for the value.
    pub metric: String,
    /// `holding` (default), `input` or `coil`.
    #[serde(default)]
    pub kind: RegisterKind,
    /// First register (0-based protocol address).
    pub address: u16,
    /// `u16` (default), `i16`, `u32`, `i32`, `f32`; coils are booleans.
    #[serde(default)]
    pub data_type: DataType,
    /// Multiplier applied to numeric values. Default 1 (integers stay integers).
    #[serde(default = "unit_scale")]
    pub scale: f64,
}

fn unit_scale() -> f64 {
    1.0
}

/// Register table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    /// Holding registers (function 0x03).
    #[default]
    Holding,
    /// Input registers (0x04).
    Input,
    /// Coils (0x01).
    Coil,
}

/// How registers decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// Unsigned 16-bit.
    #[default]
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// IEEE 754 single, two registers.
    F32,
}

impl DataType {
    /// Registers one value occupies.
    pub fn words(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 => 1,
            _ => 2,
        }
    }
}

/// Decodes `words` (high word first) as `t`, scaled.
pub fn decode(t: DataType, words: &[u16], scale: f64) -> Option<Value> {
    let w = |i: usize| words.get(i).copied();
    let wide = || Some((u32::from(w(0)?) << 16) | u32::from(w(1)?));
    let raw: Result<i64, f64> = match t {
        DataType::U16 => Ok(i64::from(w(0)?)),
        DataType::I16 => Ok(i64::from(w(0)? as i16)),
        DataType::U32 => Ok(i64::from(wide()?)),
        DataType::I32 => Ok(i64::from(wide()? as i32)),
        DataType::F32 => Err(f64::from(f32::from_bits(wide()?))),
    };
    match raw {
        Ok(i) if scale == 1.0 => Some(Value::I64(i)),
        Ok(i) => {
            Some(Value::F64(i as f64 * scale)).filter(|v| v.as_f64().is_some_and(f64::is_finite))
        }
        Err(f) => Some(Value::F64(f * scale)).filter(|v| v.as_f64().is_some_and(f64::is_finite)),
    }
}

async fn poll_once(
    cfg: &ModbusConfig,
    client: &mut Context,
    ts: i64,
) -> Result<Vec<Reading>, Error> {
    let mut out = Vec::new();
    for r in &cfg.registers {
        let fail = |reason: String| Error::Modbus {
            metric: r.metric.clone(),
            reason,
        };
        let metric = Metric::new(r.metric.as_str()).map_err(|e| fail(e.to_string()))?;
        let value = match r.kind {
            RegisterKind::Coil => {
                let bits = tokio::time::timeout(cfg.timeout, client.read_coils(r.address, 1))
                    .await
                    .map_err(|_| fail("timeout".into()))?
                    .map_err(|e| fail(e.to_string()))?
                    .map_err(|e| fail(format!("exception {e:?}")))?;
                bits.first().map(|b| Value::Bool(*b))
            }
            kind => {
                let n = r.data_type.words();
                let fut = async {
                    if kind == RegisterKind::Input {
                        client.read_input_registers(r.address, n).await
                    } else {
                        client.read_holding_registers(r.address, n).await
                    }
                };
                let words = tokio::time::timeout(cfg.timeout, fut)
                    .await
                    .map_err(|_| fail("timeout".into()))?
                    .map_err(|e| fail(e.to_string()))?
                    .map_err(|e| fail(format!("exception {e:?}")))?;
                decode(r.data_type, &words, r.scale)
            }
        };
        if let Some(value) = value {
            out.push(Reading {
                metric,
                ts,
                value,
                ts_source: TsSource::Device,
            });
        }
    }
    Ok(out)
}

/// Polls until cancelled.
pub async fn run(cfg: ModbusConfig, ctx: Ctx) -> Result<(), Error> {
    let mut tick = tokio::time::interval(cfg.interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<Context> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.cancel.cancelled() => return Ok(()),
        }
        if client.is_none() {
            match tokio::time::timeout(
                cfg.timeout,
                tokio_modbus::client::tcp::connect_slave(cfg.addr, Slave(cfg.unit)),
            )
            .await
            {
                Ok(Ok(c)) => client = Some(c),
                Ok(Err(e)) => {
                    tracing::warn!(collector = %ctx.name, error = %e, "modbus connect failed");
                    ctx.metrics.reject("modbus", 1);
                    continue;
                }
                Err(_) => {
                    tracing::warn!(collector = %ctx.name, "modbus connect timed out");
                    ctx.metrics.reject("modbus", 1);
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        match poll_once(&cfg, c, ctx.clock.now_ms()).await {
            Ok(readings) if readings.is_empty() => {}
            Ok(readings) => ctx.send(readings).await?,
            Err(e) => {
                tracing::warn!(collector = %ctx.name, error = %e, "modbus poll failed; reconnecting");
                ctx.metrics.reject("modbus", 1);
                client = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_decoding() {
        assert_eq!(
            decode(DataType::U16, &[65535], 1.0),
            Some(Value::I64(65535))
        );
        assert_eq!(decode(DataType::I16, &[65535], 1.0), Some(Value::I64(-1)));
        assert_eq!(decode(DataType::U32, &[1, 2], 1.0), Some(Value::I64(65538)));
        assert_eq!(
            decode(DataType::I32, &[0xffff, 0xfffe], 1.0),
            Some(Value::I64(-2))
        );
        let bits = 21.5f32.to_bits();
        assert_eq!(
            decode(DataType::F32, &[(bits >> 16) as u16, bits as u16], 1.0),
            Some(Value::F64(21.5))
        );
        assert_eq!(decode(DataType::U16, &[215], 0.1), Some(Value::F64(21.5)));
        assert_eq!(decode(DataType::U32, &[1], 1.0), None);
        let nan = f32::NAN.to_bits();
        assert_eq!(
            decode(DataType::F32, &[(nan >> 16) as u16, nan as u16], 1.0),
            None
        );
    }
}
