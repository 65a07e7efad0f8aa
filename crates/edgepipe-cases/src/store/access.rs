//! Users with API tokens and roles, and the audit log, kept in the same database as cases.
//! Tokens are 256-bit random secrets shown once; only their SHA-256 is stored.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::audit::audit_in;
use super::sql::SqlCaseStore;
use crate::model::Millis;
use crate::{Error, Result, now_ms};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also works cases (acknowledge, assign, comment, resolve, reopen).
    Operator,
    /// Also manages devices and users.
    Admin,
}

impl Role {
    /// Parses `viewer`, `operator` or `admin`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "viewer" => Self::Viewer,
            "operator" => Self::Operator,
            "admin" => Self::Admin,
            _ => return None,
        })
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// A user of the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Name (the actor in timelines and the audit log).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Disabled users are refused.
    pub disabled: bool,
    /// Wall time created.
    pub created_at: Millis,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence.
    pub id: i64,
    /// Wall time.
    pub at: Millis,
    /// Who.
    pub actor: String,
    /// What (`case.acknowledge`, `device.add`, `user.add`, ...).
    pub action: String,
    /// On what (`case:7`, `device:dev-1`, `user:alice`).
    pub target: String,
    /// Details (JSON).
    pub detail: serde_json::Value,
}

fn hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("ept_{}", hex::encode(b))
}

fn valid_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:@-".contains(c))
    {
        return Err(Error::Invalid(format!(
            "user name {name:?}: 1 to 64 characters of A-Z a-z 0-9 _ . : @ -"
        )));
    }
    Ok(())
}

impl SqlCaseStore {
    /// Adds a user (or, with `replace`, gives an existing one this role and a new token) and
    /// returns the token, which is not stored and cannot be shown again.
    pub async fn user_put(
        &self,
        name: &str,
        role: Role,
        replace: bool,
        actor: &str,
    ) -> Result<String> {
        valid_name(name)?;
        let token = new_token();
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let exists = sqlx::query("SELECT name FROM users WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if exists && !replace {
            return Err(Error::Invalid(format!(
                "user {name:?} exists (rotate its token with `users rotate-token`)"
            )));
        }
        if exists {
            sqlx::query(
                "UPDATE users SET role = $1, token_sha256 = $2, disabled = 0 WHERE name = $3",
            )
            .bind(role.as_str())
            .bind(hash(&token))
            .bind(name.to_owned())
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO users (name, role, token_sha256, disabled, created_at) VALUES ($1, $2, $3, 0, $4)",
            )
            .bind(name.to_owned())
            .bind(role.as_str())
            .bind(hash(&token))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        audit_in(
            &mut tx,
            actor,
            if exists {
                "user.rotate_token"
            } else {
                "user.add"
            },
            &format!("user:{name}"),
            serde_json::json!({ "role": role }),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Enables or disables a user.
    pub async fn user_set_disabled(&self, name: &str, disabled: bool, actor: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("UPDATE users SET disabled = $1 WHERE name = $2")
            .bind(i64::from(disabled))
            .bind(name.to_owned())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::Invalid(format!("no user named {name:?}")));
        }
        audit_in(
            &mut tx,
            actor,
            if disabled {
                "user.disable"
            } else {
                "user.enable"
            },
            &format!("user:{name}"),
            serde_json::json!({}),
            now_ms(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every user.
    pub async fn users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query("SELECT name, role, disabled, created_at FROM users ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(user_row).collect()
    }

    /// The enabled user holding `token`.
    pub async fn authenticate(&self, token: &str) -> Result<Option<User>> {
        let row = sqlx::query(
            "SELECT name, role, disabled, created_at FROM users WHERE token_sha256 = $1",
        )
        .bind(hash(token))
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(r) => {
                let u = user_row(&r)?;
                Ok((!u.disabled).then_some(u))
            }
            None => Ok(None),
        }
    }

    /// Appends to the audit log.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        audit_in(&mut tx, actor, action, target, detail, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks the audit log's hash chain (see `store/audit.rs`): every entry's hash and link,
    /// and the head. `broken` names the first entry that fails.
    pub async fn audit_verify(&self) -> Result<super::audit::ChainReport> {
        super::audit::verify_chain(self.pool()).await
    }

    /// Audit entries, newest first, before id `before` (all when `None`).
    pub async fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit.clamp(1, 1000)))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let d: String = r.try_get("detail")?;
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: serde_json::from_str(&d)
                        .map_err(|e| Error::Corrupt(format!("audit detail: {e}")))?,
                })
            })
            .collect()
    }
}

fn user_row(r: &sqlx::any::AnyRow) -> Result<User> {
    let role: String = r.try_get("role")?;
    Ok(User {
        name: r.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| Error::Corrupt(format!("role {role:?}")))?,
        disabled: r.try_get::<i64, _>("disabled")? != 0,
        created_at: r.try_get("created_at")?,
    })
}
