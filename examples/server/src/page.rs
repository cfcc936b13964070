//! `GET /`: the live page for the administrator (SPEC §15), served on the metrics port.
//!
//! The page is three small hand-written files (`page/`), compiled into the binary: a
//! bank's admin network has no internet, so nothing is fetched from elsewhere, and the
//! `Content-Security-Policy` tells the browser to refuse anything that is not ours. The
//! page polls `GET /stats.json` (what `STATS JSON` answers) once a second and keeps the
//! last `PAGE_SAMPLES_KEPT` samples in the browser for its charts: the server keeps nothing
//! per viewer, and a page left open costs one `STATS` a second.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::Shared;

use crate::limits::PAGE_SAMPLES_KEPT;

const INDEX_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/page.js");
const PAGE_CSS: &str = include_str!("page/page.css");

/// Only what this server serves: no script, style, image or connection elsewhere.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

/// The page's routes, merged into the metrics router.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", index()) }))
        .route("/page.js", get(|| async { asset("text/javascript; charset=utf-8", PAGE_JS) }))
        .route("/page.css", get(|| async { asset("text/css; charset=utf-8", PAGE_CSS) }))
        .route("/stats.json", get(stats_json))
}

/// The page, with the number of samples it keeps filled in: the script reads it from the
/// page (`data-samples`), so the limit is set in one place.
fn index() -> String {
    INDEX_HTML.replace("{{SAMPLES_KEPT}}", &PAGE_SAMPLES_KEPT.to_string())
}

fn asset(content_type: &'static str, body: impl IntoResponse) -> Response {
    let policy = HeaderName::from_static("content-security-policy");
    ([(header::CONTENT_TYPE, content_type), (policy, POLICY)], body).into_response()
}

/// `STATS JSON`, for the page: the same numbers from the same code, off the async threads
/// (a consistent cut of every shard).
async fn stats_json(State(shared): State<Arc<Shared>>) -> Response {
    let Some(permit) = crate::metrics::cut_permit(&shared) else {
        return crate::metrics::busy();
    };
    let rendered = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        crate::stats::render(&shared.engine, &shared.sampler, true)
    })
    .await;
    match rendered {
        Ok(Ok(body)) => {
            let json = "application/json";
            ([(header::CONTENT_TYPE, json), (header::CACHE_CONTROL, "no-store")], body)
                .into_response()
        }
        Ok(Err(error)) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_its_own_assets() {
        let page = index();
        assert!(page.contains(&format!("data-samples=\"{PAGE_SAMPLES_KEPT}\"")), "{page}");
        for text in [page.as_str(), PAGE_JS, PAGE_CSS] {
            // The one address is SVG's namespace, a name that is never fetched.
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(!text.contains("http:") && !text.contains("https:"), "{text}");
            assert!(!text.contains("=\"//") && !text.contains("fetch(\"//"), "{text}");
            assert!(!text.contains("@import") && !text.contains("url("), "{text}");
        }
        assert!(page.contains("src=\"/page.js\"") && page.contains("href=\"/page.css\""));
    }
}
