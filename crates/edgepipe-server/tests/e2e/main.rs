//! End-to-end tests: the real `edgepipe` binary on ephemeral ports, driven by clients we did not
//! write (mosquitto_pub, paho-mqtt, curl, pyarrow, DuckDB, pyspark, moto's S3 server).

mod cases;
mod cli;
mod dashboard;
mod detect;
mod durability;
mod http;
mod lake;
mod mqtt;
mod support;
mod tls;
