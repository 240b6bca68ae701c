//! Newtypes for what is parsed once at the edge and trusted inside: outbound URLs, job and task
//! ids. Each is shared (an `Arc`, of its text, and for a URL of its parsed form too): the engine
//! copies a job at every step, and a copy of an id or a URL is a count, not an allocation.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// An outbound URL: an absolute http or https URL the coordinator may call (a task's Try, a
/// participant link). Parsed once where it enters (a job document, a registration, a Try
/// answer, a stored row), and kept parsed beside its text: the outbound target policy is
/// checked on the parsed form before each call, which sends it without parsing it again.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetUrl(Arc<Target>);

/// A target's text as it entered, and its parsed form.
struct Target {
    text: Box<str>,
    parsed: url::Url,
}

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
            Ok(u) => Ok(Self::new(s.into(), u)),
            Err(_) => Err(Self::RULE),
        }
    }

    /// A URL already parsed (`url::Url` resolved it against another, say); refused, it comes
    /// back with the reason.
    pub fn from_url(u: url::Url) -> Result<Self, (&'static str, url::Url)> {
        if u.as_str().len() > Self::MAX_LEN {
            return Err((Self::TOO_LONG, u));
        }
        if Self::allowed(&u) {
            Ok(Self::new(u.as_str().into(), u))
        } else {
            Err((Self::RULE, u))
        }
    }

    fn new(text: Box<str>, parsed: url::Url) -> Self {
        TargetUrl(Arc::new(Target { text, parsed }))
    }

    fn allowed(u: &url::Url) -> bool {
        matches!(u.scheme(), "http" | "https") && u.host().is_some()
    }

    /// The URL as parsed: what a call sends and what the target policy checks.
    pub fn url(&self) -> &url::Url {
        &self.0.parsed
    }

    fn text(&self) -> &str {
        &self.0.text
    }
}

impl TryFrom<String> for TargetUrl {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match url::Url::parse(&s) {
            Ok(u) if Self::allowed(&u) => Ok(Self::new(s.into_boxed_str(), u)),
            _ => Err(Self::RULE),
        }
    }
}

// Compared, hashed and shown by its text, as the plain string it was.
impl PartialEq for TargetUrl {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.text() == other.text()
    }
}

impl Eq for TargetUrl {}

impl std::hash::Hash for TargetUrl {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text().hash(state);
    }
}

impl fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TargetUrl").field(&self.text()).finish()
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
    (@text $t:ident) => {
        impl $t {
            pub fn as_str(&self) -> &str {
                self.text()
            }
        }

        impl From<$t> for String {
            fn from(t: $t) -> String {
                t.as_str().to_string()
            }
        }

        impl Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                self.as_str()
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<String> for $t {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other.as_str()
            }
        }
    };
    ($t:ident) => {
        impl $t {
            fn text(&self) -> &str {
                &self.0
            }
        }

        text_newtype!(@text $t);
    };
}

text_newtype!(@text TargetUrl);
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
    fn a_target_keeps_its_text_as_given_beside_its_parsed_form() {
        let t = TargetUrl::parse("HTTP://P:80/r/%7e1").expect("a URL");
        assert_eq!(t.as_str(), "HTTP://P:80/r/%7e1", "the text as it entered");
        assert_eq!(t.url().as_str(), "http://p/r/%7e1", "the form a call sends");
        let back: TargetUrl = serde_json::from_str("\"HTTP://P:80/r/%7e1\"").expect("read back");
        assert_eq!(back, t);
        assert_eq!(format!("{t:?}"), "TargetUrl(\"HTTP://P:80/r/%7e1\")");
        let same = |a: &TargetUrl, b: &TargetUrl| {
            use std::hash::BuildHasher;
            let h = std::collections::hash_map::RandomState::new();
            a == b && h.hash_one(a) == h.hash_one(b)
        };
        assert!(same(&t, &back));
        let other = TargetUrl::parse("http://p/r/%7e1").expect("a URL");
        assert_ne!(other, t, "compared by text, as the plain string was");
        let (why, u) = TargetUrl::from_url(url::Url::parse("ftp://p/x").expect("a URL"))
            .expect_err("not http");
        assert_eq!((why, u.as_str()), (TargetUrl::RULE, "ftp://p/x"));
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
