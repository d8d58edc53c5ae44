//! The managers' tools: promote a consented conversation to a public post,
//! count needs, and the weekly community figures.

use actix_web::{HttpResponse, web};
use automerge::{ObjType, ROOT};
use backchannel_sync::DocumentId;
use serde::Deserialize;

use super::team::require_manager;
use crate::auth::{AuthUser, Role};
use crate::community::{At, DocFacts, DocType};
use crate::error::ApiError;
use crate::kept::{self, catalog};
use crate::state::AppState;
use crate::store::{Batch, StoreError};

/// At most two years of weeks in one answer.
const MAX_WEEKS: usize = 104;
const DEFAULT_WEEKS: usize = 8;
/// Needs default to the last thirty days.
const DEFAULT_NEEDS_PERIOD_MS: i64 = 30 * 24 * 60 * 60 * 1000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/conversations/{id}/promote", web::post().to(promote))
        .route("/needs", web::get().to(needs))
        .route("/metrics/community", web::get().to(community_metrics));
}

/// What promotion needs from a conversation.
struct Question {
    is_conversation: bool,
    consent: bool,
    anonymous: bool,
    opener: String,
    subject: String,
    /// (author, body) in list order.
    messages: Vec<(String, String)>,
}

fn read_question(tx: &automerge::transaction::Transaction<'_>) -> Question {
    let at = At::now(tx);
    let publish = at.object(&ROOT, "publish", ObjType::Map);
    let flag = |key: &str| publish.as_ref().and_then(|p| at.boolean(p, key)) == Some(true);
    let messages = at
        .map_items(&ROOT, "messages")
        .into_iter()
        .map(|item| {
            (
                at.text(&item, "author").unwrap_or_default(),
                at.text(&item, "body").unwrap_or_default(),
            )
        })
        .collect();
    Question {
        is_conversation: DocFacts::read(at).doc_type() == Some(DocType::Conversation),
        consent: flag("consent"),
        anonymous: flag("anonymous"),
        opener: at.text(&ROOT, "opener").unwrap_or_default(),
        subject: at.text(&ROOT, "subject").unwrap_or_default(),
        messages,
    }
}

/// The public post's body: the question in the opener's words, then the
/// team's answer.
fn promoted_body(question: &Question) -> String {
    let asked: Vec<&str> = question
        .messages
        .iter()
        .filter(|(author, _)| *author == question.opener)
        .map(|(_, body)| body.as_str())
        .collect();
    let answered: Vec<&str> = question
        .messages
        .iter()
        .filter(|(author, _)| *author != question.opener)
        .map(|(_, body)| body.as_str())
        .collect();
    let mut body = asked.join("\n\n");
    if !answered.is_empty() {
        body.push_str("\n\nThe team answered:\n\n");
        body.push_str(&answered.join("\n\n"));
    }
    body
}

/// Who wrote in the conversation besides its opener and the managers: their
/// words are theirs to publish, not the opener's, so they block promotion.
async fn others_who_spoke(state: &AppState, question: &Question) -> Result<Vec<String>, ApiError> {
    let mut speakers: Vec<String> = question
        .messages
        .iter()
        .map(|(author, _)| author.clone())
        .filter(|author| *author != question.opener)
        .collect();
    speakers.sort();
    speakers.dedup();
    let auth = state.auth.clone();
    Ok(web::block(move || {
        speakers
            .into_iter()
            .filter(|id| !matches!(auth.user(id), Ok(user) if user.role == Role::Manager))
            .collect()
    })
    .await?)
}

async fn promote(
    state: web::Data<AppState>,
    AuthUser(principal): AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_manager(&principal)?;
    let conversation = DocumentId::parse_url_or_id(&id)
        .map_err(|error| ApiError::bad_request("invalid_document_id", error.to_string()))?;
    if let Some(done) = catalog::promotion(state.store.as_ref(), &conversation)? {
        // Promoting twice (a retry on a bad network) gives the same post.
        let post = DocumentId::parse_url_or_id(&done.post).map_err(ApiError::internal)?;
        return Ok(HttpResponse::Ok().json(serde_json::json!({ "url": post.url() })));
    }
    let question = state
        .hub
        .read(conversation, read_question)
        .await
        .map_err(ApiError::internal)?;
    if !question.is_conversation {
        return Err(ApiError::not_found("there is no conversation with this id"));
    }
    if !question.consent {
        return Err(ApiError::conflict(
            "no_consent",
            "the opener has not agreed to publish this conversation",
        ));
    }
    let others = others_who_spoke(&state, &question).await?;
    if !others.is_empty() {
        return Err(ApiError::conflict(
            "others_have_spoken",
            format!(
                "only the opener's and the team's words are published, and {} other people wrote in this conversation",
                others.len()
            ),
        ));
    }
    let author = if question.anonymous {
        principal.user.id.clone()
    } else {
        question.opener.clone()
    };
    let post = kept::random_document_id();
    let title = question.subject.clone();
    let body = promoted_body(&question);
    let anonymous = question.anonymous;
    let created_at = kept::now();
    let post_author = author.clone();
    state
        .hub
        .edit_durably(
            post,
            &author,
            Box::new(move |tx| {
                use automerge::transaction::Transactable;
                kept::put_text(tx, &ROOT, "type", "post")?;
                tx.put(ROOT, "schema", 1)?;
                kept::put_text(tx, &ROOT, "author", &post_author)?;
                tx.put(ROOT, "created_at", created_at)?;
                kept::put_text(tx, &ROOT, "status", "published")?;
                kept::put_text(tx, &ROOT, "title", &title)?;
                kept::put_text(tx, &ROOT, "body", &body)?;
                tx.put(ROOT, "anonymous", anonymous)?;
                tx.put_object(ROOT, "replies", ObjType::List)?;
                Ok(())
            }),
        )
        .await
        .map_err(ApiError::internal)?;
    let promotion = catalog::Promotion {
        post: post.to_string(),
        at: created_at,
        by: principal.user.id.clone(),
    };
    // The opener's notification is stored with the promotion, in one write.
    let notices = if question.opener == principal.user.id {
        Vec::new()
    } else {
        vec![crate::push::recipients::promoted_notice(
            post,
            &question.opener,
            &question.subject,
        )]
    };
    let (store, push) = (state.store.clone(), state.push.clone());
    web::block(move || -> Result<(), StoreError> {
        let batch = catalog::promotion_in(Batch::new(), &conversation, &promotion)?;
        let (batch, queued) = push.queue(batch, notices)?;
        store.apply(batch)?;
        store.flush()?;
        push.wake(queued);
        Ok(())
    })
    .await??;
    tracing::info!(%conversation, %post, anonymous, "conversation promoted to a public post");
    Ok(HttpResponse::Created().json(serde_json::json!({ "url": post.url() })))
}

/// The whole catalog, read off the request workers.
async fn read_catalog(state: &AppState) -> Result<catalog::Everything, ApiError> {
    let store = state.store.clone();
    Ok(web::block(move || catalog::everything(store.as_ref())).await??)
}

#[derive(Deserialize)]
struct NeedsQuery {
    since: Option<String>,
    until: Option<String>,
    format: Option<String>,
}

/// Milliseconds since the epoch, an RFC 3339 time, or a `YYYY-MM-DD` date
/// (midnight UTC).
fn parse_time(name: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let rfc3339 = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339);
    let date = time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map(|date| date.midnight().assume_utc());
    rfc3339
        .or(date)
        .map(|at| (at.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!("`{name}` is milliseconds since the epoch, an RFC 3339 time or YYYY-MM-DD"),
            )
        })
}

async fn needs(
    state: web::Data<AppState>,
    AuthUser(principal): AuthUser,
    query: web::Query<NeedsQuery>,
) -> Result<HttpResponse, ApiError> {
    require_manager(&principal)?;
    let until = match &query.until {
        Some(text) => parse_time("until", text)?,
        None => kept::now() + 1,
    };
    let since = match &query.since {
        Some(text) => parse_time("since", text)?,
        None => until - DEFAULT_NEEDS_PERIOD_MS,
    };
    if since > until {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`since` must not be after `until`",
        ));
    }
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("unknown format {other:?}: use json or csv"),
            ));
        }
    };
    let everything = read_catalog(&state).await?;
    let needs = catalog::needs(&everything, since, until);
    Ok(if csv {
        HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header(("Content-Disposition", "attachment; filename=\"needs.csv\""))
            .body(needs.to_csv())
    } else {
        HttpResponse::Ok().json(needs)
    })
}

#[derive(Deserialize)]
struct MetricsQuery {
    weeks: Option<String>,
}

async fn community_metrics(
    state: web::Data<AppState>,
    AuthUser(principal): AuthUser,
    query: web::Query<MetricsQuery>,
) -> Result<HttpResponse, ApiError> {
    require_manager(&principal)?;
    let weeks = match &query.weeks {
        None => DEFAULT_WEEKS,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|weeks| (1..=MAX_WEEKS).contains(weeks))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("`weeks` is a whole number from 1 to {MAX_WEEKS}"),
                )
            })?,
    };
    let everything = read_catalog(&state).await?;
    let table = catalog::weekly(&everything, kept::now(), weeks);
    Ok(HttpResponse::Ok().json(serde_json::json!({ "weeks": table })))
}
