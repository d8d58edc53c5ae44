use std::path::Path;

use super::{Batch, Entry, Store, StoreError, Write};

/// The default store: sled, embedded in the data folder.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    /// sled's page cache defaults to 1 GiB; a small server keeps it modest.
    const CACHE_BYTES: u64 = 64 * 1024 * 1024;

    /// How long `open` waits for sled's own file lock. The data folder's lock
    /// already keeps other processes out, so a held sled lock can only be this
    /// process's previous store, whose background threads release it a moment
    /// after the last handle is dropped (a restart inside one process).
    const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + Self::LOCK_WAIT;
        loop {
            match sled::Config::new()
                .path(path)
                .cache_capacity(Self::CACHE_BYTES)
                .open()
            {
                Ok(db) => return Ok(Self { db }),
                // sled reports its lock as `Other` with this text.
                Err(sled::Error::Io(error))
                    if error.to_string().starts_with("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// A store in a temporary folder that sled removes when it is dropped.
    pub fn temporary() -> Result<Self, StoreError> {
        let db = sled::Config::new().temporary(true).open()?;
        Ok(Self { db })
    }
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        StoreError::Backend(error.to_string())
    }
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key)?.map(|value| value.to_vec()))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db.insert(key, value)?;
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), StoreError> {
        self.db.remove(key)?;
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        self.db
            .scan_prefix(prefix)
            .map(|entry| {
                let (key, value) = entry?;
                Ok((key.to_vec(), value.to_vec()))
            })
            .collect()
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let mut sled_batch = sled::Batch::default();
        for write in batch.into_writes() {
            match write {
                Write::Put { key, value } => sled_batch.insert(key, value),
                Write::Delete { key } => sled_batch.remove(key),
            }
        }
        self.db.apply_batch(sled_batch)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}
