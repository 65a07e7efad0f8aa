//! The command line as people and scripts use it: every listing command takes one
//! `--format table|json|csv` flag and prints the same rows in each.

use std::path::Path;

use crate::support::*;

/// A listing command's output in `format`, run offline on `data`.
fn listing(data: &Path, cmd: &[&str], format: &str) -> TestResult<String> {
    let d = data.to_str().ok_or("path")?;
    let mut args = vec![cmd[0], "--data-dir", d];
    args.extend(&cmd[1..]);
    args.extend(["--format", format]);
    let out = edgepipe_ok(&args)?;
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn every_listing_prints_the_same_rows_as_a_table_json_and_csv() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let srv = Server::start(&data, &["--auto-register"])?;
    let base = now_ms() - 60_000;
    for dev in ["pump-1", "valve-2"] {
        let body: String = (0..5)
            .map(|i| {
                format!(
                    "{{\"ts\": {}, \"metrics\": {{\"t\": {i}}}}}\n",
                    base + i * 1000
                )
            })
            .collect();
        ingest_as(srv.http, dev, &body)?;
    }
    // A malformed payload: a dead letter to list (the answer is an error; not checked here).
    curl(&[
        "-s",
        "-H",
        "Authorization: Bearer e2e-auto-registered",
        "-H",
        "X-Device-Id: pump-1",
        "-H",
        "Content-Type: application/x-ndjson",
        "--data-binary",
        "{not json, with a \"quote\"",
        &format!("http://{}/api/v1/ingest", srv.http),
    ])?;
    let status = srv.stop()?;
    assert!(status.success(), "stop: exit {status}");
    let d = data.to_str().ok_or("path")?;
    edgepipe_ok(&[
        "users",
        "--data-dir",
        d,
        "add",
        "otto",
        "--role",
        "operator",
    ])?;

    // (command, columns, rows at least)
    let cases: [(&[&str], &[&str], usize); 7] = [
        (
            &["devices", "list"],
            &[
                "device",
                "enabled",
                "auto_registered",
                "by_certificate",
                "created_at_ms",
                "rotated_at_ms",
            ],
            2,
        ),
        (
            &["users", "list"],
            &["user", "role", "disabled", "created_at_ms"],
            1,
        ),
        (
            &["deadletters", "list"],
            &["id", "time_ms", "device", "reason", "detail", "raw"],
            1,
        ),
        (
            &["lake", "stats"],
            &["table", "files", "rows", "bytes", "bytes_per_row"],
            1,
        ),
        (
            &["lake", "stats", "--partitions"],
            &[
                "table",
                "partition",
                "files",
                "rows",
                "bytes",
                "bytes_per_row",
            ],
            1,
        ),
        (
            &["cases", "list"],
            &[
                "id",
                "severity",
                "state",
                "device",
                "assignee",
                "anomalies",
                "title",
            ],
            0,
        ),
        (
            &["models", "list"],
            &["promoted", "version", "series", "f1", "labels"],
            0,
        ),
    ];
    for (cmd, columns, at_least) in cases {
        let json = listing(&data, cmd, "json")?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&json)
            .map_err(|e| format!("{cmd:?} --format json: {e}\n{json}"))?;
        assert!(rows.len() >= at_least, "{cmd:?}: {json}");
        // The rows' objects carry the columns by name (`cases list` prints whole cases, as
        // the API does, under their own field names).
        if cmd[0] != "cases" {
            for r in &rows {
                for c in columns {
                    assert!(r.get(*c).is_some(), "{cmd:?}: no {c} in {r}");
                }
            }
        }
        let csv = listing(&data, cmd, "csv")?;
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some(columns.join(",").as_str()),
            "{cmd:?}:\n{csv}"
        );
        let csv_rows = read_csv_records(lines.collect::<Vec<_>>().join("\n").as_str());
        assert_eq!(
            csv_rows,
            rows.len(),
            "{cmd:?}: csv rows vs json rows\n{csv}"
        );
        let table = listing(&data, cmd, "table")?;
        let header: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
        assert_eq!(
            table
                .lines()
                .next()
                .map(|l| l.split_whitespace().collect::<Vec<_>>()),
            Some(header.iter().map(String::as_str).collect()),
            "{cmd:?}:\n{table}"
        );
        // Header, one line per row, the footer.
        assert_eq!(table.lines().count(), rows.len() + 2, "{cmd:?}:\n{table}");
    }
    let devices: Vec<serde_json::Value> =
        serde_json::from_str(&listing(&data, &["devices", "list"], "json")?)?;
    assert_eq!(devices[0]["device"], "pump-1");
    assert_eq!(devices[1]["enabled"], true);
    let lake: Vec<serde_json::Value> =
        serde_json::from_str(&listing(&data, &["lake", "stats"], "json")?)?;
    let readings = lake
        .iter()
        .find(|t| t["table"] == "readings")
        .ok_or("a readings table")?;
    assert_eq!(readings["rows"], 10, "{lake:?}");

    // A format no listing knows is refused, naming the ones it does.
    let out = edgepipe(&["devices", "--data-dir", d, "list", "--format", "yaml"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("yaml") && err.contains("table") && err.contains("csv"),
        "{err}"
    );
    // The older `--json` still works where it existed.
    let old = edgepipe_ok(&["cases", "--data-dir", d, "list", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&old.stdout)?;
    assert!(v.is_array(), "{v}");
    Ok(())
}

/// Records in CSV text (quoted fields may hold commas, quotes and line breaks).
fn read_csv_records(text: &str) -> usize {
    if text.is_empty() {
        return 0;
    }
    let mut records = 1;
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '\n' if !quoted => records += 1,
            _ => {}
        }
    }
    records
}

/// `audit verify` says the log is intact, and after an edit made with Python's sqlite3 module
/// names the edited entry and exits 1.
#[test]
fn audit_verify_names_an_entry_edited_behind_the_servers_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let d = data.to_str().ok_or("path")?;
    for name in ["ann", "bob", "cyd"] {
        edgepipe_ok(&["users", "--data-dir", d, "add", name, "--role", "viewer"])?;
    }
    let ok = edgepipe_ok(&["audit", "verify", "--data-dir", d])?;
    let said = String::from_utf8(ok.stdout)?;
    assert!(
        said.contains("audit log intact: 3 entries chained"),
        "{said}"
    );
    let db = data.join("cases.db");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
             c.execute(\"UPDATE audit_log SET actor = 'mallory' WHERE id = 2\"); c.commit()",
            db.to_str().ok_or("path")?,
        ])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let bad = edgepipe(&["audit", "verify", "--data-dir", d])?;
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.contains("broken at entry 2") && err.contains("edited"),
        "{err}"
    );
    Ok(())
}
