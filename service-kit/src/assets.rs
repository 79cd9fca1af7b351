//! A few small static assets every backend serves under `/static/`, marked cacheable, so the
//! gateway's static-asset cache has something real to cache. `/static/private/...` carries the
//! same files marked `private`, which no shared cache may keep.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;

const FILES: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        "body{font-family:system-ui,sans-serif;margin:0}header{background:#0b3d5c;color:#fff;padding:1rem}\n",
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        "document.addEventListener('DOMContentLoaded',()=>{document.body.dataset.ready='1'});\n",
    ),
    (
        "logo.svg",
        "image/svg+xml",
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64\" height=\"64\"><circle cx=\"32\" cy=\"32\" r=\"30\" fill=\"#0b3d5c\"/></svg>\n",
    ),
];

/// Seconds a shared cache may keep a public asset.
pub const MAX_AGE: u64 = 300;

pub fn routes() -> Router {
    Router::new()
        .route("/static/private/{file}", get(private))
        .route("/static/{file}", get(public))
}

fn serve(file: &str, cache_control: String) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => {
            let mut response = (StatusCode::OK, *body).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            if let Ok(v) = HeaderValue::from_str(&cache_control) {
                headers.insert(header::CACHE_CONTROL, v);
            }
            response
        }
        None => ApiError::not_found(format!("no static file {file}")).into_response(),
    }
}

async fn public(Path(file): Path<String>) -> Response {
    serve(&file, format!("public, max-age={MAX_AGE}"))
}

async fn private(Path(file): Path<String>) -> Response {
    serve(&file, "private, max-age=60".to_string())
}
