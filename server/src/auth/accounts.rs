//! User accounts: creation, lookup by email, and sign-in.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Auth, AuthError, SignedIn, monotonic_now, now_millis, password};

/// Seconds a client is told to wait when the hashing pool is full.
const BUSY_RETRY_AFTER_SECS: u64 = 1;

fn server_busy(_: password::Busy) -> AuthError {
    AuthError::ServerBusy {
        retry_after_secs: BUSY_RETRY_AFTER_SECS,
    }
}

/// A new account's fields, checked and trimmed.
struct ValidAccount {
    email: String,
    normalized_email: String,
    password: String,
    display_name: String,
}
use crate::store::{Batch, Store, StoreError};

pub const MAX_DISPLAY_NAME: usize = 80;
const MAX_EMAIL: usize = 254;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Host,
    Manager,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "member" => Ok(Role::Member),
            "host" => Ok(Role::Host),
            "manager" => Ok(Role::Manager),
            other => Err(format!(
                "unknown role {other:?}: expected member, host or manager"
            )),
        }
    }
}

/// A user as the API shows them. `email` is present only for the user
/// themselves and for managers; see [`User::without_email`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub display_name: String,
    pub role: Role,
    /// Milliseconds since the epoch.
    pub created_at: u64,
}

impl User {
    pub fn without_email(mut self) -> Self {
        self.email = None;
        self
    }
}

/// What is stored under `user/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRecord {
    id: String,
    email: String,
    display_name: String,
    role: Role,
    created_at: u64,
    password_hash: String,
    /// How and when members can reach this person (managers and hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    contact_card: Option<String>,
}

impl UserRecord {
    fn to_user(&self) -> User {
        User {
            id: self.id.clone(),
            email: Some(self.email.clone()),
            display_name: self.display_name.clone(),
            role: self.role,
            created_at: self.created_at,
        }
    }
}

/// A request to create an account.
#[derive(Debug, Clone, Deserialize)]
pub struct NewAccount {
    pub email: String,
    pub password: String,
    pub display_name: String,
}

fn user_key(id: &str) -> Vec<u8> {
    format!("user/{id}").into_bytes()
}

fn email_key(normalized_email: &str) -> Vec<u8> {
    format!("user-email/{normalized_email}").into_bytes()
}

/// Emails compare case-insensitively: the index key is the trimmed, lowercased form.
fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

fn is_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    email.len() <= MAX_EMAIL
        && !local.is_empty()
        && local.len() <= 64
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty())
}

/// Checks and trims a new account's fields; nothing slow.
fn validate(account: NewAccount) -> Result<ValidAccount, AuthError> {
    let email = account.email.trim().to_string();
    let normalized_email = normalize_email(&email);
    if !is_valid_email(&normalized_email) {
        return Err(AuthError::InvalidEmail);
    }
    if !password::is_strong_enough(&account.password) {
        return Err(AuthError::WeakPassword);
    }
    let display_name = account.display_name.trim().to_string();
    let name_length = display_name.chars().count();
    if name_length == 0
        || name_length > MAX_DISPLAY_NAME
        || display_name.chars().any(char::is_control)
    {
        return Err(AuthError::InvalidDisplayName);
    }
    Ok(ValidAccount {
        email,
        normalized_email,
        password: account.password,
        display_name,
    })
}

pub(super) fn read_json<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    store
        .get(key)?
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|error| StoreError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                reason: error.to_string(),
            })
        })
        .transpose()
}

pub(super) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize to JSON")
}

impl Auth {
    /// `POST /api/auth/register`: a new member, signed in. Counts against
    /// `address`'s sign-ups before the slow hash; refused at once when the
    /// hashing pool is full.
    pub fn register(
        &self,
        account: NewAccount,
        open_signup: bool,
        address: IpAddr,
    ) -> Result<SignedIn, AuthError> {
        if !open_signup {
            return Err(AuthError::SignupClosed);
        }
        let account = validate(account)?;
        let slot = self.signup_limiter.reserve(address, monotonic_now())?;
        let password_hash = self
            .hashing
            .try_hash(&account.password)
            .map_err(server_busy)?;
        // The hash was paid for: the sign-up counts whatever happens next.
        slot.keep();
        let user = self.insert_user(account, password_hash, Role::Member)?;
        self.start_session(user)
    }

    /// Creates an account with `role` (the CLI; it waits for the hashing pool).
    pub fn create_user(&self, account: NewAccount, role: Role) -> Result<User, AuthError> {
        let account = validate(account)?;
        let password_hash = self.hashing.hash(&account.password);
        self.insert_user(account, password_hash, role)
    }

    fn insert_user(
        &self,
        account: ValidAccount,
        password_hash: String,
        role: Role,
    ) -> Result<User, AuthError> {
        let record = UserRecord {
            id: uuid::Uuid::new_v4().to_string(),
            email: account.email,
            display_name: account.display_name,
            role,
            created_at: now_millis(),
            password_hash,
            contact_card: None,
        };
        let normalized = account.normalized_email;
        let _guard = self.lock_writes();
        if self.store.get(&email_key(&normalized))?.is_some() {
            return Err(AuthError::EmailTaken);
        }
        self.store.apply(
            Batch::new()
                .put(user_key(&record.id), to_json(&record))
                .put(email_key(&normalized), record.id.clone()),
        )?;
        self.store.flush()?;
        tracing::info!(user_id = %record.id, role = ?record.role, "account created");
        Ok(record.to_user())
    }

    /// `POST /api/auth/login`. The attempt is counted against the account
    /// and the client address before the password is verified (see
    /// `rate_limit`), so concurrent guesses cannot outrun the count; a right
    /// password forgives the account's failures.
    pub fn login(
        &self,
        email: &str,
        password: &str,
        address: IpAddr,
    ) -> Result<SignedIn, AuthError> {
        let normalized = normalize_email(email);
        let attempt = self
            .login_limiter
            .begin(&normalized, address, monotonic_now())?;
        // On any early return below the attempt is dropped unsettled, and so
        // given back: nothing was verified.
        let record = self.find_by_email(&normalized)?;
        let stored_hash = record
            .as_ref()
            .map_or(self.dummy_password_hash.as_str(), |record| {
                record.password_hash.as_str()
            });
        // An unknown email is verified against the dummy hash, so it takes
        // as long as a wrong password.
        let matches = self
            .hashing
            .try_verify(password, stored_hash)
            .map_err(server_busy)?;
        match record {
            Some(record) if matches => {
                attempt.succeeded();
                self.start_session(record.to_user())
            }
            _ => {
                attempt.failed(monotonic_now());
                tracing::info!(%address, "failed sign-in");
                Err(AuthError::InvalidCredentials)
            }
        }
    }

    pub fn user(&self, id: &str) -> Result<User, AuthError> {
        self.user_record(id).map(|record| record.to_user())
    }

    /// Every account with its contact card, in id order.
    pub fn all_users(&self) -> Result<Vec<(User, Option<String>)>, AuthError> {
        self.store
            .scan_prefix(b"user/")?
            .into_iter()
            .map(|(key, bytes)| {
                serde_json::from_slice::<UserRecord>(&bytes)
                    .map(|record| (record.to_user(), record.contact_card))
                    .map_err(|error| {
                        AuthError::Store(StoreError::Corrupt {
                            key: String::from_utf8_lossy(&key).into_owned(),
                            reason: error.to_string(),
                        })
                    })
            })
            .collect()
    }

    /// Gives `id` a new role. The last manager cannot step down, so the
    /// community always has someone who can change roles.
    pub fn set_role(&self, id: &str, role: Role) -> Result<User, AuthError> {
        let _guard = self.lock_writes();
        let mut record = self.user_record(id)?;
        if record.role == Role::Manager && role != Role::Manager {
            let managers = self
                .all_users()?
                .iter()
                .filter(|(user, _)| user.role == Role::Manager)
                .count();
            if managers <= 1 {
                return Err(AuthError::LastManager);
            }
        }
        record.role = role;
        self.store.put(&user_key(id), &to_json(&record))?;
        self.store.flush()?;
        tracing::info!(user_id = %id, role = ?role, "role changed");
        Ok(record.to_user())
    }

    pub fn set_contact_card(&self, id: &str, text: &str) -> Result<(), AuthError> {
        let _guard = self.lock_writes();
        let mut record = self.user_record(id)?;
        record.contact_card = Some(text.to_string());
        self.store.put(&user_key(id), &to_json(&record))?;
        self.store.flush()?;
        Ok(())
    }

    fn user_record(&self, id: &str) -> Result<UserRecord, AuthError> {
        read_json::<UserRecord>(self.store.as_ref(), &user_key(id))?.ok_or(AuthError::UserNotFound)
    }

    fn find_by_email(&self, normalized: &str) -> Result<Option<UserRecord>, AuthError> {
        let Some(id) = self.store.get(&email_key(normalized))? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&id).into_owned();
        Ok(Some(self.user_record(&id)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain() {
        assert!(is_valid_email("ada@example.org"));
        assert!(!is_valid_email("ada"));
        assert!(!is_valid_email("@example.org"));
        assert!(!is_valid_email("ada@localhost"));
        assert!(!is_valid_email("ada@example..org"));
        assert!(!is_valid_email("a da@example.org"));
    }

    #[test]
    fn emails_are_compared_without_case_or_surrounding_space() {
        assert_eq!(normalize_email("  Ada@Example.ORG "), "ada@example.org");
    }

    #[test]
    fn roles_parse_from_their_api_names() {
        assert_eq!("manager".parse::<Role>(), Ok(Role::Manager));
        assert!("admin".parse::<Role>().is_err());
    }
}
