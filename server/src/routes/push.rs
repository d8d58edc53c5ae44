//! `/api/push/*` and `/api/mutes/*`: the VAPID key, device subscriptions and
//! muted threads (SPEC §2, §6).

use actix_web::{HttpResponse, web};
use backchannel_sync::DocumentId;
use serde::Deserialize;

use crate::auth::AuthUser;
use crate::community::may_read_summary;
use crate::error::ApiError;
use crate::push::PushError;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/push/public-key", web::get().to(public_key))
        .route("/push/subscriptions", web::post().to(subscribe))
        .route("/push/subscriptions", web::delete().to(unsubscribe))
        .route("/mutes/{document_id}", web::put().to(mute))
        .route("/mutes/{document_id}", web::delete().to(unmute));
}

async fn public_key(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "public_key": state.vapid_public_key }))
}

/// `PushSubscription.toJSON()`; every field optional here so that a missing
/// one is `invalid_subscription`, not a generic body error.
#[derive(Deserialize)]
struct SubscriptionBody {
    endpoint: Option<serde_json::Value>,
    keys: Option<KeysBody>,
}

#[derive(Deserialize)]
struct KeysBody {
    p256dh: Option<serde_json::Value>,
    auth: Option<serde_json::Value>,
}

fn text_field<'a>(value: Option<&'a serde_json::Value>, name: &str) -> Result<&'a str, ApiError> {
    value
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| PushError::InvalidSubscription(format!("{name} must be a string")).into())
}

async fn subscribe(
    state: web::Data<AppState>,
    AuthUser(principal): AuthUser,
    body: web::Json<SubscriptionBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let endpoint = text_field(body.endpoint.as_ref(), "endpoint")?.to_string();
    let keys = body
        .keys
        .ok_or_else(|| PushError::InvalidSubscription("keys is missing".into()))?;
    let p256dh = text_field(keys.p256dh.as_ref(), "keys.p256dh")?.to_string();
    let auth = text_field(keys.auth.as_ref(), "keys.auth")?.to_string();
    let push = state.push.clone();
    web::block(move || {
        push.subscribe(
            &principal.user.id,
            &principal.session_id,
            &endpoint,
            &p256dh,
            &auth,
        )
    })
    .await??;
    Ok(HttpResponse::Created().json(serde_json::json!({ "subscribed": true })))
}

#[derive(Deserialize)]
struct UnsubscribeBody {
    endpoint: String,
}

async fn unsubscribe(
    state: web::Data<AppState>,
    AuthUser(principal): AuthUser,
    body: web::Json<UnsubscribeBody>,
) -> Result<HttpResponse, ApiError> {
    let push = state.push.clone();
    let endpoint = body.into_inner().endpoint;
    web::block(move || push.unsubscribe(&principal.user.id, &endpoint)).await??;
    Ok(HttpResponse::NoContent().finish())
}

fn document(id: &str) -> Result<DocumentId, ApiError> {
    DocumentId::parse_url_or_id(id)
        .map_err(|error| ApiError::bad_request("invalid_document_id", error.to_string()))
}

/// Only posts and conversations the caller can read can be muted; one they
/// cannot read is answered exactly like one that does not exist.
async fn mute(
    state: web::Data<AppState>,
    AuthUser(principal): AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let document = document(&id)?;
    let readable = crate::kept::catalog::get(state.store.as_ref(), &document)?
        .is_some_and(|summary| may_read_summary(&principal.user.id, principal.user.role, &summary));
    if !readable {
        return Err(ApiError::not_found(
            "there is no post or conversation with this id",
        ));
    }
    let push = state.push.clone();
    web::block(move || push.mute(&principal.user.id, &document)).await??;
    Ok(HttpResponse::NoContent().finish())
}

async fn unmute(
    state: web::Data<AppState>,
    AuthUser(principal): AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let document = document(&id)?;
    let push = state.push.clone();
    web::block(move || push.unmute(&principal.user.id, &document)).await??;
    Ok(HttpResponse::NoContent().finish())
}
