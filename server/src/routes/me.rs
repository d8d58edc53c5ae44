//! `/api/me`: who am I, and which documents does my client start from.

use actix_web::{HttpResponse, web};

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/me", web::get().to(me));
}

/// The community `index` and `directory`, the user's `inbox` and `drafts`
/// (both made on first use, durably, before their URLs are given out).
async fn me(
    state: web::Data<AppState>,
    AuthUser(principal): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let user_id = principal.user.id.clone();
    let kept = &state.kept;
    let index = kept.index_id()?;
    let directory = kept.directory_id()?;
    let inbox = kept.inbox_for(&user_id).await?;
    let drafts = kept.drafts_for(&user_id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "user": principal.user,
        "docs": {
            "index": index.url(),
            "directory": directory.url(),
            "inbox": inbox.url(),
            "drafts": drafts.url(),
        },
    })))
}
