//! `/api/me`: who am I, and which documents does my client start from.

use actix_web::{HttpResponse, web};

use crate::auth::AuthUser;
use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/me", web::get().to(me));
}

/// The `docs` map fills in with the community documents (SPEC §4) once the
/// sync engine keeps them; until then it is empty.
async fn me(AuthUser(principal): AuthUser) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "user": principal.user,
        "docs": {},
    })))
}
