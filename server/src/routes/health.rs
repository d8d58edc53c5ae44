use actix_web::{HttpResponse, web};

use crate::error::ApiError;
use crate::state::AppState;

/// `GET /healthz`: the server answers and its store is readable.
pub async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.store.get(b"healthz")?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ok" })))
}
