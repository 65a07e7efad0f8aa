//! Webhook channel: JSON (or a rendered template) POSTed with an HMAC-SHA256 signature.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Error, Result};

/// `sha256=<hex HMAC-SHA256(secret, body)>`, the value of `X-Edgepipe-Signature`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn send(
    http: &reqwest::Client,
    channel: &str,
    url: &str,
    secret: &str,
    template: Option<&str>,
    timeout: Duration,
    key: &str,
    event: &str,
    payload: &serde_json::Value,
) -> Result<()> {
    let body = match template {
        Some(t) => super::template::render(t, payload).into_bytes(),
        None => serde_json::to_vec(payload)?,
    };
    let fail = |reason: String| Error::Channel {
        channel: channel.to_owned(),
        reason,
    };
    let resp = http
        .post(url)
        .timeout(timeout)
        .header("content-type", "application/json")
        .header("x-edgepipe-signature", sign(secret, &body))
        .header("x-edgepipe-idempotency-key", key)
        .header("x-edgepipe-event", event)
        .body(body)
        .send()
        .await
        .map_err(|e| fail(format!("POST {url}: {e}")))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        let text = resp.text().await.unwrap_or_default();
        Err(fail(format!(
            "POST {url}: HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
