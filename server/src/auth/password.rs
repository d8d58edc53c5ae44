//! Argon2id password hashes in PHC string form, computed on a small pool of
//! threads of their own.
//!
//! Each hash takes about 19 MiB and tens of milliseconds of CPU. Run on the
//! HTTP server's blocking pool, a burst of sign-ups would hash on dozens of
//! threads at once, and the allocator would keep 19 MiB per thread long
//! after. A pool as wide as the machine bounds both CPU and memory.
//!
//! The queue in front of it is bounded too: a flood of sign-ups or logins
//! would otherwise line up thousands of jobs, and an honest login would wait
//! behind all of them while each waiting request holds a blocking thread.
//! When the pool and its queue are full, [`HashingPool::try_hash`] and
//! [`HashingPool::try_verify`] refuse at once with [`Busy`].

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

pub const MIN_LENGTH: usize = 8;

type Job = Box<dyn FnOnce() + Send>;

/// The pool and its queue are full: try again in a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// Threads that do nothing but hash and verify passwords.
#[derive(Debug, Clone)]
pub struct HashingPool {
    jobs: mpsc::Sender<Job>,
    /// One permit per job running or waiting: `threads + queue`.
    slots: Arc<Semaphore>,
}

impl HashingPool {
    /// `threads` hashing threads, and at most `queue` jobs waiting for one.
    pub fn new(threads: usize, queue: usize) -> Self {
        let threads = threads.max(1);
        let slots = Arc::new(Semaphore::new(threads.saturating_add(queue)));
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads {
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
        Self { jobs, slots }
    }

    /// As wide as the machine, with `queue` jobs allowed to wait.
    pub fn for_this_machine(queue: usize) -> Self {
        Self::new(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue,
        )
    }

    /// Runs `work` on the pool if a slot is free; the slot is held until the
    /// work is done, even if the caller stops waiting.
    fn try_run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| Busy)?;
        Ok(self.run(move || {
            let outcome = work();
            drop(permit);
            outcome
        }))
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

    /// Hashes, waiting however long the queue is (the CLI, one account at a time).
    pub fn hash(&self, password: &str) -> String {
        let password = password.to_owned();
        self.run(move || hash(&password))
    }

    /// Hashes, unless the pool and its queue are full.
    pub fn try_hash(&self, password: &str) -> Result<String, Busy> {
        let password = password.to_owned();
        self.try_run(move || hash(&password))
    }

    /// Verifies, unless the pool and its queue are full.
    pub fn try_verify(&self, password: &str, stored_hash: &str) -> Result<bool, Busy> {
        let (password, stored_hash) = (password.to_owned(), stored_hash.to_owned());
        self.try_run(move || verify(&password, &stored_hash))
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
        let pool = HashingPool::new(2, 8);
        let hashes: Vec<_> = (0..4)
            .map(|n| {
                let pool = pool.clone();
                std::thread::spawn(move || (n, pool.hash(&format!("password {n}"))))
            })
            .map(|thread| thread.join().unwrap())
            .collect();
        for (n, stored) in hashes {
            assert_eq!(pool.try_verify(&format!("password {n}"), &stored), Ok(true));
            assert_eq!(pool.try_verify("another password", &stored), Ok(false));
        }
    }

    #[test]
    fn a_full_pool_refuses_at_once_and_accepts_again_when_a_slot_frees() {
        // One thread, one waiting job: a third job is refused.
        let pool = HashingPool::new(1, 1);
        let (release, held) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let blockers: Vec<_> = (0..2)
            .map(|_| {
                let (pool, held, started) = (pool.clone(), held.clone(), started.clone());
                std::thread::spawn(move || {
                    pool.try_run(move || {
                        let _ = started.send(());
                        let _ = held.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    })
                })
            })
            .collect();
        // The first job runs; the second holds the queue's slot (it has its
        // permit before it is sent, and the first thread is blocked).
        let _ = running.recv();
        while pool.slots.available_permits() > 0 {
            std::thread::yield_now();
        }
        assert_eq!(pool.try_hash("correct horse"), Err(Busy));
        for _ in 0..2 {
            let _ = release.send(());
        }
        for blocker in blockers {
            assert_eq!(blocker.join().ok(), Some(Ok(())));
        }
        assert!(pool.try_hash("correct horse").is_ok());
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
