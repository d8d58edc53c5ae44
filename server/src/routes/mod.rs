//! The route table: one `configure` that `run` and the tests both mount.
//! One file per resource; handlers extract, call the domain, map the result.

mod auth;
mod health;
mod manage;
mod me;
mod push;
mod static_files;
mod sync;
mod team;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::{self, ApiError};

pub fn configure(cfg: &mut web::ServiceConfig, json_body_bytes: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(json_body_bytes)
            .error_handler(|error, _| error::json_error(error).into()),
    )
    .app_data(
        web::QueryConfig::default().error_handler(|error, _| error::query_error(error).into()),
    )
    .app_data(web::PathConfig::default().error_handler(|error, _| error::path_error(error).into()))
    .route("/healthz", web::get().to(health::healthz))
    .configure(sync::configure)
    .service(
        web::scope("/api")
            .configure(auth::configure)
            .configure(me::configure)
            .configure(team::configure)
            .configure(manage::configure)
            .configure(push::configure)
            .default_service(web::to(api_not_found)),
    )
    .configure(static_files::configure);
}

async fn api_not_found(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "there is no {} {} in the API",
        request.method(),
        request.path()
    )))
}
