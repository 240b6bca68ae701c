//! API keys and roles (README, "API keys"): `TCC_API_KEYS="name:role:secret,..."`, sent as
//! `Authorization: Bearer <secret>`, or by a browser as HTTP Basic credentials (the key's name as
//! user, its secret as password: the web console's pages answer a browser 401 with
//! `WWW-Authenticate: Basic`). Roles are ordered `read` < `submit` < `admin`: reads need
//! `read`; creating, registering, confirming, canceling and writing the shared state `submit`;
//! `restart`, `continue` and `resolve` `admin`. Health, metrics and the problem pages stay open. Without keys the
//! API is open and every action is recorded as `anonymous`.
//!
//! Secrets are compared in constant time (`subtle`), never logged and never shown: a key is
//! known by its name, which the event log records on every action it takes.

use std::fmt;
use std::str::FromStr;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::{ApiError, ProblemType};
use super::layers::Then;

/// Who acts, as the event log and resolutions record it, while the API is open (no API keys).
pub(crate) const ANONYMOUS: &str = "anonymous";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Submit,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Role::Read),
            "submit" => Ok(Role::Submit),
            "admin" => Ok(Role::Admin),
            other => Err(format!("role {other:?} is not one of read, submit, admin")),
        }
    }
}

/// One key: its name (shown, recorded), role, and secret (never shown).
#[derive(Clone)]
pub struct ApiKey {
    pub name: String,
    pub role: Role,
    secret: Vec<u8>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The configured keys (`TCC_API_KEYS`).
#[derive(Debug, Clone, Default)]
pub struct ApiKeys(Vec<ApiKey>);

/// The shortest secret taken: a guessable key protects nothing.
pub const MIN_SECRET: usize = 16;

impl FromStr for ApiKeys {
    type Err = String;
    /// `name:role:secret,...`; the secret may hold `:`. Names are 1–64 characters of
    /// `A-Z a-z 0-9 . _ -`, unique; secrets at least 16 characters, unique.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut keys: Vec<ApiKey> = Vec::new();
        for (i, entry) in s.split(',').map(str::trim).enumerate() {
            let n = i + 1;
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(role), Some(secret)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("key {n}: must be name:role:secret"));
            };
            // Errors name a key by its place in the list, never by its parts: a key written in
            // the wrong order would show its secret where its name or role should be.
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid_name {
                return Err(format!(
                    "key {n}: the name must be 1 to 64 characters of A-Z a-z 0-9 . _ - (as name:role:secret)"
                ));
            }
            let role: Role = role.parse().map_err(|_| {
                format!("key {n}: the role must be read, submit or admin (as name:role:secret)")
            })?;
            if secret.chars().count() < MIN_SECRET {
                return Err(format!(
                    "key {n}: the secret must be at least {MIN_SECRET} characters"
                ));
            }
            if keys.iter().any(|k| k.name == name) {
                return Err(format!("key {n}: its name is another key's too"));
            }
            if keys.iter().any(|k| k.secret == secret.as_bytes()) {
                return Err(format!("key {n}: its secret is another key's too"));
            }
            keys.push(ApiKey {
                name: name.to_string(),
                role,
                secret: secret.as_bytes().to_vec(),
            });
        }
        Ok(ApiKeys(keys))
    }
}

impl ApiKeys {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key whose secret this is. Every key is compared, each in constant time.
    fn find(&self, secret: &[u8]) -> Option<&ApiKey> {
        let mut found = None;
        for k in &self.0 {
            if bool::from(k.secret.as_slice().ct_eq(secret)) {
                found = Some(k);
            }
        }
        found
    }
}

/// Who acts on a request: the key's name, or `anonymous` while the API is open. Every handler
/// that changes a job records it.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// The role a request needs; `None`: open to anyone (health, metrics, `OPTIONS`).
pub fn needed(method: &Method, route: &str) -> Option<Role> {
    if route.starts_with("/health/")
        || route.starts_with("/problems/")
        || route.starts_with("/console/")
        || route == "/metrics"
        || route == "/openapi.json"
        || method == Method::OPTIONS
    {
        return None;
    }
    if method == Method::GET || method == Method::HEAD {
        return Some(Role::Read);
    }
    // A job definition is the operators' to write and retire; starting one is a submit.
    let definition =
        route == "/job-definitions/{name}" && (method == Method::PUT || method == Method::DELETE);
    let admin = definition
        || ["/restart", "/continue", "/resolve"]
            .iter()
            .any(|a| route.ends_with(a));
    Some(if admin { Role::Admin } else { Role::Submit })
}

/// 401 with the challenge: `Basic` for a browser (it then asks for the key's name and secret),
/// `Bearer` for everything else.
fn unauthorized(detail: &str, browser: bool) -> Response {
    let mut resp =
        ApiError::new(StatusCode::UNAUTHORIZED, ProblemType::Unauthorized, detail).into_response();
    let challenge = if browser {
        "Basic realm=\"tcc-coordinator\", charset=\"UTF-8\""
    } else {
        "Bearer realm=\"tcc-coordinator\""
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

/// What the request presents: a Bearer secret, or Basic `name:secret` (the console's, as a
/// browser sends it).
enum Presented<'a> {
    Bearer(&'a str),
    Basic(String, String),
}

fn presented(headers: &axum::http::HeaderMap) -> Option<Presented<'_>> {
    use base64::Engine;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Presented::Bearer(rest.trim()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (name, secret) = text.split_once(':')?;
    Some(Presented::Basic(name.to_string(), secret.to_string()))
}

/// The middleware: with keys, every request but the open ones must carry one strong enough;
/// the request then carries its `Actor`.
pub(crate) async fn authorize(
    keys: std::sync::Arc<ApiKeys>,
    mut req: Request,
    next: impl Then,
) -> Response {
    if keys.is_empty() {
        req.extensions_mut().insert(Actor(ANONYMOUS.to_string()));
        return next(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let Some(role) = needed(req.method(), &route) else {
        req.extensions_mut().insert(Actor(ANONYMOUS.to_string()));
        return next(req).await;
    };
    let browser = super::negotiate::prefers_html(req.headers());
    let key = match presented(req.headers()) {
        None => {
            return unauthorized(
                "this coordinator needs an API key: send Authorization: Bearer <secret> (in a browser: the key's name as user, its secret as password)",
                browser,
            );
        }
        Some(Presented::Bearer(secret)) => keys.find(secret.as_bytes()),
        // The name must be the key's too: a secret alone is not taken under another name.
        Some(Presented::Basic(name, secret)) => keys
            .find(secret.as_bytes())
            .filter(|k| bool::from(k.name.as_bytes().ct_eq(name.as_bytes()))),
    };
    let Some(key) = key else {
        return unauthorized("the API key is not known here", browser);
    };
    if key.role < role {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ProblemType::Forbidden,
            format!(
                "this needs the {} role; the key {} has the {} role",
                role.as_str(),
                key.name,
                key.role.as_str()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(Actor(key.name.clone()));
    next(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_bad_ones_say_why() {
        let keys: ApiKeys = "ops:admin:0123456789abcdef, ci:submit:a:b:c:d:e:f:g:h:i:j"
            .parse()
            .expect("valid");
        assert_eq!(keys.0.len(), 2);
        assert_eq!(
            keys.find(b"a:b:c:d:e:f:g:h:i:j").map(|k| k.name.as_str()),
            Some("ci")
        );
        assert!(keys.find(b"0123456789abcdeF").is_none());
        assert!(
            !format!("{keys:?}").contains("0123456789"),
            "no secret in Debug"
        );
        for (bad, says) in [
            ("ops:admin", "name:role:secret"),
            ("ops:root:0123456789abcdef", "role"),
            ("ops:read:short", "16"),
            ("o ps:read:0123456789abcdef", "name"),
            (
                "a:read:0123456789abcdef,a:admin:fedcba9876543210",
                "name is another key's",
            ),
            (
                "a:read:0123456789abcdef,b:admin:0123456789abcdef",
                "another key",
            ),
        ] {
            let err = bad.parse::<ApiKeys>().expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn each_route_needs_its_role() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(needed(&get, "/health/ready"), None);
        assert_eq!(needed(&get, "/metrics"), None);
        assert_eq!(needed(&get, "/problems/{slug}"), None);
        assert_eq!(needed(&get, "/console/{asset}"), None);
        assert_eq!(needed(&Method::OPTIONS, "/jobs"), None);
        assert_eq!(needed(&get, "/jobs/{job_id}"), Some(Role::Read));
        assert_eq!(needed(&post, "/jobs"), Some(Role::Submit));
        assert_eq!(
            needed(&Method::PATCH, "/jobs/{job_id}/shared-state"),
            Some(Role::Submit)
        );
        assert_eq!(
            needed(&Method::PUT, "/coordinator/confirm"),
            Some(Role::Submit)
        );
        for admin in ["restart", "continue", "resolve"] {
            assert_eq!(
                needed(&post, &format!("/jobs/{{job_id}}/{admin}")),
                Some(Role::Admin)
            );
        }
        let definition = "/job-definitions/{name}";
        assert_eq!(needed(&Method::PUT, definition), Some(Role::Admin));
        assert_eq!(needed(&Method::DELETE, definition), Some(Role::Admin));
        assert_eq!(needed(&get, definition), Some(Role::Read));
        assert_eq!(
            needed(&post, "/job-definitions/{name}/jobs"),
            Some(Role::Submit)
        );
        assert!(Role::Read < Role::Submit && Role::Submit < Role::Admin);
    }
}
