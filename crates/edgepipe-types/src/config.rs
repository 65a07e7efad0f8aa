//! One configuration problem with its key path ([`Problem`]): the one shape every edgepipe
//! component reports configuration errors in, so `edgepipe validate` and
//! `edgepipe-agent validate` list all of them, each under the key to change.

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `wal.segment_bytes` or `collectors[1].rate`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// `prefix.key`, or `key` alone when `prefix` is empty.
pub fn key_path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_reads_key_then_message() {
        let p = Problem::new(key_path("wal", "segment_bytes"), "must be at least 4096");
        assert_eq!(p.to_string(), "wal.segment_bytes: must be at least 4096");
        assert_eq!(key_path("", "window"), "window");
    }
}
