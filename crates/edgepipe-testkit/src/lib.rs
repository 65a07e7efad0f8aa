//! `edgepipe-testkit`: what the end-to-end suites of the server and the agent share, so each
//! does not carry its own copy: launching a real `edgepipe serve` on ephemeral ports and
//! stopping it (kill -9, or SIGINT and the ordered shutdown), running the suites' Python peers
//! (paho-mqtt, pyarrow, DuckDB, pyspark, webhook and Modbus servers) with errors that name the
//! peer, compiling LD_PRELOAD shims, and waiting for a condition.
//!
//! Test code only: a dev-dependency of the crates with e2e suites, never of a binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// What the suites' tests return.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// A running `edgepipe serve`, killed (and reaped) when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    /// The process.
    pub child: Child,
    /// Its MQTT address, as it printed it.
    pub mqtt: SocketAddr,
    /// Its HTTP address, as it printed it.
    pub http: SocketAddr,
    /// Whether `http` serves HTTPS (the server has a certificate).
    pub https: bool,
    /// Its MQTT over TLS address, when it has a certificate.
    pub mqtts: Option<SocketAddr>,
    /// Its MQTT over WebSocket address (`ws://ADDR/mqtt`), when it has one.
    pub ws: Option<SocketAddr>,
    /// Its MQTT over WebSocket over TLS address (`wss://ADDR/mqtt`), when it has one.
    pub wss: Option<SocketAddr>,
    /// Its data directory.
    pub data: PathBuf,
}

impl ServerProcess {
    /// Starts `bin serve --data-dir DATA --mqtt-addr MQTT --http-addr HTTP EXTRA...` with `env`
    /// added, and waits for its first line ("edgepipe serving: mqtt://A  http://B  data: D"),
    /// which it prints once both listeners are bound.
    pub fn start(
        bin: &Path,
        data: &Path,
        mqtt: &str,
        http: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestResult<Self> {
        Self::start_logging(bin, data, (mqtt, http), extra, env, None)
    }

    /// Like [`start`](Self::start), with the server's stderr (its log) written to `log`
    /// instead of the test's, for tests that read what it said.
    pub fn start_logging(
        bin: &Path,
        data: &Path,
        (mqtt, http): (&str, &str),
        extra: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> TestResult<Self> {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(bin)
            .envs(env.iter().copied())
            .args(["serve", "--data-dir"])
            .arg(data)
            .args(["--mqtt-addr", mqtt, "--http-addr", http])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = |scheme: &str| -> TestResult<SocketAddr> {
            Ok(line
                .split(scheme)
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .map(|s| s.trim_end_matches("/mqtt"))
                .ok_or_else(|| format!("unexpected first line: {line:?}"))?
                .parse()?)
        };
        let https = line.contains("https://");
        let http = addr(if https { "https://" } else { "http://" });
        let (mqtt, http) = match (addr("mqtt://"), http) {
            (Ok(m), Ok(h)) => (m, h),
            (Err(e), _) | (_, Err(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let mqtts = addr("mqtts://").ok();
        let ws = addr(" ws://").ok();
        let wss = addr("wss://").ok();
        Ok(Self {
            child,
            mqtt,
            http,
            https,
            mqtts,
            ws,
            wss,
            data: data.to_path_buf(),
        })
    }

    /// kill -9, and reap it.
    pub fn kill9(&mut self) -> TestResult {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Ctrl-C (SIGINT), the ordered shutdown, and waits up to `within` for the exit; a server
    /// still running then is killed and that is an error.
    pub fn stop_within(&mut self, within: Duration) -> TestResult<ExitStatus> {
        self.signal_and_wait("INT", within)
    }

    /// Sends `signal` (`INT`, `TERM`, ...) with `kill` and waits up to `within` for the exit; a
    /// server still running then is killed and that is an error.
    pub fn signal_and_wait(&mut self, signal: &str, within: Duration) -> TestResult<ExitStatus> {
        Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                return Err(format!("server did not stop within {within:?} of SIG{signal}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback (free when asked; tests bind it at once).
pub fn free_port() -> TestResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `f` every 50 ms until it is true (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A Python peer script as a command to add arguments and environment to.
pub fn python_peer(script: &Path) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    cmd
}

/// Runs a Python peer to completion; a peer that cannot start or fails is an error naming it,
/// with its stderr (its Python packages come from .ci/run).
pub fn run_peer(name: &str, cmd: &mut Command) -> TestResult<Output> {
    let out = cmd
        .output()
        .map_err(|e| format!("python3 {name}: {e} (python3 comes from .ci/run)"))?;
    if !out.status.success() {
        return Err(format!(
            "{name} failed ({}; its Python packages come from .ci/run): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(out)
}

/// Runs a Python peer to completion and parses what it printed as JSON.
pub fn peer_json(name: &str, cmd: &mut Command) -> TestResult<serde_json::Value> {
    Ok(serde_json::from_slice(&run_peer(name, cmd)?.stdout)?)
}

/// Compiles the C file `source` into an LD_PRELOAD shim `dir/<stem>.so` with the system C
/// compiler.
pub fn build_shim(dir: &Path, source: &Path) -> TestResult<PathBuf> {
    let stem = source.file_stem().ok_or("shim source has no name")?;
    let shim = dir.join(stem).with_extension("so");
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&shim)
        .arg(source)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("cc (gcc, present on the CI machine): {e}"))?;
    if !cc.status.success() {
        return Err(format!(
            "cc {}: {}",
            source.display(),
            String::from_utf8_lossy(&cc.stderr)
        )
        .into());
    }
    Ok(shim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_peer_is_an_error_naming_it_and_a_good_one_gives_its_json() -> TestResult {
        let dir = std::env::temp_dir();
        let bad = dir.join(format!("edgepipe-testkit-bad-{}.py", std::process::id()));
        std::fs::write(&bad, "import sys\nsys.stderr.write('boom')\nsys.exit(3)\n")?;
        let err = run_peer("bad.py", &mut python_peer(&bad))
            .err()
            .ok_or("a failing peer must be an error")?
            .to_string();
        assert!(err.contains("bad.py") && err.contains("boom"), "{err}");
        let good = dir.join(format!("edgepipe-testkit-good-{}.py", std::process::id()));
        std::fs::write(&good, "print('{\"n\": 2}')\n")?;
        assert_eq!(peer_json("good.py", &mut python_peer(&good))?["n"], 2);
        let _ = std::fs::remove_file(bad);
        let _ = std::fs::remove_file(good);
        Ok(())
    }

    #[test]
    fn wait_until_gives_up_after_its_timeout() {
        assert!(wait_until(Duration::from_millis(10), || true));
        assert!(!wait_until(Duration::from_millis(60), || false));
    }
}
