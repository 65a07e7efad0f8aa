//! `edgepipe cases …` and `edgepipe users …`: case work and API users, on the state store.

use anyhow::Context;
use clap::Subcommand;

use edgepipe_types::{Clock, SystemClock};

use crate::cli::common::*;
use crate::cli::output::{FormatArg, Listing};

/// `cases` actions.
#[derive(Debug, Subcommand)]
pub enum CasesCmd {
    /// Cases, newest first.
    List {
        /// Only these states (comma-separated: open,acknowledged,investigating,resolved,false_positive).
        #[arg(long)]
        state: Option<String>,
        /// Only this severity or higher (info, low, medium, high, critical).
        #[arg(long)]
        min_severity: Option<String>,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Output format.
        #[command(flatten)]
        format: FormatArg,
    },
    /// One case with its anomalies, timeline and evidence (JSON).
    Show {
        /// Case id.
        id: i64,
    },
    /// open → acknowledged.
    Ack {
        /// Case id.
        id: i64,
    },
    /// → investigating.
    Investigate {
        /// Case id.
        id: i64,
    },
    /// Set the assignee (`-` to clear).
    Assign {
        /// Case id.
        id: i64,
        /// Who.
        assignee: String,
    },
    /// Add a comment.
    Comment {
        /// Case id.
        id: i64,
        /// Text.
        text: String,
    },
    /// Close with a verdict (confirmed unless --false-positive).
    Resolve {
        /// Case id.
        id: i64,
        /// It was not an anomaly (raises the series' thresholds).
        #[arg(long)]
        false_positive: bool,
        /// Root cause.
        #[arg(long)]
        root_cause: Option<String>,
        /// Note for the timeline.
        #[arg(long)]
        note: Option<String>,
    },
    /// Open a closed case again.
    Reopen {
        /// Case id.
        id: i64,
        /// Why.
        #[arg(long)]
        note: Option<String>,
    },
}

/// `audit` actions.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check the audit log's hash chain: every entry's hash and its link to the one before,
    /// and the head; names the first broken link (exit 1) or says it is intact.
    Verify,
}

pub(crate) async fn audit_cmd(action: AuditCmd, a: LakeArgs) -> anyhow::Result<()> {
    let store = state_store(&a).await?;
    match action {
        AuditCmd::Verify => {
            let r = store.audit_verify().await?;
            let before = if r.unchained > 0 {
                format!(
                    " ({} older entries from before the chain are not covered)",
                    r.unchained
                )
            } else {
                String::new()
            };
            match r.broken {
                None => println!("audit log intact: {} entries chained{before}", r.entries),
                Some((0, why)) => anyhow::bail!("audit log broken at its end: {why}"),
                Some((id, why)) => anyhow::bail!("audit log broken at entry {id}: {why}"),
            }
        }
    }
    Ok(())
}

/// `users` actions.
#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Add a user and print its API token (shown once).
    Add {
        /// Name.
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// List users.
    List {
        /// Output format.
        #[command(flatten)]
        format: FormatArg,
    },
    /// Refuse a user's token from now on.
    Disable {
        /// Name.
        name: String,
    },
    /// Allow a disabled user again.
    Enable {
        /// Name.
        name: String,
    },
    /// Issue a new token (the old one stops working), keeping the role.
    RotateToken {
        /// Name.
        name: String,
    },
}

pub(crate) async fn cases_cmd(action: CasesCmd, a: LakeArgs) -> anyhow::Result<()> {
    use edgepipe_cases::{Action, CaseFilter, CaseState, CaseStore, Outcome, Severity};
    let store = state_store(&a).await?;
    let actor = cli_actor();
    let now = SystemClock.now_ms();
    let act = |id: i64, action: Action| {
        let store = store.clone();
        let actor = actor.clone();
        async move {
            let c = store.act(id, &action, &actor, now).await?;
            println!(
                "case {}: {} ({}), assignee {}",
                c.id,
                c.state.as_str(),
                c.severity.as_str(),
                c.assignee.as_deref().unwrap_or("-")
            );
            anyhow::Ok(())
        }
    };
    match action {
        CasesCmd::List {
            state,
            min_severity,
            device,
            limit,
            format,
        } => {
            let mut f = CaseFilter {
                device_id: device,
                limit: Some(limit.clamp(1, 1000)),
                ..Default::default()
            };
            if let Some(st) = state {
                for x in st.split(',') {
                    f.states.push(
                        CaseState::parse(x.trim())
                            .with_context(|| format!("--state {x:?}: not a case state"))?,
                    );
                }
            }
            if let Some(s) = min_severity {
                f.min_severity = Some(Severity::parse(&s).with_context(|| {
                    format!("--min-severity {s:?}: info, low, medium, high or critical")
                })?);
            }
            let page = store.list(&f).await?;
            let mut out = Listing::new(&[
                "id",
                "severity",
                "state",
                "device",
                "assignee",
                "anomalies",
                "title",
            ]);
            for c in &page.cases {
                out.push(
                    vec![
                        c.id.to_string(),
                        c.severity.as_str().to_owned(),
                        c.state.as_str().to_owned(),
                        c.device_id.clone(),
                        c.assignee.clone().unwrap_or_else(|| "-".into()),
                        c.anomaly_count.to_string(),
                        c.title.clone(),
                    ],
                    serde_json::to_value(c)?,
                );
            }
            out.footer = Some(format!(
                "{} cases{}",
                page.cases.len(),
                if page.next.is_some() {
                    " (more: raise --limit)"
                } else {
                    ""
                }
            ));
            out.print(format.get())?;
        }
        CasesCmd::Show { id } => {
            println!("{}", serde_json::to_string_pretty(&store.get(id).await?)?);
        }
        CasesCmd::Ack { id } => act(id, Action::Acknowledge).await?,
        CasesCmd::Investigate { id } => act(id, Action::Investigate).await?,
        CasesCmd::Assign { id, assignee } => {
            let assignee = (assignee != "-").then_some(assignee);
            act(id, Action::Assign { assignee }).await?
        }
        CasesCmd::Comment { id, text } => act(id, Action::Comment { text }).await?,
        CasesCmd::Resolve {
            id,
            false_positive,
            root_cause,
            note,
        } => {
            let outcome = if false_positive {
                Outcome::FalsePositive
            } else {
                Outcome::Confirmed
            };
            act(
                id,
                Action::Resolve {
                    outcome,
                    root_cause,
                    note,
                },
            )
            .await?
        }
        CasesCmd::Reopen { id, note } => act(id, Action::Reopen { note }).await?,
    }
    store.close().await;
    Ok(())
}

pub(crate) async fn users_cmd(action: UsersCmd, a: LakeArgs) -> anyhow::Result<()> {
    use edgepipe_cases::Role;
    let store = state_store(&a).await?;
    let actor = cli_actor();
    match action {
        UsersCmd::Add { name, role } => {
            let role = Role::parse(&role)
                .with_context(|| format!("--role {role:?}: viewer, operator or admin"))?;
            let token = store.user_put(&name, role, false, &actor).await?;
            println!(
                "user {name} ({}) added. API token (shown once, store it now):\n{token}",
                role.as_str()
            );
        }
        UsersCmd::List { format } => {
            let users = store.users().await?;
            let mut out = Listing::new(&["user", "role", "disabled", "created_at_ms"]);
            for u in &users {
                out.push(
                    vec![
                        u.name.clone(),
                        u.role.as_str().to_owned(),
                        u.disabled.to_string(),
                        u.created_at.to_string(),
                    ],
                    serde_json::json!({
                        "user": u.name,
                        "role": u.role.as_str(),
                        "disabled": u.disabled,
                        "created_at_ms": u.created_at,
                    }),
                );
            }
            out.footer = Some(format!("{} users", users.len()));
            out.print(format.get())?;
        }
        UsersCmd::Disable { name } => {
            store.user_set_disabled(&name, true, &actor).await?;
            println!("user {name} disabled");
        }
        UsersCmd::Enable { name } => {
            store.user_set_disabled(&name, false, &actor).await?;
            println!("user {name} enabled");
        }
        UsersCmd::RotateToken { name } => {
            let u = store
                .users()
                .await?
                .into_iter()
                .find(|u| u.name == name)
                .with_context(|| format!("no user named {name:?}"))?;
            let token = store.user_put(&name, u.role, true, &actor).await?;
            println!("user {name}: new API token (the old one no longer works):\n{token}");
        }
    }
    store.close().await;
    Ok(())
}
