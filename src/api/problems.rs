//! `GET /problems/{slug}`: what each problem type means and how to fix it (docs/api.md, "Errors"). Every
//! problem document's `type` is one of these pages.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// `(slug, title, what it means and what to do)`.
pub const PROBLEMS: [(&str, &str, &str); 29] = [
    (
        "bad-request",
        "Bad request",
        "The request itself is unreadable: a query parameter, a path or a header the coordinator cannot take. The detail names which; fix it and send again.",
    ),
    (
        "body-too-large",
        "Body too large",
        "The body is larger than TCC_MAX_BODY (1 MiB by default). Send less: large data belongs with the participants, not in the job.",
    ),
    (
        "json-too-deep",
        "JSON nested too deep",
        "The body nests arrays and objects deeper than 32 levels. Flatten it: no job document, registration or shared state needs that depth.",
    ),
    (
        "conflict",
        "Conflict",
        "The job's state does not allow this now (for example a cancel after the decision, or an action the job's _links do not offer). The detail says why; read the job and follow its links.",
    ),
    (
        "cross-site",
        "Cross-site request",
        "A page of another site tried to act on the coordinator through the browser (its Origin or Sec-Fetch-Site says so). The console's own forms and direct API calls are not affected; if a proxy changes the Host, set TCC_PUBLIC_URL to the address browsers use.",
    ),
    (
        "unknown-host",
        "Unknown host name",
        "A browser reached this coordinator, which has no API keys, by a host name it does not know as its own. A page elsewhere could otherwise point its own name at the coordinator's address (DNS rebinding) and use the open API through the browser. Browse to it by IP address or localhost, set TCC_PUBLIC_URL to the URL browsers use, or configure TCC_API_KEYS.",
    ),
    (
        "database-unavailable",
        "Database unavailable",
        "The coordinator cannot reach PostgreSQL, or it did not answer within TCC_DB_TIMEOUT. Retry after Retry-After; what was asked may have taken effect, so look before repeating a write (a POST /jobs under its Idempotency-Key is safe to repeat).",
    ),
    (
        "forbidden",
        "Forbidden",
        "The API key is known but its role is too weak for this (read < submit < admin). The detail names the role needed; use a key that has it.",
    ),
    (
        "heuristic",
        "Heuristic outcome",
        "Some participants confirmed and others could not: they disagree, and the coordinator cannot settle it. The problem lists each task's outcome. An operator sets the participants right, then records it with POST /jobs/{id}/resolve, or has the confirms retried with POST /jobs/{id}/continue.",
    ),
    (
        "idempotency-key-reused",
        "Idempotency key reused",
        "This Idempotency-Key was used before for a different job document, or by another API key. Use a new key for a new job; repeat a request only with exactly the same body and key.",
    ),
    (
        "internal",
        "Internal error",
        "Something failed inside the coordinator. Nothing internal is shown; the coordinator logs the cause. Retry; if it persists, report it with the time and the request.",
    ),
    (
        "invalid-participant-links",
        "Invalid participant links",
        "A PUT /coordinator/confirm or /cancel body must be {\"participantLinks\": [{\"uri\", \"expires\"}, ...]} with an absolute http(s) uri and an RFC 3339 expires for each link. The errors list names each bad link.",
    ),
    (
        "malformed-json",
        "Malformed JSON",
        "The body is not valid JSON; the detail gives the line and column. Fix the document and send it again.",
    ),
    (
        "method-not-allowed",
        "Method not allowed",
        "This resource does not take that method. The Allow header lists the methods it takes.",
    ),
    (
        "metrics-unavailable",
        "Metrics unavailable",
        "The metrics recorder could not be installed in this process, so there is nothing to scrape. Restart the coordinator; if it persists, report it.",
    ),
    (
        "not-confirmed",
        "Not confirmed",
        "The job ended without confirming anything (failed or canceled, with the failure reason). The problem lists each task's outcome; submit a new job, or restart this one if it offers restart.",
    ),
    (
        "not-found",
        "Not found",
        "There is no such resource: a job id, task id or path that does not exist (or a finished job removed after TCC_RETENTION).",
    ),
    (
        "not-ready",
        "Not ready",
        "The coordinator cannot accept and drive jobs right now: it does not hold its instance identity, the database is not migrated, or it does not take a durable write. Send work to another instance, or wait.",
    ),
    (
        "outcome-pending",
        "Outcome pending",
        "The Atomikos-compatible confirm is still being worked on (a participant is being retried) after the time the request may wait. Repeat the same request: it waits again and never confirms twice.",
    ),
    (
        "overloaded",
        "Overloaded",
        "The coordinator is serving as many requests (TCC_MAX_INFLIGHT_REQUESTS), jobs or event streams as it takes at once; nothing was stored. Retry after Retry-After.",
    ),
    (
        "precondition-failed",
        "Precondition failed",
        "If-Match does not hold the resource's current ETag: it changed since you read it. Read it again, apply your change to what is there now, and send it with the new ETag.",
    ),
    (
        "shared-state-too-large",
        "Shared state too large",
        "A job's shared state may be at most 256 KiB serialized. Keep large data with the participants and put references in the shared state.",
    ),
    (
        "request-timeout",
        "Request timeout",
        "The request's body did not arrive within TCC_HEADER_READ_TIMEOUT (30 s by default), so nothing was done and the connection was closed. Send the body at once with its headers.",
    ),
    (
        "timeout",
        "Timeout",
        "The request was not answered within TCC_REQUEST_TIMEOUT. It may still take effect: look before repeating it.",
    ),
    (
        "too-late",
        "Too late",
        "The participant links of this Atomikos-compatible confirm were canceled or had lapsed before they could be confirmed: nothing is confirmed. Start the transaction again.",
    ),
    (
        "unauthorized",
        "Unauthorized",
        "This coordinator needs an API key: send Authorization: Bearer <secret> with a key from TCC_API_KEYS. An unknown key is refused the same way.",
    ),
    (
        "unavailable",
        "Unavailable",
        "A resource the request needs is not available right now (for example the database pool is shutting down). Retry after Retry-After.",
    ),
    (
        "unsupported-media-type",
        "Unsupported media type",
        "The body must be JSON (Content-Type: application/json or another +json type); a shared-state PATCH must be application/merge-patch+json.",
    ),
    (
        "validation",
        "Validation failed",
        "The JSON is well-formed but breaks a rule of the job document (or of the request). The errors list each place as a JSON Pointer with what is wrong there; fix each and send again.",
    ),
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[utoipa::path(get, path = "/problems/{slug}", tag = "entry", params(("slug" = String, Path)), responses((status = 200, description = "What the problem means and how to fix it", body = String, content_type = "text/html"), (status = 404, description = "No such problem type")))]
pub async fn problem_page(Path(slug): Path<String>) -> Result<Response, ApiError> {
    let Some((slug, title, text)) = PROBLEMS.iter().find(|(s, _, _)| *s == slug) else {
        return Err(ApiError::not_found(format!("no problem type {slug:?}")));
    };
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} — tcc-coordinator</title></head>\n<body><main><h1>{title}</h1><p><code>/problems/{slug}</code></p><p>{}</p></main></body></html>\n",
        escape(text),
        title = escape(title),
        slug = escape(slug),
    );
    let mut resp = (StatusCode::OK, page).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::PROBLEMS;

    /// Every problem type the API's code can answer has its page: the slugs are read out of the
    /// source (`ApiError::new(status, "slug", ...)` and `with_status(status, "slug")`).
    #[test]
    fn every_problem_type_in_the_code_has_a_page() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("error.rs"),
            include_str!("jobs.rs"),
            include_str!("events.rs"),
            include_str!("actions.rs"),
            include_str!("state.rs"),
            include_str!("coordinator.rs"),
            include_str!("auth.rs"),
        ];
        let mut found = Vec::new();
        for src in sources {
            for (i, _) in src.match_indices("StatusCode::") {
                // The status, a comma, then the slug as the next string literal.
                let rest = &src[i..];
                let Some(comma) = rest.find(',') else {
                    continue;
                };
                let after = rest[comma + 1..].trim_start();
                if let Some(lit) = after.strip_prefix('"')
                    && let Some(end) = lit.find('"')
                {
                    let slug = &lit[..end];
                    if !slug.is_empty() && slug.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    {
                        found.push(slug.to_string());
                    }
                }
            }
        }
        assert!(found.len() > 10, "the scan finds the slugs: {found:?}");
        for slug in found {
            assert!(
                PROBLEMS.iter().any(|(s, _, _)| *s == slug),
                "problem type {slug:?} has no page in api::problems"
            );
        }
        let mut slugs: Vec<_> = PROBLEMS.iter().map(|p| p.0).collect();
        slugs.sort();
        slugs.dedup();
        assert_eq!(slugs.len(), PROBLEMS.len(), "each slug once");
    }
}
