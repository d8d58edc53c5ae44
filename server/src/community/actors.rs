//! Actor binding (SPEC §3): an automerge actor id belongs to the first user
//! who sent a change made by it. Bindings are kept in the store under
//! `actor/<hex>` and cached; the server's own actor is bound at start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use automerge::ActorId;

use crate::store::{Store, StoreError};

/// The owner recorded for the server's own actor.
pub const SERVER_OWNER: &str = backchannel_sync::SERVER_USER;

#[derive(Clone)]
pub struct ActorBindings {
    store: Arc<dyn Store>,
    cache: Arc<Mutex<HashMap<ActorId, String>>>,
}

impl std::fmt::Debug for ActorBindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorBindings").finish_non_exhaustive()
    }
}

fn key(actor: &ActorId) -> Vec<u8> {
    format!("actor/{}", actor.to_hex_string()).into_bytes()
}

/// Why a change's actor was refused.
#[derive(Debug)]
pub enum ClaimError {
    TakenBy(String),
    Store(StoreError),
}

impl ActorBindings {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Who `actor` belongs to, if anyone.
    pub fn owner(&self, actor: &ActorId) -> Result<Option<String>, StoreError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        self.owner_locked(&mut cache, actor)
    }

    fn owner_locked(
        &self,
        cache: &mut HashMap<ActorId, String>,
        actor: &ActorId,
    ) -> Result<Option<String>, StoreError> {
        if let Some(owner) = cache.get(actor) {
            return Ok(Some(owner.clone()));
        }
        let owner = self
            .store
            .get(&key(actor))?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        if let Some(owner) = &owner {
            cache.insert(actor.clone(), owner.clone());
        }
        Ok(owner)
    }

    /// Binds `actor` to `user` unless it is already someone else's. The check
    /// and the binding happen under one lock, so two users can never both
    /// claim a new actor. The binding becomes durable with the store's next
    /// flush, which precedes any acknowledgement of the change.
    pub fn claim(&self, actor: &ActorId, user: &str) -> Result<(), ClaimError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match self
            .owner_locked(&mut cache, actor)
            .map_err(ClaimError::Store)?
        {
            Some(owner) if owner == user => Ok(()),
            Some(owner) => Err(ClaimError::TakenBy(owner)),
            None => {
                self.store
                    .put(&key(actor), user.as_bytes())
                    .map_err(ClaimError::Store)?;
                cache.insert(actor.clone(), user.to_string());
                Ok(())
            }
        }
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
