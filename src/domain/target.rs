//! Newtypes for what is parsed once at the edge and trusted inside: outbound URLs, job and task
//! ids. Each holds shared text (`Arc<str>`): the engine copies a job at every step, and a copy of
//! an id or a URL is a count, not an allocation.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// An outbound URL: an absolute http or https URL the coordinator may call (a task's Try, a
/// participant link). Parsed once where it enters (a job document, a registration, a Try
/// answer, a stored row); the place where the outbound target policy will be checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetUrl(Arc<str>);

impl TargetUrl {
    pub const RULE: &'static str = "must be an absolute http or https URL";
    /// The longest URL taken where one enters: well above any real participant's, well below
    /// what the HTTP client can send (64 KiB), so that no link is accepted that can never be
    /// called.
    pub const MAX_LEN: usize = 8192;
    pub const TOO_LONG: &'static str = "must be at most 8192 bytes long";

    /// A URL where it enters (a job document, a registration, a link set): the rule and the
    /// length limit. Stored rows are read back with the rule alone (`TryFrom`).
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.len() > Self::MAX_LEN {
            return Err(Self::TOO_LONG);
        }
        // What the HTTP client sends is the parsed form, which can be longer (percent-encoded).
        match url::Url::parse(s) {
            Ok(u) if !Self::allowed(&u) => Err(Self::RULE),
            Ok(u) if u.as_str().len() > Self::MAX_LEN => Err(Self::TOO_LONG),
            Ok(_) => Ok(TargetUrl(s.into())),
            Err(_) => Err(Self::RULE),
        }
    }

    /// A URL already parsed (`url::Url` resolved it against another, say).
    pub fn from_url(u: &url::Url) -> Result<Self, &'static str> {
        if u.as_str().len() > Self::MAX_LEN {
            return Err(Self::TOO_LONG);
        }
        if Self::allowed(u) {
            Ok(TargetUrl(u.as_str().into()))
        } else {
            Err(Self::RULE)
        }
    }

    fn allowed(u: &url::Url) -> bool {
        matches!(u.scheme(), "http" | "https") && u.host().is_some()
    }
}

impl TryFrom<String> for TargetUrl {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match url::Url::parse(&s) {
            Ok(u) if Self::allowed(&u) => Ok(TargetUrl(s.into())),
            _ => Err(Self::RULE),
        }
    }
}

/// A task's id: 1–128 characters of `A-Z a-z 0-9 . _ ~ -`, unique in its job. `/` cannot occur,
/// so `{taskID}/{attempt}` is unambiguous as a `request-id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(Arc<str>);

impl TaskId {
    pub const MAX_LEN: usize = 128;
    pub const RULE: &'static str = "must be 1 to 128 characters of A-Z a-z 0-9 . _ ~ -";

    pub fn parse(s: &str) -> Result<Self, &'static str> {
        Self::try_from(s.to_string())
    }
}

impl TryFrom<String> for TaskId {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let valid = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-'));
        if valid {
            Ok(TaskId(s.into()))
        } else {
            Err(Self::RULE)
        }
    }
}

/// A job's id: 1–128 characters of `A-Z a-z 0-9 . _ ~ -` (URL-safe as a path segment); the
/// coordinator's own are UUIDv7s.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(Arc<str>);

impl JobId {
    pub const RULE: &'static str = "must be 1 to 128 characters of A-Z a-z 0-9 . _ ~ -";

    /// A new, time-ordered id.
    pub fn generate() -> Self {
        JobId(uuid::Uuid::now_v7().to_string().into())
    }

    pub fn parse(s: &str) -> Result<Self, &'static str> {
        Self::try_from(s.to_string())
    }
}

impl TryFrom<String> for JobId {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        // The same characters as a task id.
        TaskId::try_from(s)
            .map(|t| JobId(t.0))
            .map_err(|_| Self::RULE)
    }
}

/// A job definition's name (docs/api.md, "Job definitions"): the same characters as a job id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DefinitionName(Arc<str>);

impl DefinitionName {
    pub const RULE: &'static str = "must be 1 to 128 characters of A-Z a-z 0-9 . _ ~ -";

    pub fn parse(s: &str) -> Result<Self, &'static str> {
        Self::try_from(s.to_string())
    }
}

impl TryFrom<String> for DefinitionName {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        TaskId::try_from(s)
            .map(|t| DefinitionName(t.0))
            .map_err(|_| Self::RULE)
    }
}

/// What every string newtype here has: its text (`as_str`, `Deref`, `Display`), comparisons with
/// plain strings, and the way back to a `String`.
macro_rules! text_newtype {
    ($t:ident) => {
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<$t> for String {
            fn from(t: $t) -> String {
                t.0.to_string()
            }
        }

        impl Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl PartialEq<String> for $t {
            fn eq(&self, other: &String) -> bool {
                *self.0 == **other
            }
        }
    };
}

text_newtype!(TargetUrl);
text_newtype!(TaskId);
text_newtype!(DefinitionName);
text_newtype!(JobId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_absolute_http_urls() {
        assert!(TargetUrl::parse("http://p:9/try").is_ok());
        assert!(TargetUrl::parse("HTTPS://p/r/1").is_ok());
        for bad in [
            "/relative",
            "ftp://p/x",
            "http://",
            "mailto:a@b",
            "p/try",
            "",
        ] {
            assert!(TargetUrl::parse(bad).is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&TargetUrl::parse("http://p/x").ok()).unwrap_or_default();
        assert_eq!(json, "\"http://p/x\"");
        assert!(serde_json::from_str::<TargetUrl>("\"not a url\"").is_err());
    }

    #[test]
    fn job_ids_are_url_safe_and_generated_ids_follow_the_rule() {
        let g = JobId::generate();
        assert_eq!(JobId::parse(g.as_str()).ok(), Some(g));
        assert!(JobId::parse("order-8812.v1").is_ok());
        for bad in ["", "a/b", "a b", "%00", &"x".repeat(129)] {
            assert!(JobId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn task_ids_follow_the_rule() {
        assert!(TaskId::parse("reserve-number.v2_~").is_ok());
        for bad in ["", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(TaskId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TaskId::parse(&"x".repeat(128)).is_ok());
    }
}
