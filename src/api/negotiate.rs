//! Content negotiation: JSON or the console's page for the same URL.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;

/// Whether the client ranks `text/html` above `application/json` (RFC 9110 §12.5.1, q-values;
/// a wildcard counts for both, so `*/*` alone is a tie, and a tie is JSON).
pub fn prefers_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (mut html, mut json) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0)
            .clamp(0.0, 1.0);
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => html = html.max(q),
            "application/json" => json = json.max(q),
            "text/*" => html = html.max(q),
            "application/*" => json = json.max(q),
            "*/*" => {
                html = html.max(q);
                json = json.max(q);
            }
            _ => {}
        }
    }
    html > json
}

/// `Vary: Accept` on every answer of a negotiated resource.
pub fn vary_accept(mut resp: Response) -> Response {
    resp.headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn browsers_get_html_and_everything_else_json() {
        assert!(!prefers_html(&HeaderMap::new()), "no Accept");
        for json in [
            "*/*",
            "application/json",
            "application/json, text/html",
            "text/html;q=0.5, application/json",
            "application/*, text/html;q=0.9",
            "text/html;q=0, */*",
            "image/png",
        ] {
            assert!(!prefers_html(&accept(json)), "{json}");
        }
        for html in [
            // Firefox's and Chromium's.
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
            "text/html",
            "application/json;q=0.5, text/html",
        ] {
            assert!(prefers_html(&accept(html)), "{html}");
        }
    }
}
