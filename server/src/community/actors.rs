//! Actor binding (SPEC §3): an automerge actor id belongs to the first user
//! who sent a change made by it. Bindings are kept in the store under
//! `actor/<hex>` and cached; the server's own actor is bound at start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use automerge::ActorId;
use backchannel_sync::storage::StorageWrite;

use crate::store::{Batch, Store, StoreError};

/// The owner recorded for the server's own actor.
pub const SERVER_OWNER: &str = backchannel_sync::SERVER_USER;

#[derive(Clone)]
pub struct ActorBindings {
    store: Arc<dyn Store>,
    cache: Arc<Mutex<Known>>,
}

/// Bindings read from the store, and those reserved by a message being
/// judged: a reserved actor is its user's while the message is judged and
/// nobody else's meanwhile, but it is stored only if the message passes.
#[derive(Default)]
struct Known {
    owners: HashMap<ActorId, String>,
    reserved: HashMap<ActorId, String>,
}

impl std::fmt::Debug for ActorBindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorBindings").finish_non_exhaustive()
    }
}

fn key(actor: &ActorId) -> String {
    format!("actor/{}", actor.to_hex_string())
}

/// Why a change's actor was refused.
#[derive(Debug)]
pub enum ClaimError {
    TakenBy(String),
    Store(StoreError),
}

/// A new actor held for one user while their message is judged; released
/// unless [`Reservation::commit`] binds it.
pub struct Reservation {
    bindings: ActorBindings,
    actor: ActorId,
    committed: bool,
}

impl Reservation {
    /// Binds the actor to its user from now on; the binding is stored by the
    /// write this answers, which goes with the changes that brought it.
    pub fn commit(mut self) -> Option<StorageWrite> {
        let mut known = self.bindings.lock();
        let user = known.reserved.remove(&self.actor)?;
        let write = StorageWrite::Put {
            key: key(&self.actor),
            value: user.clone().into_bytes(),
        };
        known.owners.insert(self.actor.clone(), user);
        self.committed = true;
        Some(write)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            self.bindings.lock().reserved.remove(&self.actor);
        }
    }
}

impl ActorBindings {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: Arc::new(Mutex::new(Known::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who `actor` belongs to, if anyone (a reservation counts).
    pub fn owner(&self, actor: &ActorId) -> Result<Option<String>, StoreError> {
        let mut known = self.lock();
        self.owner_locked(&mut known, actor)
    }

    fn owner_locked(
        &self,
        known: &mut Known,
        actor: &ActorId,
    ) -> Result<Option<String>, StoreError> {
        if let Some(owner) = known
            .owners
            .get(actor)
            .or_else(|| known.reserved.get(actor))
        {
            return Ok(Some(owner.clone()));
        }
        let owner = self
            .store
            .get(key(actor).as_bytes())?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        if let Some(owner) = &owner {
            known.owners.insert(actor.clone(), owner.clone());
        }
        Ok(owner)
    }

    /// Holds `actor` for `user` unless it is already someone else's: `None`
    /// when it is already theirs. The check and the reservation happen under
    /// one lock, so two users can never both hold a new actor.
    pub fn reserve(&self, actor: &ActorId, user: &str) -> Result<Option<Reservation>, ClaimError> {
        let mut known = self.lock();
        match self
            .owner_locked(&mut known, actor)
            .map_err(ClaimError::Store)?
        {
            Some(owner) if owner == user => Ok(None),
            Some(owner) => Err(ClaimError::TakenBy(owner)),
            None => {
                known.reserved.insert(actor.clone(), user.to_string());
                Ok(Some(Reservation {
                    bindings: self.clone(),
                    actor: actor.clone(),
                    committed: false,
                }))
            }
        }
    }

    /// Binds `actor` to `user` at once, in the store, unless it is already
    /// someone else's.
    pub fn claim(&self, actor: &ActorId, user: &str) -> Result<(), ClaimError> {
        let writes = self.reserve(actor, user)?.and_then(Reservation::commit);
        self.store
            .apply(Batch::of(writes.into_iter().collect()))
            .map_err(ClaimError::Store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn the_first_user_to_send_an_actor_owns_it() {
        let bindings = ActorBindings::new(Arc::new(MemoryStore::default()));
        let actor = ActorId::random();
        bindings.claim(&actor, "ada").unwrap();
        bindings.claim(&actor, "ada").unwrap();
        assert!(matches!(
            bindings.claim(&actor, "bob"),
            Err(ClaimError::TakenBy(owner)) if owner == "ada"
        ));
    }

    #[test]
    fn a_reservation_released_without_commit_binds_nobody() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let bindings = ActorBindings::new(store.clone());
        let actor = ActorId::random();
        let held = bindings.reserve(&actor, "bob").unwrap();
        assert!(matches!(
            bindings.reserve(&actor, "ada"),
            Err(ClaimError::TakenBy(_))
        ));
        drop(held);
        assert_eq!(ActorBindings::new(store).owner(&actor).unwrap(), None);
        bindings.claim(&actor, "ada").unwrap();
    }

    #[test]
    fn bindings_survive_a_new_cache_over_the_same_store() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let actor = ActorId::random();
        ActorBindings::new(store.clone())
            .claim(&actor, "ada")
            .unwrap();
        let fresh = ActorBindings::new(store);
        assert_eq!(fresh.owner(&actor).unwrap().as_deref(), Some("ada"));
    }
}
