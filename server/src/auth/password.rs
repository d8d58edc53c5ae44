//! Argon2id password hashes in PHC string form.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

pub const MIN_LENGTH: usize = 8;

pub fn is_strong_enough(password: &str) -> bool {
    password.chars().count() >= MIN_LENGTH
}

/// Hashes with Argon2id and a fresh random salt (the crate's default parameters).
pub fn hash(password: &str) -> String {
    Argon2::default()
        .hash_password(password.as_bytes())
        .expect("Argon2 with default parameters hashes any input")
        .to_string()
}

pub fn verify(password: &str, stored_hash: &str) -> bool {
    PasswordHash::new(stored_hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let stored = hash("correct horse");
        assert!(stored.starts_with("$argon2id$"));
        assert!(verify("correct horse", &stored));
        assert!(!verify("wrong horse", &stored));
    }

    #[test]
    fn the_same_password_hashes_differently_each_time() {
        assert_ne!(hash("correct horse"), hash("correct horse"));
    }

    #[test]
    fn a_corrupt_stored_hash_verifies_nothing() {
        assert!(!verify("anything", "not a phc string"));
    }

    #[test]
    fn passwords_under_eight_characters_are_weak() {
        assert!(!is_strong_enough("1234567"));
        assert!(is_strong_enough("12345678"));
        assert!(is_strong_enough("ééééééée"));
    }
}
