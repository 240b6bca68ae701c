//! `GET /problems/{slug}`: what each problem type means and how to fix it (docs/api.md, "Errors"). Every
//! problem document's `type` is one of these pages; their texts are `ProblemType`'s.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ProblemType};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[utoipa::path(get, path = "/problems/{slug}", tag = "entry", params(("slug" = String, Path)), responses((status = 200, description = "What the problem means and how to fix it", body = String, content_type = "text/html"), (status = 404, description = "No such problem type")))]
pub async fn problem_page(Path(slug): Path<String>) -> Result<Response, ApiError> {
    let Some(kind) = ProblemType::from_slug(&slug) else {
        return Err(ApiError::not_found(format!("no problem type {slug:?}")));
    };
    let (slug, title, text) = (kind.slug(), kind.title(), kind.explanation());
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
    use super::ProblemType;

    #[test]
    fn every_problem_type_has_its_own_page() {
        let mut slugs: Vec<_> = ProblemType::ALL.iter().map(|t| t.slug()).collect();
        for &t in ProblemType::ALL {
            assert_eq!(ProblemType::from_slug(t.slug()), Some(t), "{t:?}");
            assert!(
                t.slug().chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                "{t:?}"
            );
            assert!(!t.title().is_empty() && t.explanation().len() > 40, "{t:?}");
        }
        slugs.sort();
        slugs.dedup();
        assert_eq!(slugs.len(), ProblemType::ALL.len(), "each slug once");
    }
}
