//! The audit log's one write ([`audit_in`]: an entry appended inside the caller's
//! transaction), shared by the case store and the user and audit methods, and the check of its
//! hash chain ([`verify_chain`]). A leaf: it uses neither.
//!
//! Tamper evidence, as CloudTrail's digest files give it: every entry carries the hash of the
//! one before (`prev_hash`) and its own (`hash` = SHA-256 over the previous hash and the
//! entry's id, time, actor, action, target and detail); `audit_head` holds the newest hash.
//! Appends are serialized on the head row, so the chain follows id order. Editing, deleting or
//! inserting an entry, or cutting the log's tail, breaks a link [`verify_chain`] names.

use sha2::Digest;
use sqlx::Row;

use crate::Result;
use crate::model::Millis;

/// An entry's hash: SHA-256 over the previous hash and the entry's fields, each
/// length-prefixed (no two entries share an encoding), hex.
pub(crate) fn entry_hash(
    prev: &str,
    id: i64,
    at: Millis,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> String {
    let mut h = sha2::Sha256::new();
    for part in [
        prev.as_bytes(),
        id.to_string().as_bytes(),
        at.to_string().as_bytes(),
        actor.as_bytes(),
        action.as_bytes(),
        target.as_bytes(),
        detail.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

pub(super) async fn audit_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
    now: Millis,
) -> Result<()> {
    // Take the chain's head first: concurrent appends wait here (a row lock in PostgreSQL,
    // the write lock in SQLite), so ids and links follow one order.
    sqlx::query("UPDATE audit_head SET last_id = last_id WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    let prev: String = sqlx::query_scalar("SELECT hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut **tx)
        .await?;
    let detail = detail.to_string();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO audit_log (at, actor, action, target, detail, prev_hash) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(now)
    .bind(actor.to_owned())
    .bind(action.to_owned())
    .bind(target.to_owned())
    .bind(detail.clone())
    .bind(prev.clone())
    .fetch_one(&mut **tx)
    .await?;
    let hash = entry_hash(&prev, id, now, actor, action, target, &detail);
    sqlx::query("UPDATE audit_log SET hash = $1 WHERE id = $2")
        .bind(hash.clone())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE audit_head SET hash = $1, last_id = $2 WHERE id = 1")
        .bind(hash)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What [`verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainReport {
    /// Entries checked (with a hash).
    pub entries: u64,
    /// Entries written before the chain existed (schema version 4 and older), not covered.
    pub unchained: u64,
    /// The first broken link: the entry id (0 for the head) and what is wrong.
    pub broken: Option<(i64, String)>,
}

/// Walks the audit log in id order, recomputing every hash and link, and compares the last
/// hash with the head's.
pub(super) async fn verify_chain(pool: &sqlx::AnyPool) -> Result<ChainReport> {
    let rows = sqlx::query(
        "SELECT id, at, actor, action, target, detail, prev_hash, hash FROM audit_log ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    let head = sqlx::query("SELECT hash, last_id FROM audit_head WHERE id = 1")
        .fetch_one(pool)
        .await?;
    let head_hash: String = head.try_get("hash")?;
    let head_last: i64 = head.try_get("last_id")?;
    let mut report = ChainReport {
        entries: 0,
        unchained: 0,
        broken: None,
    };
    let mut prev = String::new();
    let mut last_id = 0;
    let mut chained = false;
    for r in &rows {
        let id: i64 = r.try_get("id")?;
        let hash: String = r.try_get("hash")?;
        let prev_hash: String = r.try_get("prev_hash")?;
        if hash.is_empty() && !chained {
            report.unchained += 1;
            continue;
        }
        chained = true;
        report.entries += 1;
        let again = entry_hash(
            &prev_hash,
            id,
            r.try_get("at")?,
            &r.try_get::<String, _>("actor")?,
            &r.try_get::<String, _>("action")?,
            &r.try_get::<String, _>("target")?,
            &r.try_get::<String, _>("detail")?,
        );
        let problem = if prev_hash != prev {
            Some(
                "its previous-hash is not the hash of the entry before it (an entry was removed, inserted or reordered)",
            )
        } else if again != hash {
            Some("its content does not match its hash (the entry was edited)")
        } else {
            None
        };
        if let Some(p) = problem {
            report.broken = Some((id, p.to_owned()));
            return Ok(report);
        }
        prev = hash;
        last_id = id;
    }
    if chained && (prev != head_hash || last_id != head_last) {
        report.broken = Some((
            0,
            format!(
                "the log ends at entry {last_id} but the chain's head records entry {head_last} \
                 (entries were cut from the end)"
            ),
        ));
    }
    Ok(report)
}
