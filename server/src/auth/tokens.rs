//! Signed tokens: short-lived access tokens and rotating refresh tokens.
//!
//! Both are HS256 JWTs under the data folder's secret. A `typ` claim keeps
//! one kind from being used as the other. A refresh token also carries its
//! session's generation: each refresh bumps it, so an older generation
//! presented again is a reused token.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{AuthError, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Access,
    Refresh,
}

/// What a token says. `exp` and `iat` are seconds since the epoch (RFC 7519).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: String,
    pub role: Role,
    pub typ: TokenKind,
    pub iat: u64,
    pub exp: u64,
    /// The session generation a refresh token was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(<redacted>)")
    }
}

impl TokenKeys {
    pub fn from_secret(secret: &[u8]) -> Self {
        // Only HS256 is accepted: this rejects `alg: none` and algorithm swaps.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Checks signature, expiry and kind.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                _ => AuthError::InvalidToken,
            })?;
        if data.claims.typ != kind {
            return Err(AuthError::InvalidToken);
        }
        if kind == TokenKind::Refresh && data.claims.generation.is_none() {
            return Err(AuthError::InvalidToken);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(typ: TokenKind, exp: u64) -> Claims {
        Claims {
            sub: "user".into(),
            sid: "session".into(),
            role: Role::Member,
            typ,
            iat: 0,
            exp,
            generation: (typ == TokenKind::Refresh).then_some(0),
        }
    }

    fn far_future() -> u64 {
        super::super::now_millis() / 1000 + 3600
    }

    #[test]
    fn a_signed_token_verifies_with_the_same_secret() {
        let keys = TokenKeys::from_secret(b"0123456789abcdef0123456789abcdef");
        let token = keys.sign(&claims(TokenKind::Access, far_future()));
        assert_eq!(keys.verify(&token, TokenKind::Access).unwrap().sub, "user");
    }

    #[test]
    fn a_token_from_another_secret_is_invalid() {
        let keys = TokenKeys::from_secret(b"0123456789abcdef0123456789abcdef");
        let other = TokenKeys::from_secret(b"another secret, another server!!");
        let token = other.sign(&claims(TokenKind::Access, far_future()));
        assert!(matches!(
            keys.verify(&token, TokenKind::Access),
            Err(AuthError::InvalidToken)
        ));
    }

    #[test]
    fn an_expired_token_says_so() {
        let keys = TokenKeys::from_secret(b"0123456789abcdef0123456789abcdef");
        let token = keys.sign(&claims(TokenKind::Access, 1_000));
        assert!(matches!(
            keys.verify(&token, TokenKind::Access),
            Err(AuthError::TokenExpired)
        ));
    }

    #[test]
    fn a_refresh_token_is_not_an_access_token_and_back() {
        let keys = TokenKeys::from_secret(b"0123456789abcdef0123456789abcdef");
        let refresh = keys.sign(&claims(TokenKind::Refresh, far_future()));
        let access = keys.sign(&claims(TokenKind::Access, far_future()));
        assert!(keys.verify(&refresh, TokenKind::Access).is_err());
        assert!(keys.verify(&access, TokenKind::Refresh).is_err());
    }
}
