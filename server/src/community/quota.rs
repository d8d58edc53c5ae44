//! How many documents each user may create. Without it one member could fill
//! the store with documents only they can read (a document without a type is
//! its creator's alone). The count is kept in the store, so it survives
//! restarts; a creation whose write then fails still counts, which errs on
//! the side of the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::{Store, StoreError};

use super::actors::SERVER_OWNER;

/// Documents one user may create, all kinds together (posts, conversations,
/// drafts, and anything else they sync first).
pub const DOCUMENTS_PER_USER: u64 = 10_000;

#[derive(Clone)]
pub struct DocumentQuota {
    store: Arc<dyn Store>,
    limit: u64,
    counts: Arc<Mutex<HashMap<String, u64>>>,
}

impl std::fmt::Debug for DocumentQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentQuota")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub enum QuotaError {
    Full { limit: u64 },
    Store(StoreError),
}

fn key(user: &str) -> Vec<u8> {
    format!("quota/documents/{user}").into_bytes()
}

impl DocumentQuota {
    pub fn new(store: Arc<dyn Store>, limit: u64) -> Self {
        Self {
            store,
            limit,
            counts: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn count(&self, counts: &mut HashMap<String, u64>, user: &str) -> Result<u64, StoreError> {
        if let Some(count) = counts.get(user) {
            return Ok(*count);
        }
        let count = self
            .store
            .get(&key(user))?
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        counts.insert(user.to_string(), count);
        Ok(count)
    }

    /// `user`'s count while they may create one more document; `None` for
    /// the server, whose documents are not counted.
    fn room(
        &self,
        counts: &mut HashMap<String, u64>,
        user: &str,
    ) -> Result<Option<u64>, QuotaError> {
        if user == SERVER_OWNER {
            return Ok(None);
        }
        let count = self.count(counts, user).map_err(QuotaError::Store)?;
        if count >= self.limit {
            return Err(QuotaError::Full { limit: self.limit });
        }
        Ok(Some(count))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `user` may create one more document.
    pub fn has_room(&self, user: &str) -> Result<(), QuotaError> {
        self.room(&mut self.lock(), user).map(|_| ())
    }

    /// Counts one more document created by `user`, unless they are at the
    /// limit.
    pub fn take_one(&self, user: &str) -> Result<(), QuotaError> {
        let mut counts = self.lock();
        if let Some(count) = self.room(&mut counts, user)? {
            self.store
                .put(&key(user), &(count + 1).to_be_bytes())
                .map_err(QuotaError::Store)?;
            counts.insert(user.to_string(), count + 1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn a_member_who_created_their_quota_of_documents_is_refused_a_new_one() {
        use automerge::transaction::Transactable;
        use backchannel_sync::{DocumentId, DocumentView, Policy};

        use crate::auth::Role;
        use crate::community::{ActorBindings, CommunityRules, SyncUser};

        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let rules = CommunityRules::new(
            ActorBindings::new(store.clone()),
            DocumentQuota::new(store, 1),
        );
        let ada = SyncUser {
            id: "ada".into(),
            role: Role::Member,
            session_id: "session-ada".into(),
        };
        let create = |n: i64| {
            let mut doc = automerge::Automerge::new();
            let mut tx = doc.transaction();
            tx.put(automerge::ROOT, "n", n).unwrap();
            tx.commit();
            let changes = doc.get_changes(&[]);
            let id = DocumentId::from_bytes([n as u8; 16]);
            let view = DocumentView {
                id: &id,
                doc: &doc,
                creator: "ada",
            };
            rules.check_changes(&ada, view, &[], &changes, true)
        };
        create(1).unwrap();
        let refusal = create(2).unwrap_err();
        assert!(refusal.to_string().contains("rule quota"), "{refusal}");
    }

    #[test]
    fn a_user_at_the_limit_creates_nothing_more_and_the_count_survives_a_restart() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let quota = DocumentQuota::new(store.clone(), 2);
        quota.take_one("ada").unwrap();
        quota.take_one("ada").unwrap();
        assert!(matches!(
            quota.has_room("ada"),
            Err(QuotaError::Full { limit: 2 })
        ));
        assert!(matches!(
            quota.take_one("ada"),
            Err(QuotaError::Full { limit: 2 })
        ));
        quota.take_one("bob").unwrap();
        let restarted = DocumentQuota::new(store, 2);
        assert!(matches!(
            restarted.take_one("ada"),
            Err(QuotaError::Full { .. })
        ));
        restarted.take_one("bob").unwrap();
    }
}
