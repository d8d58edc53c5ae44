//! Argon2id password hashes in PHC string form, computed on a small pool of
//! threads of their own.
//!
//! Each hash takes about 19 MiB and tens of milliseconds of CPU. Run on the
//! HTTP server's blocking pool, a burst of sign-ups would hash on dozens of
//! threads at once, and the allocator would keep 19 MiB per thread long
//! after. A pool as wide as the machine bounds both CPU and memory.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

pub const MIN_LENGTH: usize = 8;

type Job = Box<dyn FnOnce() + Send>;

/// Threads that do nothing but hash and verify passwords.
#[derive(Debug, Clone)]
pub struct HashingPool {
    jobs: mpsc::Sender<Job>,
}

impl HashingPool {
    pub fn new(threads: usize) -> Self {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("password-{index}"))
                .spawn(move || {
                    loop {
                        let job = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("a password hashing thread starts");
        }
        Self { jobs }
    }

    /// As wide as the machine.
    pub fn for_this_machine() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        // The pool is gone only while the process exits: then hash right here.
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            job();
        }
        result
            .recv()
            .expect("every password job runs to completion")
    }

    pub fn hash(&self, password: &str) -> String {
        let password = password.to_owned();
        self.run(move || hash(&password))
    }

    pub fn verify(&self, password: &str, stored_hash: &str) -> bool {
        let (password, stored_hash) = (password.to_owned(), stored_hash.to_owned());
        self.run(move || verify(&password, &stored_hash))
    }
}

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
    fn the_pool_hashes_and_verifies_concurrently() {
        let pool = HashingPool::new(2);
        let hashes: Vec<_> = (0..4)
            .map(|n| {
                let pool = pool.clone();
                std::thread::spawn(move || (n, pool.hash(&format!("password {n}"))))
            })
            .map(|thread| thread.join().unwrap())
            .collect();
        for (n, stored) in hashes {
            assert!(pool.verify(&format!("password {n}"), &stored));
            assert!(!pool.verify("another password", &stored));
        }
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
