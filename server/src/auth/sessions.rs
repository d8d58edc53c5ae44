//! Sessions: one per sign-in, alive until logout, reuse of a refresh token,
//! or 30 days without a refresh. Every authenticated request checks its
//! session here, so ending a session takes effect at once.

use serde::{Deserialize, Serialize};

use super::accounts::{read_json, to_json};
use super::tokens::{Claims, TokenKind};
use super::{Auth, AuthError, Principal, SignedIn, User, now_millis};

/// What is stored under `session/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    id: String,
    user_id: String,
    /// Bumped by every refresh; only a refresh token of this generation is current.
    generation: u64,
    created_at: u64,
    /// When the session ends unless refreshed (milliseconds since the epoch).
    expires_at: u64,
    revoked: bool,
}

fn session_key(id: &str) -> Vec<u8> {
    format!("session/{id}").into_bytes()
}

impl Auth {
    pub(super) fn start_session(&self, user: User) -> Result<SignedIn, AuthError> {
        let now = now_millis();
        let session = SessionRecord {
            id: uuid::Uuid::new_v4().to_string(),
            user_id: user.id.clone(),
            generation: 0,
            created_at: now,
            expires_at: now + self.limits.refresh_token_ttl.as_millis() as u64,
            revoked: false,
        };
        self.save_session(&session)?;
        Ok(self.issue_tokens(user, &session, now))
    }

    /// `POST /api/auth/refresh`: rotates the pair. A refresh token of an older
    /// generation means it leaked or was replayed, so the whole session ends.
    pub fn refresh(&self, refresh_token: &str) -> Result<SignedIn, AuthError> {
        let claims = self.keys.verify(refresh_token, TokenKind::Refresh)?;
        let presented = claims.generation.ok_or(AuthError::InvalidToken)?;
        let now = now_millis();
        let _guard = self.lock_writes();
        let mut session = self.load_session(&claims.sid)?;
        if session.user_id != claims.sub {
            return Err(AuthError::InvalidToken);
        }
        if session.revoked || session.expires_at <= now {
            return Err(AuthError::SessionRevoked);
        }
        if presented < session.generation {
            session.revoked = true;
            self.save_session(&session)?;
            self.session_revoked(&session.id);
            tracing::warn!(session_id = %session.id, user_id = %session.user_id,
                "a used refresh token was presented again; session revoked");
            return Err(AuthError::RefreshTokenReused);
        }
        if presented > session.generation {
            return Err(AuthError::InvalidToken);
        }
        let user = self.user(&session.user_id)?;
        session.generation += 1;
        session.expires_at = now + self.limits.refresh_token_ttl.as_millis() as u64;
        self.save_session(&session)?;
        Ok(self.issue_tokens(user, &session, now))
    }

    /// `POST /api/auth/logout`: ends the session; its tokens stop working at once.
    pub fn logout(&self, session_id: &str) -> Result<(), AuthError> {
        let _guard = self.lock_writes();
        let mut session = self.load_session(session_id)?;
        if !session.revoked {
            session.revoked = true;
            self.save_session(&session)?;
        }
        self.session_revoked(&session.id);
        Ok(())
    }

    /// Checks an access token and that its session still lives, and loads the
    /// user as stored now (not as the token remembers them).
    pub fn authenticate(&self, access_token: &str) -> Result<Principal, AuthError> {
        let claims = self.keys.verify(access_token, TokenKind::Access)?;
        self.session_principal(&claims.sid, &claims.sub)
    }

    /// Who holds a live session now: the stored account (with its current
    /// role) if the session still lives, for a long-lived connection to check
    /// again when it starts acting (a sync `join`), not only at its upgrade.
    pub fn session_principal(
        &self,
        session_id: &str,
        user_id: &str,
    ) -> Result<Principal, AuthError> {
        let session = self.load_session(session_id)?;
        if session.revoked || session.expires_at <= now_millis() || session.user_id != user_id {
            return Err(AuthError::SessionRevoked);
        }
        let user = self.user(user_id).map_err(|error| match error {
            AuthError::UserNotFound => AuthError::SessionRevoked,
            other => other,
        })?;
        Ok(Principal {
            user,
            session_id: session.id,
        })
    }

    fn load_session(&self, id: &str) -> Result<SessionRecord, AuthError> {
        read_json::<SessionRecord>(self.store.as_ref(), &session_key(id))?
            .ok_or(AuthError::SessionRevoked)
    }

    /// Sessions are flushed at once: a rotation that a crash forgot would
    /// make the client's new refresh token look forged, and its old one current.
    fn save_session(&self, session: &SessionRecord) -> Result<(), AuthError> {
        self.store
            .put(&session_key(&session.id), &to_json(session))?;
        self.store.flush()?;
        Ok(())
    }

    fn issue_tokens(&self, user: User, session: &SessionRecord, now: u64) -> SignedIn {
        let now_secs = now / 1000;
        let access_ttl = self.limits.access_token_ttl.as_secs();
        let claims = |typ, ttl: u64, generation| Claims {
            sub: user.id.clone(),
            sid: session.id.clone(),
            role: user.role,
            typ,
            iat: now_secs,
            exp: now_secs + ttl,
            generation,
        };
        let access_token = self.keys.sign(&claims(TokenKind::Access, access_ttl, None));
        let refresh_token = self.keys.sign(&claims(
            TokenKind::Refresh,
            self.limits.refresh_token_ttl.as_secs(),
            Some(session.generation),
        ));
        SignedIn {
            user,
            access_token,
            refresh_token,
            expires_in: access_ttl,
        }
    }
}
