//! `ApiError`: the one mapping from what went wrong to an HTTP answer.
//!
//! Every error leaves the server as
//! `{"error": {"code": "snake_case_code", "message": "readable text"}}`.
//! Domain errors convert with `From`, so handlers just use `?`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::auth::AuthError;
use crate::push::PushError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A failure that is ours, not the client's. The detail goes to the log;
    /// the client gets a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the server failed to handle this request; it has been logged",
        )
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after_secs {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(seconds)));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        })
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        use AuthError::*;
        let (status, code) = match &error {
            EmailTaken => (StatusCode::CONFLICT, "email_taken"),
            InvalidEmail => (StatusCode::BAD_REQUEST, "invalid_email"),
            WeakPassword => (StatusCode::BAD_REQUEST, "weak_password"),
            InvalidDisplayName => (StatusCode::BAD_REQUEST, "invalid_display_name"),
            SignupClosed => (StatusCode::FORBIDDEN, "signup_closed"),
            InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            TooManyAttempts { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            TooManySignups { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_signups"),
            ServerBusy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "server_busy"),
            MissingToken => (StatusCode::UNAUTHORIZED, "missing_token"),
            InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            TokenExpired => (StatusCode::UNAUTHORIZED, "token_expired"),
            SessionRevoked => (StatusCode::UNAUTHORIZED, "session_revoked"),
            RefreshTokenReused => (StatusCode::UNAUTHORIZED, "refresh_token_reused"),
            UserNotFound => (StatusCode::NOT_FOUND, "user_not_found"),
            LastManager => (StatusCode::CONFLICT, "last_manager"),
            Store(store_error) => return store_error_to_api(store_error),
        };
        let mut api_error = ApiError::new(status, code, error.to_string());
        if let TooManyAttempts { retry_after_secs }
        | TooManySignups { retry_after_secs }
        | ServerBusy { retry_after_secs } = error
        {
            api_error.retry_after_secs = Some(retry_after_secs);
        }
        api_error
    }
}

impl From<PushError> for ApiError {
    fn from(error: PushError) -> Self {
        match error {
            PushError::InvalidSubscription(why) => {
                ApiError::bad_request("invalid_subscription", why)
            }
            PushError::EndpointNotAllowed(why) => {
                ApiError::bad_request("endpoint_not_allowed", why)
            }
            PushError::Store(error) => store_error_to_api(&error),
        }
    }
}

fn store_error_to_api(error: &StoreError) -> ApiError {
    ApiError::internal(error)
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        store_error_to_api(&error)
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(error: actix_web::error::BlockingError) -> Self {
        ApiError::internal(error)
    }
}

/// Bodies the JSON extractor refused: too large, not JSON, or the wrong shape.
pub fn json_error(error: actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match error {
        E::Overflow { limit } | E::OverflowKnownLength { limit, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the {limit}-byte limit"),
        ),
        E::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        E::Deserialize(error) if error.is_data() => ApiError::bad_request(
            "invalid_request",
            format!("the JSON does not have the expected fields: {error}"),
        ),
        E::Deserialize(error) => ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {error}"),
        ),
        other => ApiError::bad_request("invalid_body", format!("could not read the body: {other}")),
    }
}

pub fn query_error(error: actix_web::error::QueryPayloadError) -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        format!("invalid query parameters: {error}"),
    )
}

pub fn path_error(error: actix_web::error::PathError) -> ApiError {
    ApiError::bad_request("invalid_path", format!("invalid path: {error}"))
}
