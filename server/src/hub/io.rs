//! The hub's IO: a flusher that makes writes durable in batches, and a small
//! pool for loads and compactions (CPU-heavy automerge work).

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use backchannel_sync::storage::{self, StorageWrite};
use backchannel_sync::{DocumentId, Input, WriteId};

use super::shard::ShardCommand;
use crate::store::{Batch, Store};

pub struct WriteJob {
    pub writes: Vec<StorageWrite>,
    /// Whom to tell once the writes are durable.
    pub done: Option<(WriteId, mpsc::Sender<ShardCommand>)>,
}

/// Whether what the store shows is durable. After a failed flush (a full
/// disk), sled still shows the writes it applied but could not flush, so
/// nothing may be acknowledged or loaded until a later flush succeeds.
#[derive(Debug, Default)]
pub struct StoreHealth {
    state: Mutex<HealthState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct HealthState {
    /// Groups of acknowledged writes applied so far.
    applied: u64,
    /// How many of them a successful flush has made durable.
    durable: u64,
    /// Why the last flush failed, until one succeeds.
    failure: Option<String>,
    /// The mark of the latest failed flush.
    failed_at: u64,
}

impl StoreHealth {
    fn lock(&self) -> MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the store is unhealthy, or `None` if it is healthy.
    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    fn is_failed(&self) -> bool {
        self.lock().failure.is_some()
    }

    /// Counts one more group of applied writes; returns its mark.
    fn applied(&self) -> u64 {
        let mut state = self.lock();
        state.applied += 1;
        state.applied
    }

    fn flushed(&self, mark: u64, outcome: &Result<(), String>) {
        let mut state = self.lock();
        match outcome {
            Ok(()) => {
                state.durable = state.durable.max(mark);
                // A flush that began before a later one failed proves nothing
                // about the writes that one left behind.
                if mark >= state.failed_at {
                    state.failure = None;
                }
            }
            Err(reason) => {
                state.failed_at = state.failed_at.max(mark);
                state.failure = Some(reason.clone());
            }
        }
        self.changed.notify_all();
    }

    /// Waits until every write applied so far is durable, so what a read
    /// just saw may be served. While the store is unhealthy it tries one
    /// flush itself and fails if that fails too.
    fn wait_durable(&self, store: &dyn Store) -> Result<(), String> {
        if self.is_failed() {
            let mark = self.lock().applied;
            let flushed = store.flush().map_err(|error| error.to_string());
            self.flushed(mark, &flushed);
        }
        let mut state = self.lock();
        let mark = state.applied;
        loop {
            if let Some(reason) = &state.failure {
                return Err(format!("the store is unhealthy: {reason}"));
            }
            if state.durable >= mark {
                return Ok(());
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

pub struct Flusher {
    sender: mpsc::Sender<Option<WriteJob>>,
    thread: JoinHandle<()>,
}

#[derive(Clone)]
pub struct FlusherHandle(mpsc::Sender<Option<WriteJob>>);

impl FlusherHandle {
    pub fn submit(&self, job: WriteJob) {
        let _ = self.0.send(Some(job));
    }
}

impl Flusher {
    pub fn start(store: Arc<dyn Store>, health: Arc<StoreHealth>) -> Self {
        let (sender, receiver) = mpsc::channel::<Option<WriteJob>>();
        let thread = std::thread::Builder::new()
            .name("sync-flusher".into())
            .spawn(move || flush_loop(store, health, receiver))
            .expect("the flusher thread starts");
        Self { sender, thread }
    }

    pub fn handle(&self) -> FlusherHandle {
        FlusherHandle(self.sender.clone())
    }

    /// Finishes every queued write, then stops.
    pub fn stop(self) {
        let _ = self.sender.send(None);
        let _ = self.thread.join();
    }
}

/// Takes every job waiting, applies each as one atomic batch, and flushes once
/// for all of them: concurrent writers share the cost of durability. After a
/// failed flush every acknowledged write fails until a flush succeeds again
/// (each later batch retries it).
fn flush_loop(
    store: Arc<dyn Store>,
    health: Arc<StoreHealth>,
    receiver: mpsc::Receiver<Option<WriteJob>>,
) {
    let mut stopping = false;
    while !stopping {
        let Ok(first) = receiver.recv() else {
            return;
        };
        let mut jobs = Vec::new();
        for job in std::iter::once(first).chain(receiver.try_iter()) {
            match job {
                Some(job) => jobs.push(job),
                None => stopping = true,
            }
        }
        // The mark is taken before applying, so a load that sees any of
        // these writes waits for the flush below.
        let acknowledging = health.is_failed() || jobs.iter().any(|job| job.done.is_some());
        let mark = acknowledging.then(|| health.applied());
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            let applied = store
                .apply(Batch::of(job.writes))
                .map_err(|error| error.to_string());
            outcomes.push((job.done, applied));
        }
        let flushed = match mark {
            Some(mark) => {
                let flushed = store.flush().map_err(|error| error.to_string());
                health.flushed(mark, &flushed);
                flushed
            }
            None => Ok(()),
        };
        for (done, applied) in outcomes {
            let Some((write, shard)) = done else {
                if let Err(reason) = applied {
                    tracing::warn!(%reason, "a best-effort sync write failed");
                }
                continue;
            };
            let input = match applied.and(flushed.clone()) {
                Ok(()) => Input::Written { write },
                Err(reason) => {
                    tracing::error!(%reason, "storing document changes failed");
                    Input::WriteFailed { write, reason }
                }
            };
            let _ = shard.send(ShardCommand::Input(input));
        }
    }
}

type Job = Box<dyn FnOnce(&dyn Store) + Send>;

/// Documents a load or a compaction is reading or rewriting. A compaction
/// deletes chunks and writes a snapshot in one batch, but a prefix scan is
/// not a snapshot of the store: a load running alongside could see neither
/// the old chunks nor the new snapshot. So the two never overlap for one
/// document.
#[derive(Default)]
struct DocumentLocks {
    busy: Mutex<HashSet<DocumentId>>,
    released: Condvar,
}

struct DocumentLock<'a> {
    locks: &'a DocumentLocks,
    document_id: DocumentId,
}

impl DocumentLocks {
    fn lock(&self, document_id: DocumentId) -> DocumentLock<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while !busy.insert(document_id) {
            busy = self.released.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        DocumentLock {
            locks: self,
            document_id,
        }
    }
}

impl Drop for DocumentLock<'_> {
    fn drop(&mut self) {
        self.locks
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.document_id);
        self.locks.released.notify_all();
    }
}

/// Worker threads for loads and compactions.
#[derive(Clone)]
pub struct IoPool {
    jobs: mpsc::Sender<Job>,
    compacting: Arc<Mutex<HashSet<DocumentId>>>,
    locks: Arc<DocumentLocks>,
    health: Arc<StoreHealth>,
}

impl IoPool {
    pub fn start(store: Arc<dyn Store>, threads: usize, health: Arc<StoreHealth>) -> Self {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads.max(1) {
            let receiver = receiver.clone();
            let store = store.clone();
            std::thread::Builder::new()
                .name(format!("sync-io-{index}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let receiver = receiver.lock().unwrap_or_else(|e| e.into_inner());
                            receiver.recv()
                        };
                        match job {
                            Ok(job) => job(store.as_ref()),
                            Err(_) => return,
                        }
                    }
                })
                .expect("an IO thread starts");
        }
        Self {
            jobs,
            compacting: Arc::default(),
            locks: Arc::default(),
            health,
        }
    }

    /// Reads and rebuilds a document, then answers the shard. What it read is
    /// served only once it is durable: while the store is unhealthy it may
    /// show writes that never reached the disk, so the load fails.
    pub fn load(&self, document_id: DocumentId, shard: mpsc::Sender<ShardCommand>) {
        let locks = self.locks.clone();
        let health = self.health.clone();
        let _ = self.jobs.send(Box::new(move |store: &dyn Store| {
            let result = {
                let _lock = locks.lock(document_id);
                read_document(store, &document_id)
            }
            .and_then(|stored| health.wait_durable(store).map(|()| stored));
            if let Err(reason) = &result {
                tracing::error!(document = %document_id, %reason, "loading a document failed");
            }
            let _ = shard.send(ShardCommand::Input(Input::Loaded {
                document_id,
                result: result.map(|stored| stored.map(Box::new)),
            }));
        }));
    }

    /// Replaces a document's chunks by one snapshot. A failure is logged and
    /// changes nothing, so the next request simply tries again.
    pub fn compact(&self, document_id: DocumentId) {
        {
            let mut compacting = self.compacting.lock().unwrap_or_else(|e| e.into_inner());
            if !compacting.insert(document_id) {
                return;
            }
        }
        let compacting = self.compacting.clone();
        let locks = self.locks.clone();
        let health = self.health.clone();
        let _ = self.jobs.send(Box::new(move |store: &dyn Store| {
            let outcome = match health.failure() {
                Some(reason) => Err(format!("the store is unhealthy: {reason}")),
                None => {
                    let _lock = locks.lock(document_id);
                    compact(store, &document_id)
                }
            };
            if let Err(reason) = outcome {
                tracing::warn!(document = %document_id, %reason, "compaction failed; will retry later");
            }
            compacting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&document_id);
        }));
    }
}
fn read_document(
    store: &dyn Store,
    document_id: &DocumentId,
) -> Result<Option<storage::StoredDocument>, String> {
    let prefix = storage::document_prefix(document_id);
    let entries = store
        .scan_prefix(prefix.as_bytes())
        .map_err(|error| error.to_string())?
        .into_iter()
        .map(|(key, value)| (String::from_utf8_lossy(&key).into_owned(), value))
        .collect();
    storage::assemble(document_id, entries).map_err(|error| error.to_string())
}

fn compact(store: &dyn Store, document_id: &DocumentId) -> Result<(), String> {
    let Some(stored) = read_document(store, document_id)? else {
        return Ok(());
    };
    let name = uuid::Uuid::new_v4().simple().to_string();
    let writes = storage::compaction_writes(document_id, &stored.doc, &stored.content_keys, &name);
    store
        .apply(Batch::of(writes))
        .map_err(|error| error.to_string())?;
    tracing::debug!(document = %document_id, replaced = stored.content_keys.len(), "compacted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT};

    use super::*;
    use crate::store::{Entry, MemoryStore, StoreError};

    /// A store whose first prefix scan behaves like sled's (not a snapshot):
    /// it lists the keys, yields the first, pauses until resumed, then reads
    /// the rest as they are by then.
    #[derive(Default)]
    struct PausingStore {
        inner: MemoryStore,
        paused: Mutex<Option<bool>>,
        changed: Condvar,
        armed: AtomicBool,
        applies: Mutex<usize>,
    }

    impl PausingStore {
        fn wait_until_paused(&self) {
            let mut paused = self.paused.lock().unwrap();
            while *paused != Some(true) {
                paused = self.changed.wait(paused).unwrap();
            }
        }

        fn resume(&self) {
            *self.paused.lock().unwrap() = Some(false);
            self.changed.notify_all();
        }

        /// Waits (a moment at most) for one more batch to be applied.
        fn wait_for_an_apply(&self, after: usize) {
            let applies = self.applies.lock().unwrap();
            let _ = self
                .changed
                .wait_timeout_while(applies, Duration::from_millis(300), |n| *n <= after)
                .unwrap();
        }
    }

    impl Store for PausingStore {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
            self.inner.put(key, value)
        }
        fn delete(&self, key: &[u8]) -> Result<(), StoreError> {
            self.inner.delete(key)
        }
        fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
            if !self.armed.swap(false, Ordering::SeqCst) {
                return self.inner.scan_prefix(prefix);
            }
            let keys: Vec<Vec<u8>> = self
                .inner
                .scan_prefix(prefix)?
                .into_iter()
                .map(|(key, _)| key)
                .collect();
            let mut entries = Vec::new();
            for (index, key) in keys.into_iter().enumerate() {
                if index == 1 {
                    let mut paused = self.paused.lock().unwrap();
                    *paused = Some(true);
                    self.changed.notify_all();
                    while *paused == Some(true) {
                        paused = self.changed.wait(paused).unwrap();
                    }
                }
                if let Some(value) = self.inner.get(&key)? {
                    entries.push((key, value));
                }
            }
            Ok(entries)
        }
        fn apply(&self, batch: Batch) -> Result<(), StoreError> {
            self.inner.apply(batch)?;
            *self.applies.lock().unwrap() += 1;
            self.changed.notify_all();
            Ok(())
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// A document stored as three change chunks.
    fn store_three_chunks(store: &dyn Store, id: &DocumentId) {
        let mut doc = Automerge::new();
        let mut batch = Batch::new().put(storage::meta_key(id), b"someone".to_vec());
        for n in 0..3_i64 {
            let mut tx = doc.transaction();
            tx.put(ROOT, format!("field{n}"), n).unwrap();
            tx.commit();
            let change = doc.get_last_local_change().unwrap().clone();
            batch = batch.put(
                storage::change_chunk_key(id, &change.hash()),
                change.raw_bytes().to_vec(),
            );
        }
        store.apply(batch).unwrap();
    }

    #[test]
    fn a_load_racing_a_compaction_of_its_document_sees_every_change() {
        let store = Arc::new(PausingStore::default());
        let id = DocumentId::from_bytes([9; 16]);
        store_three_chunks(store.as_ref(), &id);
        let pool = IoPool::start(store.clone(), 2, Arc::default());
        let (shard, answers) = mpsc::channel();
        store.armed.store(true, Ordering::SeqCst);
        pool.load(id, shard);
        store.wait_until_paused();
        let applies = *store.applies.lock().unwrap();
        pool.compact(id);
        store.wait_for_an_apply(applies);
        store.resume();
        let Ok(ShardCommand::Input(Input::Loaded { result, .. })) = answers.recv() else {
            panic!("no load answer");
        };
        let stored = result.unwrap().unwrap();
        assert_eq!(stored.doc.get_changes(&[]).len(), 3);
    }
}
