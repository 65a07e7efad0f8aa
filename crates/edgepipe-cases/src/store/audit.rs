//! The audit log's one write ([`audit_in`]: an entry appended inside the caller's
//! transaction), shared by the case store and the user and audit methods. A leaf: it uses
//! neither.

use crate::Result;
use crate::model::Millis;

pub(super) async fn audit_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(now)
    .bind(actor.to_owned())
    .bind(action.to_owned())
    .bind(target.to_owned())
    .bind(detail.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
