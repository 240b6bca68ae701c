//! The resources as HTML pages for people (the web console), by content negotiation on the
//! same URLs: a client that ranks `text/html` above `application/json` (a browser) gets a page;
//! `*/*`, no `Accept` and `application/json` get JSON. Pages are askama templates (`templates/`,
//! checked at compile time, auto-escaped, compiled into the binary with their CSS), filled from
//! the very representation the JSON answer serializes, so a page shows what the API says.
//!
//! Pages (`pages`): the overview `/`, the job list `/jobs`, a job, a task, `/heuristics`; the
//! job definitions and the form that starts one (`definitions`). The
//! actions a job's state allows are forms (`forms`), taken from the same links as `_links`;
//! a problem answered to a browser is a page too (`problem_page`). Everything works without
//! JavaScript; the job page's small script (`templates/live.js`) follows the job's events (SSE)
//! and counts down the links' expiry.
//!
//! The stylesheet and the script are served from `/console/{asset}` (compiled in, revalidated by
//! ETag), so that every page can carry a Content-Security-Policy that allows nothing inline and
//! nothing from another origin (`CSP`).

pub mod definitions;
pub mod forms;
pub mod pages;

use std::sync::OnceLock;

use askama::Template;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ProblemType};
use super::respond::{none_match, not_modified};

/// What a page may load and do: its own stylesheet, script and event stream, forms to this
/// origin; no inline code, no framing, nothing from elsewhere.
const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; \
img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The headers every page carries: its type, never cached (pages show live state), `CSP`, and
/// no sniffing of the type.
fn page_headers(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.append(header::VARY, HeaderValue::from_static("accept"));
}

/// The console's static files: name, type, text.
const ASSETS: [(&str, &str, &str); 2] = [
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../templates/style.css"),
    ),
    (
        "live.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../templates/live.js"),
    ),
];

/// `GET /console/{asset}`: the pages' stylesheet and script. No key is needed (they hold nothing
/// of the coordinator's state); each has a strong ETag and is revalidated (`no-cache`), so an
/// upgrade is seen at once.
#[utoipa::path(get, path = "/console/{asset}", tag = "console", params(("asset" = String, Path, description = "style.css or live.js"), ("If-None-Match" = Option<String>, Header)), responses((status = 200, description = "The file", content((String = "text/css"), (String = "text/javascript")), headers(("ETag" = String))), (status = 304, description = "Not modified"), (status = 404, description = "No such file")))]
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    let etags = ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|(_, _, text)| super::repr::etag(text.as_bytes()))
            .collect()
    });
    let Some(((_, kind, text), etag)) = ASSETS.iter().zip(etags).find(|((n, _, _), _)| *n == name)
    else {
        return Err(ApiError::not_found(format!(
            "no console file {name}: there are {}",
            ASSETS.map(|(n, _, _)| n).join(" and ")
        )));
    };
    if none_match(&headers, etag) {
        return Ok(not_modified(etag));
    }
    let mut resp = (*text).into_response();
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, *kind),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

fn page_failed() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ProblemType::Internal,
        "the page could not be made; the failure is logged (the same resource as JSON is unaffected: ask with Accept: application/json)",
    )
}

/// A rendered page with this status, `Vary: Accept`, never cached (the pages show live state).
pub fn render(status: StatusCode, page: &impl Template) -> Result<Response, ApiError> {
    let body = page.render().map_err(|e| {
        tracing::error!(error = %e, "a page did not render");
        page_failed()
    })?;
    let mut resp = (status, body).into_response();
    page_headers(resp.headers_mut());
    Ok(resp)
}

#[derive(Template)]
#[template(path = "problem.html")]
struct ProblemPage<'a> {
    base: &'a str,
    status: u16,
    title: &'a str,
    detail: &'a str,
    type_href: &'a str,
}

/// A problem (`application/problem+json`) as a page, for a browser: the same status and
/// headers (`WWW-Authenticate` among them), the title and detail shown.
pub fn problem_page(resp: Response, problem: &serde_json::Value, base: &str) -> Response {
    let (mut parts, _) = resp.into_parts();
    let text = |k: &str| problem[k].as_str().unwrap_or_default().to_string();
    let (title, detail, type_href) = (text("title"), text("detail"), text("type"));
    let page = ProblemPage {
        base,
        status: parts.status.as_u16(),
        title: &title,
        detail: &detail,
        type_href: &type_href,
    };
    let Ok(body) = page.render() else {
        return Response::from_parts(parts, axum::body::Body::from(problem.to_string()));
    };
    page_headers(&mut parts.headers);
    Response::from_parts(parts, axum::body::Body::from(body))
}
