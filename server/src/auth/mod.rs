//! Accounts, passwords, sessions and tokens.
//!
//! [`Auth`] is the one place that decides who someone is. Handlers reach it
//! through the [`AuthUser`] extractor (for signed-in calls) or call its
//! account methods directly (register, login, refresh, logout). Methods that
//! hash passwords or flush the store block; handlers run them off the async
//! workers with `web::block`.

mod accounts;
mod client_address;
mod extractor;
mod password;
mod rate_limit;
mod sessions;
mod tokens;

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use accounts::{NewAccount, Role, User};
pub use client_address::{TrustedProxies, client_address};
pub use extractor::AuthUser;
pub use tokens::TokenKeys;

use crate::config::Limits;
use crate::store::{Store, StoreError};
use rate_limit::{LoginLimiter, SignupLimiter};

/// Why an account or token operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("this is not a valid email address")]
    InvalidEmail,
    #[error("the password must be at least {min} characters long", min = password::MIN_LENGTH)]
    WeakPassword,
    #[error("the display name must be 1 to {max} characters", max = accounts::MAX_DISPLAY_NAME)]
    InvalidDisplayName,
    #[error("this community does not accept new sign-ups; ask a manager for an account")]
    SignupClosed,
    #[error("wrong email or password")]
    InvalidCredentials,
    #[error("too many failed sign-in attempts; try again in {retry_after_secs} seconds")]
    TooManyAttempts { retry_after_secs: u64 },
    #[error("too many sign-ups from this address; try again in {retry_after_secs} seconds")]
    TooManySignups { retry_after_secs: u64 },
    #[error("the server is busy checking passwords; try again in {retry_after_secs} seconds")]
    ServerBusy { retry_after_secs: u64 },
    #[error("this call needs an access token: send `Authorization: Bearer <token>`")]
    MissingToken,
    #[error("the token is malformed, was not issued by this server, or was tampered with")]
    InvalidToken,
    #[error("the token has expired; refresh it or sign in again")]
    TokenExpired,
    #[error("this session has ended; sign in again")]
    SessionRevoked,
    #[error("this refresh token was already used; the session has been ended for safety")]
    RefreshTokenReused,
    #[error("no user with this id")]
    UserNotFound,
    #[error("this is the community's last manager; make someone else a manager first")]
    LastManager,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A signed-in user, as every authenticated request sees them: the stored
/// account (so a role change applies at once) and the live session.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub session_id: String,
}

/// The answer to register, login and refresh.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignedIn {
    pub user: User,
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

type RevocationListener = Box<dyn Fn(&str) + Send + Sync>;

/// Accounts and sessions over the store.
pub struct Auth {
    store: Arc<dyn Store>,
    keys: TokenKeys,
    limits: Limits,
    login_limiter: LoginLimiter,
    signup_limiter: SignupLimiter,
    hashing: password::HashingPool,
    /// Serialises read-then-write sequences (unique emails, token rotation),
    /// so two concurrent requests cannot both pass a check.
    writes: Mutex<()>,
    /// Verified against when the email is unknown, so a login takes as long
    /// whether or not the account exists.
    dummy_password_hash: String,
    /// Told the id of every session that ends, so live connections close with it.
    on_revoke: std::sync::OnceLock<RevocationListener>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(store: Arc<dyn Store>, keys: TokenKeys, limits: Limits) -> Self {
        Self {
            store,
            keys,
            login_limiter: LoginLimiter::new(&limits),
            signup_limiter: SignupLimiter::new(&limits),
            hashing: password::HashingPool::for_this_machine(limits.password_hash_queue),
            limits,
            writes: Mutex::new(()),
            dummy_password_hash: password::hash(&uuid::Uuid::new_v4().to_string()),
            on_revoke: std::sync::OnceLock::new(),
        }
    }

    /// Registers what to do when a session ends (close its sync connections).
    pub fn on_session_revoked(&self, listener: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.on_revoke.set(Box::new(listener));
    }

    fn session_revoked(&self, session_id: &str) {
        if let Some(listener) = self.on_revoke.get() {
            listener(session_id);
        }
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded value is `()`: a panic elsewhere leaves nothing inconsistent.
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Milliseconds since the Unix epoch, the unit of every stored timestamp.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// The clock the login and sign-up limiters count with.
pub fn monotonic_now() -> Instant {
    Instant::now()
}
