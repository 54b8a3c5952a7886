//! Retention rules: how long and how much of a partition's events are kept.
//!
//! A rule applies to the streams starting with its prefix (the longest
//! matching prefix wins; the empty prefix is the cluster-wide rule). An
//! event is removed once it is older than its rule's `max_age_ms`, and,
//! under the cluster-wide rule's `max_bytes`, the oldest events of the
//! partition go until it holds at most that many bytes of events. The
//! partition leader chooses the events ([`PartitionStore::expired`]) and
//! removes them through the partition's log (`Op::RemoveEvents`), so every
//! replica removes the same ones.
//!
//! Within a stream, removal always takes its oldest events first: a
//! stream's kept versions are contiguous, from its first kept version up.
//!
//! [`PartitionStore::expired`]: super::store::PartitionStore::expired

use serde::{Deserialize, Serialize};

/// One rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRule {
    /// Streams starting with this ("" every stream).
    pub stream_prefix: String,
    /// Events older than this are removed (0: no age limit).
    pub max_age_ms: u64,
    /// Only for the cluster-wide rule: the partition's events are kept to
    /// at most this many bytes, oldest removed first (0: no limit).
    pub max_bytes: u64,
}

/// Shortest age limit a rule may set.
pub const MIN_MAX_AGE_MS: u64 = 1000;

impl RetentionRule {
    /// Checks the rule; the error names the field.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, r: String| Err((format!("retention.{f}"), r));
        if self.stream_prefix.len() > super::MAX_NAME_BYTES {
            return bad(
                "stream_prefix",
                format!(
                    "is {} bytes, over the limit of {}",
                    self.stream_prefix.len(),
                    super::MAX_NAME_BYTES
                ),
            );
        }
        if self.stream_prefix.chars().any(char::is_control) {
            return bad("stream_prefix", "must not contain control characters".into());
        }
        if self.max_age_ms != 0 && self.max_age_ms < MIN_MAX_AGE_MS {
            return bad(
                "max_age_ms",
                format!(
                    "{} is under the minimum of {MIN_MAX_AGE_MS} (0: no age limit)",
                    self.max_age_ms
                ),
            );
        }
        if self.max_bytes != 0 && !self.stream_prefix.is_empty() {
            return bad(
                "max_bytes",
                "only the cluster-wide rule (empty stream_prefix) limits bytes; a prefix rule sets max_age_ms".into(),
            );
        }
        Ok(())
    }
}

/// Every rule in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionRules(pub Vec<RetentionRule>);

impl RetentionRules {
    /// Index of the rule for `stream` (longest matching prefix), if any.
    /// ESF's own streams (`$audit`) follow only rules whose prefix starts
    /// with `$`, never the cluster-wide one.
    pub fn rule_for(&self, stream: &str) -> Option<usize> {
        let system = stream.starts_with('$');
        self.0
            .iter()
            .enumerate()
            .filter(|(_, r)| stream.starts_with(&r.stream_prefix) && (!system || r.stream_prefix.starts_with('$')))
            .max_by_key(|(_, r)| r.stream_prefix.len())
            .map(|(i, _)| i)
    }

    /// The cluster-wide byte limit (0: none).
    pub fn max_bytes(&self) -> u64 {
        self.0
            .iter()
            .find(|r| r.stream_prefix.is_empty())
            .map_or(0, |r| r.max_bytes)
    }

    /// Whether any rule can remove anything.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|r| r.max_age_ms == 0 && r.max_bytes == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(p: &str, age: u64) -> RetentionRule {
        RetentionRule {
            stream_prefix: p.into(),
            max_age_ms: age,
            max_bytes: 0,
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_bad_rules_name_the_field() {
        let r = RetentionRules(vec![rule("", 5000), rule("tmp-", 1000), rule("tmp-keep", 0)]);
        assert_eq!(r.rule_for("orders-1"), Some(0));
        assert_eq!(r.rule_for("tmp-1"), Some(1));
        assert_eq!(r.rule_for("tmp-keep-1"), Some(2));
        assert_eq!(RetentionRules(vec![rule("a", 1000)]).rule_for("b"), None);
        assert_eq!(r.rule_for("$audit"), None, "the cluster-wide rule skips ESF's streams");
        assert_eq!(
            RetentionRules(vec![rule("", 1000), rule("$au", 5000)]).rule_for("$audit"),
            Some(1)
        );
        assert_eq!(rule("", 10).check().unwrap_err().0, "retention.max_age_ms");
        let mut b = rule("x", 0);
        b.max_bytes = 10;
        assert_eq!(b.check().unwrap_err().0, "retention.max_bytes");
        assert_eq!(rule("a\nb", 0).check().unwrap_err().0, "retention.stream_prefix");
        assert!(rule("", 0).check().is_ok());
    }
}
