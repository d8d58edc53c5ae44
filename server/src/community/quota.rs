//! How much each user may store: documents created, and bytes of changes
//! written. Without it one member could fill the store with documents only
//! they can read (a document without a type is its creator's alone), or with
//! changes nobody else ever syncs. Counts are kept in the store, so they
//! survive restarts; a message whose write then fails still counts, which
//! errs on the side of the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use backchannel_sync::storage::StorageWrite;

use crate::store::{Store, StoreError};

use super::actors::SERVER_OWNER;

/// Documents one user may create, all kinds together (posts, conversations,
/// drafts, and anything else they sync first).
pub const DOCUMENTS_PER_USER: u64 = 10_000;

/// Bytes of changes one user may write, all documents together: years of
/// typing (a keystroke's change is about a hundred bytes), far less than a
/// flood fills.
pub const BYTES_PER_USER: u64 = 256 * 1024 * 1024;

/// What a user has stored, or what one message adds to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub documents: u64,
    pub bytes: u64,
}

impl Usage {
    fn plus(self, other: Usage) -> Usage {
        Usage {
            documents: self.documents.saturating_add(other.documents),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

#[derive(Clone)]
pub struct Quota {
    store: Arc<dyn Store>,
    limit: Usage,
    used: Arc<Mutex<HashMap<String, Usage>>>,
}

impl std::fmt::Debug for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quota")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub enum QuotaError {
    Documents { limit: u64 },
    Bytes { limit: u64 },
    Store(StoreError),
}

fn documents_key(user: &str) -> String {
    format!("quota/documents/{user}")
}

fn bytes_key(user: &str) -> String {
    format!("quota/bytes/{user}")
}

impl Quota {
    pub fn new(store: Arc<dyn Store>, limit: Usage) -> Self {
        Self {
            store,
            limit,
            used: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn stored(&self, key: &str) -> Result<u64, StoreError> {
        Ok(self
            .store
            .get(key.as_bytes())?
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    fn usage(&self, used: &mut HashMap<String, Usage>, user: &str) -> Result<Usage, StoreError> {
        if let Some(usage) = used.get(user) {
            return Ok(*usage);
        }
        let usage = Usage {
            documents: self.stored(&documents_key(user))?,
            bytes: self.stored(&bytes_key(user))?,
        };
        used.insert(user.to_string(), usage);
        Ok(usage)
    }

    /// `user`'s usage after `adding`, if it stays within the limits; `None`
    /// for the server, whose documents are not counted.
    fn after(
        &self,
        used: &mut HashMap<String, Usage>,
        user: &str,
        adding: Usage,
    ) -> Result<Option<Usage>, QuotaError> {
        if user == SERVER_OWNER {
            return Ok(None);
        }
        let after = self
            .usage(used, user)
            .map_err(QuotaError::Store)?
            .plus(adding);
        if after.documents > self.limit.documents {
            return Err(QuotaError::Documents {
                limit: self.limit.documents,
            });
        }
        if after.bytes > self.limit.bytes {
            return Err(QuotaError::Bytes {
                limit: self.limit.bytes,
            });
        }
        Ok(Some(after))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Usage>> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `user` may store `adding` more.
    pub fn has_room(&self, user: &str, adding: Usage) -> Result<(), QuotaError> {
        self.after(&mut self.lock(), user, adding).map(drop)
    }

    /// Counts `adding` to `user`'s usage from now on, unless it would pass a
    /// limit; answers the writes that store the new counts (they go with the
    /// changes counted). Two shards may store one user's counts in either
    /// order, so a count can lag by a message: it never runs ahead.
    pub fn take(&self, user: &str, adding: Usage) -> Result<Vec<StorageWrite>, QuotaError> {
        let mut used = self.lock();
        let Some(after) = self.after(&mut used, user, adding)? else {
            return Ok(Vec::new());
        };
        let before = self.usage(&mut used, user).map_err(QuotaError::Store)?;
        let mut writes = Vec::new();
        if after.documents != before.documents {
            writes.push(StorageWrite::Put {
                key: documents_key(user),
                value: after.documents.to_be_bytes().to_vec(),
            });
        }
        if after.bytes != before.bytes {
            writes.push(StorageWrite::Put {
                key: bytes_key(user),
                value: after.bytes.to_be_bytes().to_vec(),
            });
        }
        used.insert(user.to_string(), after);
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, MemoryStore};

    /// Counts `adding` and stores the counts, as the round's write would.
    fn take_stored(
        quota: &Quota,
        store: &Arc<dyn Store>,
        user: &str,
        adding: Usage,
    ) -> Result<(), QuotaError> {
        let writes = quota.take(user, adding)?;
        store.apply(Batch::of(writes)).map_err(QuotaError::Store)
    }

    #[test]
    fn a_member_who_created_their_quota_of_documents_is_refused_a_new_one() {
        use automerge::transaction::Transactable;
        use backchannel_sync::{DocumentId, DocumentView, Policy};

        use crate::auth::Role;
        use crate::community::{ActorBindings, CommunityRules, Restrictions, SyncUser};

        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let rules = CommunityRules::new(
            ActorBindings::new(store.clone()),
            Quota::new(
                store.clone(),
                Usage {
                    documents: 1,
                    bytes: BYTES_PER_USER,
                },
            ),
            Restrictions::new(store, Arc::new(|| 0), 0),
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
                previous: None,
            };
            rules.check_changes(&ada, view, &[], &changes, true)
        };
        create(1).unwrap();
        let refusal = create(2).unwrap_err();
        assert!(refusal.to_string().contains("rule quota"), "{refusal}");
    }

    const ONE_DOCUMENT: Usage = Usage {
        documents: 1,
        bytes: 0,
    };

    #[test]
    fn a_user_at_the_limit_creates_nothing_more_and_the_count_survives_a_restart() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let limit = Usage {
            documents: 2,
            bytes: 1_000,
        };
        let quota = Quota::new(store.clone(), limit);
        take_stored(&quota, &store, "ada", ONE_DOCUMENT).unwrap();
        take_stored(&quota, &store, "ada", ONE_DOCUMENT).unwrap();
        assert!(matches!(
            quota.has_room("ada", ONE_DOCUMENT),
            Err(QuotaError::Documents { limit: 2 })
        ));
        assert!(matches!(
            take_stored(&quota, &store, "ada", ONE_DOCUMENT),
            Err(QuotaError::Documents { limit: 2 })
        ));
        take_stored(&quota, &store, "bob", ONE_DOCUMENT).unwrap();
        let restarted = Quota::new(store.clone(), limit);
        assert!(matches!(
            take_stored(&restarted, &store, "ada", ONE_DOCUMENT),
            Err(QuotaError::Documents { .. })
        ));
        take_stored(&restarted, &store, "bob", ONE_DOCUMENT).unwrap();
    }

    #[test]
    fn a_user_who_wrote_their_quota_of_bytes_is_refused_more_and_the_count_survives_a_restart() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let limit = Usage {
            documents: 10,
            bytes: 1_000,
        };
        let bytes = |bytes| Usage {
            documents: 0,
            bytes,
        };
        let quota = Quota::new(store.clone(), limit);
        take_stored(&quota, &store, "ada", bytes(600)).unwrap();
        quota.has_room("ada", bytes(400)).unwrap();
        assert!(matches!(
            quota.has_room("ada", bytes(401)),
            Err(QuotaError::Bytes { limit: 1_000 })
        ));
        take_stored(&quota, &store, "bob", bytes(1_000)).unwrap();
        let restarted = Quota::new(store.clone(), limit);
        assert!(matches!(
            take_stored(&restarted, &store, "ada", bytes(401)),
            Err(QuotaError::Bytes { .. })
        ));
        take_stored(&restarted, &store, "ada", bytes(400)).unwrap();
    }

    #[test]
    fn the_servers_own_writes_are_not_counted() {
        let quota = Quota::new(Arc::new(MemoryStore::default()), Usage::default());
        quota
            .take(
                SERVER_OWNER,
                Usage {
                    documents: 5,
                    bytes: 5,
                },
            )
            .unwrap();
    }
}
