//! Store-and-forward under failure: a 60 s server outage at 5,000 readings/s, kill -9 of the
//! agent during outage and catch-up, and a disk budget that must shed.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::*;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Tiny deterministic PRNG for kill moments (the seed is printed so a failure can be replayed).
struct Rng(u64);
impl Rng {
    fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}

fn generator(rate: u32, limit: u64) -> String {
    format!(
        r#"
[[collectors]]
type = "generator"
name = "gen"
rate = {rate}
series = 10
limit = {limit}
"#
    )
}

fn config_with_rate(
    dir: &std::path::Path,
    id: &str,
    server: &str,
    token: &str,
    rate: u32,
    limit: u64,
    catch_up: u64,
) -> TestResult<std::path::PathBuf> {
    let path = agent_config(dir, id, server, token, &generator(rate, limit))?;
    let text = std::fs::read_to_string(&path)?.replace(
        "connect_timeout = \"2s\"\n",
        &format!("connect_timeout = \"2s\"\ncatch_up_rate = {catch_up}\n"),
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Server down for 60 s while the agent ingests 5,000 readings/s: nothing is lost or doubled,
/// the backlog drains no faster than `catch_up_rate` while live data goes first, and each lane
/// of the stream arrives in sequence order.
#[test]
fn server_outage_of_60s_at_5000_per_s_loses_nothing_and_drains_at_the_cap() -> TestResult {
    const RATE: u32 = 5000;
    const CAP: u64 = 20_000;
    const LIMIT: u64 = 5000 * 85;
    let tmp = tempfile::tempdir()?;
    let srv = tmp.path().join("server");
    let token = add_device(&srv, "gw-outage")?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut server = Server::start(&srv, &addr)?;
    let cfg = config_with_rate(tmp.path(), "gw-outage", &addr, &token, RATE, LIMIT, CAP)?;
    let agent = Agent::start(&cfg)?;
    std::thread::sleep(Duration::from_secs(3));
    let t_down = now_ms();
    server.kill9()?;
    std::thread::sleep(Duration::from_secs(60));
    let depth = agent.metric("edgepipe_agent_queue_depth{stream=\"telemetry\"}");
    assert!(depth > 100.0, "the outage built no backlog: {depth}");
    let t_up = now_ms();
    let server = Server::start(&srv, &addr)?;
    let done = wait_until(Duration::from_secs(180), || {
        agent.metric("edgepipe_agent_readings_sent_total{stream=\"telemetry\"}") >= LIMIT as f64
    });
    assert!(done, "not everything was sent: {:?}", agent.metrics()?);
    agent.stop()?;
    server.stop()?;

    let stored = stored_at_server(&srv, "gw-outage")?;
    assert_exactly_once(&generator_counts(&stored, "gen"), LIMIT as i64);

    let telemetry: Vec<&Stored> = stored
        .iter()
        .filter(|s| s.origin.as_ref().is_some_and(|(st, _)| st == "telemetry"))
        .collect();
    // Order: by seq the readings are exactly the production order; in arrival order the batches
    // form at most two in-order lanes (backlog and live).
    let mut by_seq: Vec<&Stored> = telemetry.clone();
    by_seq.sort_by_key(|s| s.origin.as_ref().map(|o| o.1));
    let values: Vec<i64> = by_seq
        .iter()
        .flat_map(|s| s.readings.iter().filter_map(|r| int_value(&r.2)))
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "seq order is not production order"
    );
    let arrival: Vec<u64> = telemetry
        .iter()
        .filter_map(|s| s.origin.as_ref().map(|o| o.1))
        .collect();
    let lanes = increasing_lanes(&arrival);
    assert!(lanes <= 2, "arrival order needs {lanes} in-order lanes");

    // Backlog: batches produced during the outage (first reading well before the restart).
    let backlog: Vec<&&Stored> = telemetry
        .iter()
        .filter(|s| s.received_at >= t_up && s.readings.first().is_some_and(|r| r.1 < t_up - 1000))
        .collect();
    let n: usize = backlog.iter().map(|s| s.readings.len()).sum();
    let first = backlog.iter().map(|s| s.received_at).min().unwrap_or(0);
    let last = backlog.iter().map(|s| s.received_at).max().unwrap_or(0);
    let rate = n as f64 / ((last - first).max(1) as f64 / 1000.0);
    eprintln!(
        "outage {} ms: backlog {n} readings drained in {} ms = {rate:.0}/s (cap {CAP}/s)",
        t_up - t_down,
        last - first
    );
    assert!(n as u64 >= 5000 * 50, "backlog too small: {n}");
    // The token bucket allows a burst of a quarter second on top of the rate.
    assert!(
        rate <= CAP as f64 * 1.1 + (CAP as f64 / 4.0) / ((last - first).max(1) as f64 / 1000.0),
        "backlog drained at {rate:.0}/s, above the cap of {CAP}/s"
    );
    // Live first: fresh batches arrived while the backlog was still draining.
    let live_during_catch_up = telemetry
        .iter()
        .any(|s| s.readings.first().is_some_and(|r| r.1 > t_up + 1000) && s.received_at < last);
    assert!(
        live_during_catch_up,
        "no live batch arrived during catch-up"
    );
    Ok(())
}

/// kill -9 of the agent at random moments during the outage and during the catch-up: every
/// reading the generator produced is at the server exactly once.
#[test]
fn kill9_of_the_agent_during_outage_and_catch_up_stores_every_reading_exactly_once() -> TestResult {
    const LIMIT: u64 = 5000 * 30;
    let seed = (now_ms() as u64) | 1;
    eprintln!("kill -9 schedule seed {seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir()?;
    let srv = tmp.path().join("server");
    let token = add_device(&srv, "gw-kill")?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut server = Server::start(&srv, &addr)?;
    let cfg = config_with_rate(tmp.path(), "gw-kill", &addr, &token, 5000, LIMIT, 20_000)?;
    let mut agent = Agent::start(&cfg)?;
    std::thread::sleep(Duration::from_secs(2));
    server.kill9()?;
    let mut kills = 0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(rng.next_ms(500, 3000)));
        agent.kill9()?;
        kills += 1;
        agent = Agent::start(&cfg)?;
    }
    std::thread::sleep(Duration::from_secs(1));
    let server = Server::start(&srv, &addr)?;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(rng.next_ms(300, 2500)));
        agent.kill9()?;
        kills += 1;
        agent = Agent::start(&cfg)?;
    }
    assert!(kills >= 5);
    // Done when the generator has stopped producing and the queue is empty.
    let start = Instant::now();
    let mut last = (-1.0, Instant::now());
    let done = wait_until(Duration::from_secs(180), || {
        let received = agent.metric("edgepipe_agent_readings_received_total");
        if received != last.0 {
            last = (received, Instant::now());
            return false;
        }
        start.elapsed() > Duration::from_secs(10)
            && last.1.elapsed() > Duration::from_secs(3)
            && agent.metric("edgepipe_agent_queue_depth{stream=\"telemetry\"}") == 0.0
            && agent.metric("edgepipe_agent_uplink_state") == 0.0
    });
    assert!(done, "agent did not drain: {:?}", agent.metrics()?);
    agent.stop()?;
    server.stop()?;
    let stored = stored_at_server(&srv, "gw-kill")?;
    assert_exactly_once(&generator_counts(&stored, "gen"), LIMIT as i64);
    Ok(())
}

/// A disk budget far below the outage's volume: the oldest unsent readings are shed, a gap with
/// their exact number goes upstream, and every other reading arrives once.
#[test]
fn disk_budget_exceeded_records_a_gap_with_the_exact_shed_count() -> TestResult {
    const LIMIT: u64 = 20_000;
    let tmp = tempfile::tempdir()?;
    let srv = tmp.path().join("server");
    let token = add_device(&srv, "gw-budget")?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    // No server yet: everything queues, and the budget sheds.
    let extra = format!(
        r#"
[queue]
segment_bytes = 8192
batch_max_readings = 100
[[streams]]
name = "telemetry"
max_bytes = 32768
[[collectors]]
type = "generator"
name = "gen"
rate = 4000
series = 10
limit = {LIMIT}
"#
    );
    let cfg = agent_config(tmp.path(), "gw-budget", &addr, &token, &extra)?;
    let agent = Agent::start(&cfg)?;
    // received counts collector input only (written also counts the health stream).
    let produced = wait_until(Duration::from_secs(60), || {
        agent.metric("edgepipe_agent_readings_received_total") >= LIMIT as f64
            && agent.metric("edgepipe_agent_gaps_total{stream=\"telemetry\"}") >= 1.0
    });
    assert!(
        produced,
        "generator did not finish or no gap: {:?}",
        agent.metrics()?
    );
    let server = Server::start(&srv, &addr)?;
    let drained = wait_until(Duration::from_secs(120), || {
        agent.metric("edgepipe_agent_readings_sent_total{stream=\"telemetry\"}")
            + agent.metric("edgepipe_agent_readings_shed_total{stream=\"telemetry\"}")
            >= LIMIT as f64
            && agent.metric("edgepipe_agent_queue_depth{stream=\"telemetry\"}") == 0.0
            && agent.metric("edgepipe_agent_queue_depth{stream=\"alerts\"}") == 0.0
            && agent.metric("edgepipe_agent_readings_sent_total{stream=\"alerts\"}") > 0.0
    });
    assert!(drained, "agent did not drain: {:?}", agent.metrics()?);
    let shed_metric = agent.metric("edgepipe_agent_readings_shed_total{stream=\"telemetry\"}");
    agent.stop()?;
    server.stop()?;

    let stored = stored_at_server(&srv, "gw-budget")?;
    let counts = generator_counts(&stored, "gen");
    assert!(
        counts.values().all(|c| *c == 1),
        "a reading was stored twice"
    );
    let gap_total: i64 = stored
        .iter()
        .flat_map(|s| s.readings.iter())
        .filter(|(m, _, _)| m == "agent.gap.telemetry.count")
        .filter_map(|(_, _, v)| int_value(v))
        .sum();
    let missing: Vec<i64> = (0..LIMIT as i64)
        .filter(|i| !counts.contains_key(i))
        .collect();
    eprintln!(
        "budget: {} stored, {} shed per the gap events, {} missing",
        counts.len(),
        gap_total,
        missing.len()
    );
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &m in &missing {
        match runs.last_mut() {
            Some(r) if r.1 + 1 == m => r.1 = m,
            _ => runs.push((m, m)),
        }
    }
    let gaps: Vec<(i64, i64)> = stored
        .iter()
        .flat_map(|s| s.readings.iter())
        .filter(|(m, _, _)| m == "agent.gap.telemetry.count")
        .map(|(_, ts, v)| (*ts, int_value(v).unwrap_or(-1)))
        .collect();
    eprintln!("missing runs {runs:?}; gap events (to_ts, count) {gaps:?}");
    if gap_total as usize != missing.len() {
        let dl = std::process::Command::new(server_bin()?)
            .args(["deadletters", "--data-dir"])
            .arg(&srv)
            .arg("list")
            .output()?;
        eprintln!("dead letters:\n{}", String::from_utf8_lossy(&dl.stdout));
        let telemetry: Vec<u64> = stored
            .iter()
            .filter_map(|s| {
                s.origin
                    .as_ref()
                    .filter(|o| o.0 == "telemetry")
                    .map(|o| o.1)
            })
            .collect();
        eprintln!("telemetry seqs in arrival order: {telemetry:?}");
    }
    assert!(gap_total > 0, "no gap event reached the server");
    assert_eq!(
        gap_total as usize,
        missing.len(),
        "gap count is not the number of shed readings"
    );
    assert_eq!(shed_metric as i64, gap_total);
    assert_eq!(counts.len() + missing.len(), LIMIT as usize);
    // The lake's `gaps` view reports the same shed count.
    let out = std::process::Command::new(server_bin()?)
        .args(["query", "--format", "csv", "--data-dir"])
        .arg(&srv)
        .arg("SELECT sum(readings_shed) AS n, min(cause) AS cause FROM gaps WHERE agent = 'gw-budget' AND stream = 'telemetry'")
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    assert_eq!(
        text,
        format!("n,cause\n{gap_total},disk_budget\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Shed readings are the oldest: one contiguous run from the start of a segment onward.
    assert!(
        missing.windows(2).all(|w| w[1] == w[0] + 1),
        "shed readings are not contiguous"
    );
    Ok(())
}

/// The other budget policy: with `full_policy = "reject"` nothing is shed; the generator waits
/// while the queue is full, and once the server is back every reading arrives exactly once.
#[test]
fn disk_budget_with_reject_policy_pauses_the_source_and_loses_nothing() -> TestResult {
    const LIMIT: u64 = 12_000;
    let tmp = tempfile::tempdir()?;
    let srv = tmp.path().join("server");
    let token = add_device(&srv, "gw-reject")?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let extra = format!(
        r#"
[queue]
segment_bytes = 8192
batch_max_readings = 100
full_policy = "reject"
[[streams]]
name = "telemetry"
max_bytes = 32768
[[collectors]]
type = "generator"
name = "gen"
rate = 4000
series = 10
limit = {LIMIT}
"#
    );
    let cfg = agent_config(tmp.path(), "gw-reject", &addr, &token, &extra)?;
    let agent = Agent::start(&cfg)?;
    // The queue fills and stays full: appends are refused, the generator waits.
    let full = wait_until(Duration::from_secs(30), || {
        agent.metric("edgepipe_agent_queue_bytes{stream=\"telemetry\"}") >= 24_000.0
    });
    assert!(full, "queue did not fill: {:?}", agent.metrics()?);
    std::thread::sleep(Duration::from_secs(2));
    let written = agent.metric("edgepipe_agent_readings_written_total");
    assert!(written < LIMIT as f64, "nothing was held back: {written}");
    let server = Server::start(&srv, &addr)?;
    let done = wait_until(Duration::from_secs(120), || {
        agent.metric("edgepipe_agent_readings_sent_total{stream=\"telemetry\"}") >= LIMIT as f64
    });
    assert!(done, "not everything was sent: {:?}", agent.metrics()?);
    assert_eq!(
        agent.metric("edgepipe_agent_gaps_total{stream=\"telemetry\"}"),
        0.0
    );
    agent.stop()?;
    server.stop()?;
    let stored = stored_at_server(&srv, "gw-reject")?;
    assert_exactly_once(&generator_counts(&stored, "gen"), LIMIT as i64);
    Ok(())
}

/// Shedding while online: the server returns while the generator still overflows the budget,
/// so live batches go out between shed ranges; every shed reading is still counted exactly.
#[test]
fn disk_budget_shedding_while_catching_up_counts_every_shed_reading() -> TestResult {
    const LIMIT: u64 = 20_000;
    let tmp = tempfile::tempdir()?;
    let srv = tmp.path().join("server");
    let token = add_device(&srv, "gw-budget2")?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let extra = format!(
        r#"
[queue]
segment_bytes = 8192
batch_max_readings = 100
[[streams]]
name = "telemetry"
max_bytes = 32768
[[collectors]]
type = "generator"
name = "gen"
rate = 4000
series = 10
limit = {LIMIT}
"#
    );
    let mut cfg_text = std::fs::read_to_string(agent_config(
        tmp.path(),
        "gw-budget2",
        &addr,
        &token,
        &extra,
    )?)?;
    // A slow catch-up keeps the backlog on disk long enough for the budget to bite while online.
    cfg_text = cfg_text.replace(
        "connect_timeout = \"2s\"\n",
        "connect_timeout = \"2s\"\ncatch_up_rate = 2000\n",
    );
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(&cfg, cfg_text)?;
    let agent = Agent::start(&cfg)?;
    assert!(
        wait_until(Duration::from_secs(30), || {
            agent.metric("edgepipe_agent_gaps_total{stream=\"telemetry\"}") >= 1.0
        }),
        "no gap while offline"
    );
    let server = Server::start(&srv, &addr)?;
    // Drained means every generated reading is acknowledged or counted as shed: a queue depth
    // of 0 alone can be read while the last partial batch is still being assembled.
    let drained = wait_until(Duration::from_secs(120), || {
        agent.metric("edgepipe_agent_readings_sent_total{stream=\"telemetry\"}")
            + agent.metric("edgepipe_agent_readings_shed_total{stream=\"telemetry\"}")
            >= LIMIT as f64
            && agent.metric("edgepipe_agent_queue_depth{stream=\"telemetry\"}") == 0.0
            && agent.metric("edgepipe_agent_queue_depth{stream=\"alerts\"}") == 0.0
    });
    assert!(drained, "agent did not drain: {:?}", agent.metrics()?);
    let shed_metric = agent.metric("edgepipe_agent_readings_shed_total{stream=\"telemetry\"}");
    agent.stop()?;
    server.stop()?;
    let stored = stored_at_server(&srv, "gw-budget2")?;
    let counts = generator_counts(&stored, "gen");
    assert!(
        counts.values().all(|c| *c == 1),
        "a reading was stored twice"
    );
    let gap_total: i64 = stored
        .iter()
        .flat_map(|s| s.readings.iter())
        .filter(|(m, _, _)| m == "agent.gap.telemetry.count")
        .filter_map(|(_, _, v)| int_value(v))
        .sum();
    let missing = (0..LIMIT as i64)
        .filter(|i| !counts.contains_key(i))
        .count();
    eprintln!(
        "online budget: {} stored, {gap_total} shed per gap events, {missing} missing",
        counts.len()
    );
    assert!(gap_total > 0);
    if gap_total as usize != missing {
        let dl = std::process::Command::new(server_bin()?)
            .args(["deadletters", "--data-dir"])
            .arg(&srv)
            .arg("list")
            .output()?;
        eprintln!("dead letters:\n{}", String::from_utf8_lossy(&dl.stdout));
        let missing_ids: Vec<i64> = (0..LIMIT as i64)
            .filter(|i| !counts.contains_key(i))
            .collect();
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for &m in &missing_ids {
            match runs.last_mut() {
                Some(r) if r.1 + 1 == m => r.1 = m,
                _ => runs.push((m, m)),
            }
        }
        eprintln!("missing runs {runs:?}");
    }
    assert_eq!(
        gap_total as usize, missing,
        "gap count is not the number of shed readings"
    );
    assert_eq!(shed_metric as i64, gap_total);
    Ok(())
}
