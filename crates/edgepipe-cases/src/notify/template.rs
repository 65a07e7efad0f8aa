//! Body templates for ticket systems: `{{path.to.value}}` is replaced by the JSON value at that
//! path of the notification (`event`, `idempotency_key`, `case.title`, `case.severity`, ...).
//! Strings are inserted JSON-escaped without their quotes (so a template that is JSON stays
//! JSON), other values as JSON; a missing path renders as nothing.

/// Renders `template` with values from `payload`.
pub fn render(template: &str, payload: &serde_json::Value) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let path = after[..end].trim();
        let mut v = Some(payload);
        for part in path.split('.') {
            v = v.and_then(|x| match x {
                serde_json::Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => x.get(part),
            });
        }
        match v {
            Some(serde_json::Value::String(s)) => {
                let q = serde_json::Value::String(s.clone()).to_string();
                out.push_str(&q[1..q.len() - 1]);
            }
            Some(serde_json::Value::Null) | None => {}
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_paths_escaped() {
        let p = serde_json::json!({"event": "opened", "case": {"id": 7, "title": "a \"b\"", "metrics": ["t", "p"]}});
        assert_eq!(
            render(
                r#"{"summary": "{{case.title}} ({{event}})", "id": {{case.id}}, "m": "{{case.metrics.1}}", "x": "{{nope}}"}"#,
                &p
            ),
            r#"{"summary": "a \"b\" (opened)", "id": 7, "m": "p", "x": ""}"#
        );
        assert_eq!(render("unclosed {{case.id", &p), "unclosed {{case.id");
    }
}
