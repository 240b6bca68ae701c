//! The actions as HTML forms. A form POSTs `application/x-www-form-urlencoded` to the action's
//! own URL (`/jobs/{id}/confirm`, `/cancel`, `/continue`, `/restart`, `/resolve`); `submitted`
//! turns it into the request the API takes (`resolve`'s `note` into its JSON body), runs the very
//! handler an API client reaches, and answers a browser: 303 back to the job when it was taken,
//! the job's page with the problem's detail (and its status) when it was refused.
//!
//! Cross-site requests are refused (`same_origin`): a browser sends API keys given as HTTP Basic
//! credentials on its own, so a page elsewhere must not be able to make it act.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::super::app::AppState;
use super::super::db::load;
use super::super::error::{ApiError, ProblemType};
use super::super::extract::read_body;
use super::super::layers::Then;
use super::super::negotiate::vary_accept;
use super::super::respond::base_url;
use super::pages::{self, Refusal};
use crate::domain::JobId;

const FORM: &str = "application/x-www-form-urlencoded";

pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(FORM))
}

/// `/jobs/{id}/{action}` → (`id`, `action`), for the actions a form takes (all of the domain's
/// but registering a participant).
fn action_of(path: &str) -> Option<(JobId, &'static str)> {
    use crate::domain::actions::Action;
    let rest = path.strip_prefix("/jobs/")?;
    let (id, rel) = rest.split_once('/')?;
    let action = Action::ALL
        .into_iter()
        .find(|a| *a != Action::Participants && a.rel() == rel)?;
    let id = percent_encoding::percent_decode_str(id)
        .decode_utf8()
        .ok()?;
    // An id no job can have: left to the route, which answers 404.
    Some((JobId::parse(&id).ok()?, action.rel()))
}

/// A form's POST to an action: taken as the API takes it, answered for a browser.
pub(crate) async fn submitted(state: AppState, req: Request, next: impl Then) -> Response {
    if req.method() != Method::POST || !is_form(req.headers()) {
        return next(req).await;
    }
    let Some((id, action)) = action_of(req.uri().path()) else {
        return next(req).await;
    };
    let headers = req.headers().clone();
    let base = base_url(&state, &headers);
    let (mut parts, body) = req.into_parts();
    let bytes = match read_body(body, state.settings.max_body, "form").await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(&bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if let Some(what) = pages::confirmation(action)
        && field("confirmed") != Some("yes")
    {
        let refusal = Refusal {
            title: "Not confirmed".into(),
            detail: format!("nothing was done: tick \u{201c}{what}\u{201d} to {action}"),
        };
        return refused_page(
            &state,
            &base,
            &id,
            StatusCode::UNPROCESSABLE_ENTITY,
            refusal,
        )
        .await;
    }
    // The request the API takes: resolve's note as its JSON body, the others without one.
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = if action == "resolve" {
        let doc = match field("note") {
            Some(note) => serde_json::json!({ "note": note }),
            None => serde_json::json!({}),
        };
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Body::from(doc.to_string())
    } else {
        parts.headers.remove(header::CONTENT_TYPE);
        Body::empty()
    };
    let resp = next(Request::from_parts(parts, body)).await;
    if resp.status().is_success() {
        return vary_accept(
            (
                StatusCode::SEE_OTHER,
                [(
                    header::LOCATION,
                    HeaderValue::from_str(&format!("{base}/jobs/{id}"))
                        .unwrap_or(HeaderValue::from_static("/jobs")),
                )],
            )
                .into_response(),
        );
    }
    let status = resp.status();
    let Ok(problem) = axum::body::to_bytes(resp.into_body(), 1024 * 1024).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let problem: serde_json::Value = serde_json::from_slice(&problem).unwrap_or_default();
    let text = |k: &str| problem[k].as_str().unwrap_or_default().to_string();
    let mut detail = text("detail");
    if let Some(errors) = problem["errors"].as_array() {
        for e in errors {
            detail.push_str(&format!(
                "; {} {}",
                e["pointer"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches('/'),
                e["detail"].as_str().unwrap_or_default()
            ));
        }
    }
    let refusal = Refusal {
        title: text("title"),
        detail,
    };
    refused_page(&state, &base, &id, status, refusal).await
}

/// The job's page with what was refused; a job that cannot be shown is a problem page.
async fn refused_page(
    state: &AppState,
    base: &str,
    id: &JobId,
    status: StatusCode,
    refusal: Refusal,
) -> Response {
    let shown = match load(state, id).await {
        Ok(record) => pages::job(state, base, &record, Some((status, refusal))).await,
        Err(e) => Err(e),
    };
    shown.unwrap_or_else(IntoResponse::into_response)
}

/// Whether a request that changes something came from another site, as the browser tells:
/// `Sec-Fetch-Site` when it sends one, else `Origin` against the `Host` (or `public`, the
/// coordinator's public URL). A request with neither is not a browser's cross-site one (curl, a
/// service) and passes.
fn cross_site(method: &Method, headers: &HeaderMap, public: Option<&str>) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let get = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = get(header::ORIGIN) else {
        return false;
    };
    // The whole origin (scheme, host, port): the public URL's, or plain http at the Host this
    // request came to (the coordinator serves no TLS itself; behind a proxy that does, the
    // public URL says so).
    let public_origin = public
        .and_then(|p| url::Url::parse(p).ok())
        .map(|u| u.origin().ascii_serialization());
    if public_origin.is_some_and(|p| p.eq_ignore_ascii_case(origin)) {
        return false;
    }
    let Some(host) = get(header::HOST) else {
        return true;
    };
    !origin.eq_ignore_ascii_case(&format!("http://{host}"))
}

/// A browser's request (it sends `Origin` or `Sec-Fetch-*`) to a coordinator without API keys
/// that came by a host name the coordinator does not know as its own: that name, else `None`.
/// Its own: an IP address, `localhost` (and `*.localhost`), `TCC_PUBLIC_URL`'s host. Otherwise a
/// page elsewhere could point its own name at this address (DNS rebinding) and, same-origin with
/// itself, read and act through the open API. With keys it could not: the browser holds no
/// credentials for that name. Clients other than browsers send any `Host` they like.
fn unknown_host<'h>(headers: &'h HeaderMap, public: Option<&str>) -> Option<&'h str> {
    let browser = ["origin", "sec-fetch-site", "sec-fetch-mode"]
        .into_iter()
        .any(|name| headers.contains_key(name));
    if !browser {
        return None;
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    if host.starts_with('[') {
        return None; // an IPv6 literal
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _port)| name);
    let name = name.strip_suffix('.').unwrap_or(name);
    let lower = name.to_ascii_lowercase();
    let known = name.parse::<std::net::Ipv4Addr>().is_ok()
        || lower == "localhost"
        || lower.ends_with(".localhost")
        || public
            .and_then(|p| url::Url::parse(p).ok())
            .and_then(|u| u.host_str().map(|h| h.eq_ignore_ascii_case(name)))
            .unwrap_or(false);
    (!known).then_some(host)
}

/// The middleware: a cross-site request that changes something is refused (403), whatever it
/// carries; so is, when the API is open (`open`), a browser's request by a host name not the
/// coordinator's own (403, `unknown_host`). The console's stylesheet and script and the problem
/// pages are served to any.
pub(crate) async fn same_origin(
    public: Option<Arc<str>>,
    open: bool,
    req: Request,
    next: impl Then,
) -> Response {
    let path = req.uri().path();
    let assets = path.starts_with("/console/") || path.starts_with("/problems/");
    if open
        && !assets
        && let Some(host) = unknown_host(req.headers(), public.as_deref())
    {
        return ApiError::new(StatusCode::FORBIDDEN, ProblemType::UnknownHost, format!(
                "this coordinator has no API keys and does not know {host} as its own name, so a browser may not use it by that name: browse to it by IP address or localhost, or set TCC_PUBLIC_URL to the URL browsers use"
            ),
        )
        .into_response();
    }
    if cross_site(req.method(), req.headers(), public.as_deref()) {
        return ApiError::new(StatusCode::FORBIDDEN, ProblemType::CrossSite, "a page of another site may not act on this coordinator: use its own pages, or call the API directly",
        )
        .into_response();
    }
    next(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_a_browsers_cross_site_request_that_changes_something_is_refused() {
        let post = Method::POST;
        let host = ("host", "127.0.0.1:8080");
        // Not a browser: no Origin, no Sec-Fetch-Site.
        assert!(!cross_site(&post, &headers(&[host]), None));
        assert!(!cross_site(
            &post,
            &headers(&[host, ("sec-fetch-site", "same-origin")]),
            None
        ));
        assert!(!cross_site(
            &post,
            &headers(&[host, ("origin", "http://127.0.0.1:8080")]),
            None
        ));
        for bad in [
            headers(&[host, ("sec-fetch-site", "cross-site")]),
            headers(&[host, ("sec-fetch-site", "same-site")]),
            headers(&[host, ("origin", "http://evil.example")]),
            headers(&[host, ("origin", "null")]),
            // The right host under another scheme, or none, is another origin.
            headers(&[host, ("origin", "https://127.0.0.1:8080")]),
            headers(&[host, ("origin", "127.0.0.1:8080")]),
            headers(&[host, ("origin", "ftp://127.0.0.1:8080")]),
        ] {
            assert!(cross_site(&post, &bad, None), "{bad:?}");
            assert!(cross_site(&Method::DELETE, &bad, None), "{bad:?}");
            assert!(!cross_site(&Method::GET, &bad, None), "{bad:?}");
        }
        // Behind a proxy: the public URL is the origin.
        assert!(!cross_site(
            &post,
            &headers(&[
                ("host", "10.0.0.5:8080"),
                ("origin", "https://tcc.example.com")
            ]),
            Some("https://tcc.example.com/")
        ));
        for other in [
            "http://tcc.example.com",
            "tcc.example.com",
            "https://tcc.example.com:8443",
        ] {
            let mut h = headers(&[("host", "10.0.0.5:8080")]);
            h.insert("origin", HeaderValue::from_static(other));
            assert!(
                cross_site(&post, &h, Some("https://tcc.example.com/console")),
                "{other}"
            );
        }
    }

    #[test]
    fn actions_are_read_off_their_paths() {
        assert_eq!(
            action_of("/jobs/j%2D1/confirm"),
            Some((JobId::parse("j-1").expect("an id"), "confirm"))
        );
        assert_eq!(action_of("/jobs/j1/participants"), None);
        assert_eq!(action_of("/jobs/j1"), None);
        assert_eq!(action_of("/coordinator/confirm"), None);
    }

    #[test]
    fn a_browser_must_come_by_a_name_of_the_coordinators_own() {
        let browser = ("sec-fetch-mode", "cors");
        for own in [
            "127.0.0.1:8080",
            "10.0.0.7",
            "[::1]:8080",
            "localhost:8080",
            "LOCALHOST.",
            "console.localhost:8080",
            "tcc.example.com:443",
        ] {
            let h = headers(&[("host", own), browser]);
            assert_eq!(
                unknown_host(&h, Some("https://tcc.example.com")),
                None,
                "{own}"
            );
        }
        for strange in [
            "evil.example:8080",
            "127.0.0.1.nip.io",
            "localhost.evil.example",
        ] {
            let h = headers(&[("host", strange), browser]);
            assert_eq!(unknown_host(&h, None), Some(strange));
            // Not a browser: any Host.
            assert_eq!(unknown_host(&headers(&[("host", strange)]), None), None);
        }
    }
}
