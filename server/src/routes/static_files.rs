//! The PWA's files, embedded in the binary from `client/dist` at build time
//! (read from disk in debug builds), so `backchannel` is one file to deploy.
//! Unknown paths without a file extension get `index.html`, so client-side
//! routes such as `/thread/<id>` open the app.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use rust_embed::Embed;

use crate::error::ApiError;

#[derive(Embed)]
#[folder = "../client/dist"]
#[allow_missing = true]
struct ClientFiles;

const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>Backchannel</title>\
<p>The Backchannel server is running, but the web app was not built into it. \
Run <code>npm ci &amp;&amp; npm run build</code> in <code>client/</code>, then rebuild the server.";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.default_service(web::get().to(serve));
}

async fn serve(request: HttpRequest) -> HttpResponse {
    let path = request.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    if let Some(file) = ClientFiles::get(path) {
        return file_response(path, file);
    }
    let looks_like_a_file = path
        .rsplit('/')
        .next()
        .is_some_and(|name| name.contains('.'));
    if looks_like_a_file {
        return ApiError::not_found(format!("no file at /{path}")).error_response();
    }
    match ClientFiles::get("index.html") {
        Some(file) => file_response("index.html", file),
        None => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(NOT_BUILT),
    }
}

fn file_response(path: &str, file: rust_embed::EmbeddedFile) -> HttpResponse {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    // Vite puts a content hash in every file name under assets/, so those never
    // change; everything else (index.html, sw.js, the manifest) must be revalidated.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    HttpResponse::Ok()
        .content_type(mime.as_ref())
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header((
            header::ETAG,
            format!("\"{}\"", hex(&file.metadata.sha256_hash())),
        ))
        .body(file.data.into_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
