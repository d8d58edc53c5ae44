use actix_web::{HttpResponse, web};

use crate::error::ApiError;
use crate::state::AppState;

/// `GET /healthz`: the server answers and its store is readable and durable.
/// After a failed flush (a full disk) it answers 503 `unhealthy` until a
/// later flush succeeds; meanwhile no change is acknowledged.
pub async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.store.get(b"healthz")?;
    if let Some(reason) = state.hub.store_failure() {
        return Ok(HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "unhealthy",
            "reason": reason,
        })));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ok" })))
}
