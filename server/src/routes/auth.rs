//! `/api/auth/*`: register, login, refresh, logout.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use crate::auth::{AuthUser, NewAccount, client_address};
use crate::error::ApiError;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/register", web::post().to(register))
        .route("/auth/login", web::post().to(login))
        .route("/auth/refresh", web::post().to(refresh))
        .route("/auth/logout", web::post().to(logout));
}

async fn register(
    request: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<NewAccount>,
) -> Result<HttpResponse, ApiError> {
    let open_signup = state.settings.open_signup;
    let address = client_address(&request, &state.settings.trusted_proxies);
    let auth = state.auth.clone();
    let signed_in =
        web::block(move || auth.register(body.into_inner(), open_signup, address)).await??;
    state.kept.user_changed(&signed_in.user.id);
    Ok(HttpResponse::Created().json(signed_in))
}

#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

async fn login(
    request: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let address = client_address(&request, &state.settings.trusted_proxies);
    let signed_in =
        web::block(move || state.auth.login(&body.email, &body.password, address)).await??;
    Ok(HttpResponse::Ok().json(signed_in))
}

#[derive(Deserialize)]
struct RefreshRequest {
    refresh_token: String,
}

async fn refresh(
    state: web::Data<AppState>,
    body: web::Json<RefreshRequest>,
) -> Result<HttpResponse, ApiError> {
    let signed_in = web::block(move || state.auth.refresh(&body.refresh_token)).await??;
    Ok(HttpResponse::Ok().json(signed_in))
}

async fn logout(
    state: web::Data<AppState>,
    AuthUser(principal): AuthUser,
) -> Result<HttpResponse, ApiError> {
    web::block(move || state.auth.logout(&principal.session_id)).await??;
    Ok(HttpResponse::NoContent().finish())
}
