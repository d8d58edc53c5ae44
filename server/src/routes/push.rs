//! `/api/push/*`: Web Push keys (subscriptions come with the push issue).

use actix_web::{HttpResponse, web};

use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/push/public-key", web::get().to(public_key));
}

async fn public_key(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "public_key": state.vapid_public_key }))
}
