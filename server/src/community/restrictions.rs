//! When each document last became stricter (locked, hidden, a member
//! removed), by the server's clock. Offline work written before a
//! restriction still lands (SPEC §5), but only for a grace time after the
//! server accepted it: without a bound, a hand-made client could claim old
//! dependencies forever and write to a locked post or a conversation it was
//! removed from. Kept in the store under `restricted/<document id>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use backchannel_sync::storage::StorageWrite;

use crate::store::{Store, StoreError};

use super::schema::{DocFacts, PostStatus};

/// How long after a restriction a change written without it is still judged
/// on the document as its author saw it: three days, longer than a phone
/// usually stays offline, short enough that a lock means something.
pub const STALE_GRACE_MILLIS: u64 = 72 * 60 * 60 * 1000;

/// Records kept in memory before the old ones are dropped, and how recent a
/// record must be to stay: only until its write is surely applied.
const RECENT_RECORDS: usize = 1_024;
const RECENT_MILLIS: u64 = 60_000;

/// Milliseconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Clone)]
pub struct Restrictions {
    store: Arc<dyn Store>,
    clock: Clock,
    grace_millis: u64,
    /// Restrictions recorded since start, whose writes may not be stored yet.
    recorded: Arc<Mutex<HashMap<String, u64>>>,
}

impl std::fmt::Debug for Restrictions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restrictions")
            .field("grace_millis", &self.grace_millis)
            .finish_non_exhaustive()
    }
}

fn key(document: &str) -> String {
    format!("restricted/{document}")
}

/// Whether `now` is stricter than `then` for someone: locked, hidden, or a
/// member gone.
pub fn is_stricter(then: &DocFacts, now: &DocFacts) -> bool {
    let locked = now.locked && !then.locked;
    let hidden = now.status == Some(PostStatus::Hidden)
        && then
            .status
            .is_some_and(|status| status != PostStatus::Hidden);
    let removed = then.members.iter().any(|member| !now.is_member(member));
    locked || hidden || removed
}

impl Restrictions {
    pub fn new(store: Arc<dyn Store>, clock: Clock, grace_millis: u64) -> Self {
        Self {
            store,
            clock,
            grace_millis,
            recorded: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Notes that `document` became stricter now; answers the write that
    /// stores it (it goes with the changes that restricted the document).
    pub fn record(&self, document: &str) -> StorageWrite {
        let now = (self.clock)();
        let mut recorded = self.lock();
        if recorded.len() >= RECENT_RECORDS {
            // Older records are in the store by now (their write went with
            // the changes that made them, long since applied).
            recorded.retain(|_, at| now.saturating_sub(*at) < RECENT_MILLIS);
        }
        recorded.insert(document.to_string(), now);
        StorageWrite::Put {
            key: key(document),
            value: now.to_be_bytes().to_vec(),
        }
    }

    /// Whether `document`'s latest restriction is older than the grace time.
    /// A document with no record was restricted before records were kept,
    /// so its grace is over.
    pub fn grace_over(&self, document: &str) -> Result<bool, StoreError> {
        let recorded = self.lock().get(document).copied();
        let at = match recorded {
            Some(at) => Some(at),
            None => self
                .store
                .get(key(document).as_bytes())?
                .and_then(|bytes| bytes.try_into().ok())
                .map(u64::from_be_bytes),
        };
        let Some(at) = at else {
            return Ok(true);
        };
        Ok((self.clock)().saturating_sub(at) > self.grace_millis)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn a_restriction_is_within_its_grace_until_the_grace_time_has_passed() {
        let now = Arc::new(AtomicU64::new(1_000));
        let clock_now = now.clone();
        let restrictions = Restrictions::new(
            Arc::new(MemoryStore::default()),
            Arc::new(move || clock_now.load(Ordering::SeqCst)),
            500,
        );
        restrictions.record("doc");
        now.store(1_500, Ordering::SeqCst);
        assert!(!restrictions.grace_over("doc").unwrap());
        now.store(1_501, Ordering::SeqCst);
        assert!(restrictions.grace_over("doc").unwrap());
        assert!(restrictions.grace_over("never-restricted").unwrap());
    }

    #[test]
    fn restrictions_remembered_in_memory_are_bounded_and_still_read_from_the_store() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let now = Arc::new(AtomicU64::new(0));
        let clock_now = now.clone();
        let restrictions = Restrictions::new(
            store.clone(),
            Arc::new(move || clock_now.load(Ordering::SeqCst)),
            1_000_000,
        );
        for n in 0..3 * RECENT_RECORDS {
            let write = restrictions.record(&format!("doc-{n}"));
            store.apply(crate::store::Batch::of(vec![write])).unwrap();
            now.fetch_add(100, Ordering::SeqCst);
        }
        assert!(restrictions.lock().len() <= RECENT_RECORDS + 1);
        assert!(!restrictions.grace_over("doc-0").unwrap());
    }

    #[test]
    fn locking_hiding_and_removing_a_member_are_stricter_and_their_reverse_is_not() {
        let open = DocFacts {
            status: Some(PostStatus::Published),
            members: vec!["ada".into(), "bob".into()],
            ..DocFacts::default()
        };
        let locked = DocFacts {
            locked: true,
            ..open.clone()
        };
        let hidden = DocFacts {
            status: Some(PostStatus::Hidden),
            ..open.clone()
        };
        let without_bob = DocFacts {
            members: vec!["ada".into()],
            ..open.clone()
        };
        for stricter in [&locked, &hidden, &without_bob] {
            assert!(is_stricter(&open, stricter));
            assert!(!is_stricter(stricter, &open));
        }
    }
}
