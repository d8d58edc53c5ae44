//! The hub's IO: a flusher that makes writes durable in batches, and a small
//! pool for loads and compactions (CPU-heavy automerge work).

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
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

fn to_batch(writes: Vec<StorageWrite>) -> Batch {
    writes
        .into_iter()
        .fold(Batch::new(), |batch, write| match write {
            StorageWrite::Put { key, value } => batch.put(key, value),
            StorageWrite::Delete { key } => batch.delete(key),
        })
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
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (sender, receiver) = mpsc::channel::<Option<WriteJob>>();
        let thread = std::thread::Builder::new()
            .name("sync-flusher".into())
            .spawn(move || flush_loop(store, receiver))
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
/// for all of them: concurrent writers share the cost of durability.
fn flush_loop(store: Arc<dyn Store>, receiver: mpsc::Receiver<Option<WriteJob>>) {
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
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut needs_flush = false;
        for job in jobs {
            let applied = store
                .apply(to_batch(job.writes))
                .map_err(|error| error.to_string());
            needs_flush |= job.done.is_some() && applied.is_ok();
            outcomes.push((job.done, applied));
        }
        let flushed = if needs_flush {
            store.flush().map_err(|error| error.to_string())
        } else {
            Ok(())
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

/// Worker threads for loads and compactions.
#[derive(Clone)]
pub struct IoPool {
    jobs: mpsc::Sender<Job>,
    compacting: Arc<Mutex<HashSet<DocumentId>>>,
}

impl IoPool {
    pub fn start(store: Arc<dyn Store>, threads: usize) -> Self {
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
        }
    }

    /// Reads and rebuilds a document, then answers the shard.
    pub fn load(&self, document_id: DocumentId, shard: mpsc::Sender<ShardCommand>) {
        let _ = self.jobs.send(Box::new(move |store: &dyn Store| {
            let result = read_document(store, &document_id);
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
        let _ = self.jobs.send(Box::new(move |store: &dyn Store| {
            let outcome = compact(store, &document_id);
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
        .apply(to_batch(writes))
        .map_err(|error| error.to_string())?;
    tracing::debug!(document = %document_id, replaced = stored.content_keys.len(), "compacted");
    Ok(())
}
