//! Storage behind one small trait, so the rest of the server never knows
//! whether it talks to sled on disk or to the in-memory twin used in tests.
//!
//! Keys are bytes; by convention they are `/`-separated paths such as
//! `user/<id>`, so a prefix scan lists one kind of record. Every backend must
//! pass the behavioural suite in `tests.rs`.

mod memory;
mod sled_store;
#[cfg(test)]
mod tests;

pub use memory::MemoryStore;
pub use sled_store::SledStore;

/// What went wrong below the storage trait.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend failed: {0}")]
    Backend(String),
    #[error("stored record at {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A key and its value, as a prefix scan returns them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One write inside an atomic [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// Writes applied all together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    writes: Vec<Write>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.writes.push(Write::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn delete(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.writes.push(Write::Delete { key: key.into() });
        self
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn into_writes(self) -> Vec<Write> {
        self.writes
    }

    /// The sync engine's writes, as one batch.
    pub fn of(writes: Vec<backchannel_sync::storage::StorageWrite>) -> Self {
        use backchannel_sync::storage::StorageWrite;
        writes
            .into_iter()
            .fold(Self::new(), |batch, write| match write {
                StorageWrite::Put { key, value } => batch.put(key, value),
                StorageWrite::Delete { key } => batch.delete(key),
            })
    }
}

/// A key/value store. Writes become durable at the latest on [`Store::flush`].
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    fn delete(&self, key: &[u8]) -> Result<(), StoreError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, StoreError>;
    /// Applies every write of `batch` atomically.
    fn apply(&self, batch: Batch) -> Result<(), StoreError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn Store")
    }
}
