//! The manager team as members see it, and what managers change about people:
//! `/api/team`, `/api/me/contact-card`, `/api/users/{id}/role`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use crate::auth::{AuthUser, Principal, Role};
use crate::error::ApiError;
use crate::state::AppState;

/// A contact card is a few lines: how and when to reach someone.
const MAX_CONTACT_CARD_CHARS: usize = 2_000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/team", web::get().to(team))
        .route("/me/contact-card", web::put().to(set_contact_card))
        .route("/users/{id}/role", web::put().to(set_role));
}

pub fn require_manager(principal: &Principal) -> Result<(), ApiError> {
    if principal.user.role == Role::Manager {
        Ok(())
    } else {
        Err(ApiError::forbidden("only managers may do this"))
    }
}

fn team_member(user: crate::auth::User, card: Option<String>) -> serde_json::Value {
    serde_json::json!({
        "id": user.id,
        "display_name": user.display_name,
        "role": user.role,
        "contact_card": card,
    })
}

/// Managers and hosts, managers first, each with their contact card.
async fn team(state: web::Data<AppState>, AuthUser(_): AuthUser) -> Result<HttpResponse, ApiError> {
    let auth = state.auth.clone();
    let mut users = web::block(move || auth.all_users()).await??;
    users.retain(|(user, _)| matches!(user.role, Role::Manager | Role::Host));
    users.sort_by(|(a, _), (b, _)| {
        (a.role != Role::Manager, &a.display_name).cmp(&(b.role != Role::Manager, &b.display_name))
    });
    let team: Vec<_> = users
        .into_iter()
        .map(|(user, card)| team_member(user, card))
        .collect();
    Ok(HttpResponse::Ok().json(team))
}

#[derive(Deserialize)]
struct ContactCard {
    text: String,
}

async fn set_contact_card(
    state: web::Data<AppState>,
    AuthUser(principal): AuthUser,
    body: web::Json<ContactCard>,
) -> Result<HttpResponse, ApiError> {
    if !matches!(principal.user.role, Role::Manager | Role::Host) {
        return Err(ApiError::forbidden(
            "only managers and hosts have a contact card",
        ));
    }
    let text = body.into_inner().text.trim().to_string();
    if text.chars().count() > MAX_CONTACT_CARD_CHARS {
        return Err(ApiError::bad_request(
            "invalid_contact_card",
            format!("a contact card is at most {MAX_CONTACT_CARD_CHARS} characters"),
        ));
    }
    let auth = state.auth.clone();
    let id = principal.user.id.clone();
    let card = text.clone();
    web::block(move || auth.set_contact_card(&id, &card)).await??;
    Ok(HttpResponse::Ok().json(team_member(principal.user.without_email(), Some(text))))
}

#[derive(Deserialize)]
struct RoleChange {
    role: String,
}

/// Takes effect at once: the directory changes, the user's inbox follows
/// their new reach, and their live sync connections reconnect under it.
async fn set_role(
    state: web::Data<AppState>,
    AuthUser(principal): AuthUser,
    id: web::Path<String>,
    body: web::Json<RoleChange>,
) -> Result<HttpResponse, ApiError> {
    require_manager(&principal)?;
    let role: Role = body
        .role
        .parse()
        .map_err(|message: String| ApiError::bad_request("invalid_role", message))?;
    let auth = state.auth.clone();
    let id = id.into_inner();
    let user = web::block(move || auth.set_role(&id, role)).await??;
    state.kept.user_changed(&user.id);
    state
        .hub
        .close_user(&user.id, "your role changed; reconnect to continue");
    Ok(HttpResponse::Ok().json(user))
}
