//! Email channel: one plain-text message per notification (or digest) over SMTP (lettre).

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::ChannelConfig;
use crate::{Error, Result};

pub(super) async fn send(
    ch: &ChannelConfig,
    key: &str,
    event: &str,
    payload: &serde_json::Value,
) -> Result<()> {
    let ChannelConfig::Email {
        smtp_host,
        smtp_port,
        from,
        to,
        username,
        password,
        tls,
        ..
    } = ch
    else {
        return Err(fail(ch, "not an email channel".into()));
    };
    let subject = if event == "digest" {
        format!(
            "[edgepipe] {} case notifications",
            payload.get("count").and_then(|c| c.as_u64()).unwrap_or(0)
        )
    } else {
        let c = &payload["case"];
        format!(
            "[edgepipe] {} {}: #{} {}",
            c["severity"].as_str().unwrap_or(""),
            event,
            c["id"],
            c["title"].as_str().unwrap_or("")
        )
    };
    let body = format!(
        "{subject}\n\nIdempotency key: {key}\n\n{}\n",
        serde_json::to_string_pretty(payload)?
    );
    let mut msg = Message::builder()
        .from(
            from.parse()
                .map_err(|e| fail(ch, format!("from {from:?}: {e}")))?,
        )
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .message_id(Some(format!("<{key}@edgepipe>")));
    for t in to {
        msg = msg.to(t.parse().map_err(|e| fail(ch, format!("to {t:?}: {e}")))?);
    }
    let msg = msg
        .body(body)
        .map_err(|e| fail(ch, format!("building the message: {e}")))?;
    let mut transport = match tls.as_str() {
        "none" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp_host.as_str()),
        "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(smtp_host)
            .map_err(|e| fail(ch, format!("TLS to {smtp_host}: {e}")))?,
        _ => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(smtp_host)
            .map_err(|e| fail(ch, format!("STARTTLS to {smtp_host}: {e}")))?,
    }
    .port(*smtp_port)
    .timeout(Some(std::time::Duration::from_secs(15)));
    if let (Some(u), Some(p)) = (username, password) {
        transport = transport.credentials(Credentials::new(u.clone(), p.clone()));
    }
    transport
        .build()
        .send(msg)
        .await
        .map_err(|e| fail(ch, format!("SMTP {smtp_host}:{smtp_port}: {e}")))?;
    Ok(())
}

fn fail(ch: &ChannelConfig, reason: String) -> Error {
    Error::Channel {
        channel: ch.name().to_owned(),
        reason,
    }
}
