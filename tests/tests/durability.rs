//! What the hub and the projector keep across a stop, a failed flush, and a
//! compaction racing a load. These drive the server's own hub over a store
//! wrapper that can hold a document's loads, fail flushes, or pause a scan.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use backchannel::auth::{Auth, NewAccount, Role, TokenKeys};
use backchannel::config::{Limits, PushSettings};
use backchannel::hub::SyncHub;
use backchannel::kept::{self, KeptDocs};
use backchannel::push::Push;
use backchannel::store::{Batch, Entry, MemoryStore, Store, StoreError};
use backchannel_sync::DocumentId;
use backchannel_sync::storage;

/// A memory store whose scans of one prefix wait while the gate is closed,
/// and whose flushes can be made to fail.
#[derive(Default)]
struct TestStore {
    inner: MemoryStore,
    gate: Mutex<Gate>,
    opened: Condvar,
    fail_flush: AtomicBool,
}

#[derive(Default)]
struct Gate {
    closed: Option<Vec<u8>>,
    waiting: usize,
}

impl TestStore {
    fn close(&self, prefix: String) {
        self.gate.lock().unwrap().closed = Some(prefix.into_bytes());
    }

    fn open(&self) {
        self.gate.lock().unwrap().closed = None;
        self.opened.notify_all();
    }

    /// Waits until a scan is held at the gate.
    fn wait_for_a_held_scan(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.gate.lock().unwrap().waiting == 0 {
            assert!(Instant::now() < deadline, "no scan reached the gate");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Store for TestStore {
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
        let mut gate = self.gate.lock().unwrap();
        while gate.closed.as_deref() == Some(prefix) {
            gate.waiting += 1;
            gate = self.opened.wait(gate).unwrap();
            gate.waiting -= 1;
        }
        drop(gate);
        self.inner.scan_prefix(prefix)
    }
    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        if self.fail_flush.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("No space left on device".into()));
        }
        self.inner.flush()
    }
}

struct Running {
    hub: Arc<SyncHub>,
    kept: Arc<KeptDocs>,
    push: Arc<Push>,
}

impl Running {
    async fn start(store: Arc<TestStore>) -> Self {
        let store: Arc<dyn Store> = store;
        let auth = Arc::new(Auth::new(
            store.clone(),
            TokenKeys::from_secret(&[7; 64]),
            Limits::default(),
        ));
        let (projector, feed) = std::sync::mpsc::channel();
        let hub = Arc::new(
            SyncHub::start(
                store.clone(),
                2,
                &Limits::default(),
                kept::summary_sink(projector.clone()),
            )
            .unwrap(),
        );
        let (push, _feed) = Push::new(
            store.clone(),
            &PushSettings::default(),
            "http://127.0.0.1",
            Box::new(|_, _| false),
        );
        let kept = KeptDocs::start(store, hub.clone(), auth, push.clone(), projector, feed)
            .await
            .unwrap();
        Self { hub, kept, push }
    }

    /// The server's own stop order (see `backchannel::run`).
    fn stop(&self) {
        self.kept.stop();
        self.push.stop();
        self.hub.shutdown();
    }
}

fn account(store: &Arc<TestStore>, email: &str, role: Role) -> String {
    let store: Arc<dyn Store> = store.clone();
    let auth = Auth::new(store, TokenKeys::from_secret(&[7; 64]), Limits::default());
    let account = NewAccount {
        email: email.into(),
        password: "correct horse battery".into(),
        display_name: email.into(),
    };
    auth.create_user(account, role).unwrap().id
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `stop` on another thread; if it has not finished after a moment
/// (it waits on the held load), opens the gate so it can.
fn stop_then_open(store: &Arc<TestStore>, stop: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let stopper = std::thread::spawn(move || {
        stop();
        let _ = done.send(());
    });
    let _ = finished.recv_timeout(Duration::from_millis(300));
    store.open();
    stopper.join().unwrap();
}

fn a_conversation(subject: &'static str) -> backchannel::hub::EditFn {
    Box::new(move |tx| {
        kept::put_text(tx, &ROOT, "type", "conversation")?;
        tx.put(ROOT, "schema", 1)?;
        kept::put_text(tx, &ROOT, "kind", "question")?;
        kept::put_text(tx, &ROOT, "subject", subject)?;
        kept::put_text(tx, &ROOT, "state", "open")?;
        tx.put(ROOT, "created_at", kept::now())?;
        tx.put_object(ROOT, "messages", ObjType::List)?;
        Ok(())
    })
}

async fn inbox_has(hub: &SyncHub, inbox: DocumentId, conversation: DocumentId) -> bool {
    hub.read(inbox, move |tx| {
        let Ok(Some((_, conversations))) = tx.get(ROOT, "conversations") else {
            return false;
        };
        matches!(
            tx.get(&conversations, conversation.to_string().as_str()),
            Ok(Some(_))
        )
    })
    .await
    .unwrap()
}

#[test]
fn a_conversation_projected_right_before_a_stop_is_in_the_managers_inbox_after_restart() {
    let store = Arc::new(TestStore::default());
    let manager = account(&store, "manager@example.org", Role::Manager);
    let member = account(&store, "member@example.org", Role::Member);
    let rt = runtime();
    let inbox = rt.block_on(async {
        let running = Running::start(store.clone()).await;
        let inbox = running.kept.inbox_for(&manager).await.unwrap();
        running.stop();
        inbox
    });
    // After a restart the inbox is not loaded: the projector's edit to it
    // waits on a load, which the gate holds until the stop has begun.
    let conversation = kept::random_document_id();
    let running = rt.block_on(Running::start(store.clone()));
    store.close(storage::document_prefix(&inbox));
    rt.block_on(
        running
            .hub
            .edit_durably(conversation, &member, a_conversation("help")),
    )
    .unwrap();
    store.wait_for_a_held_scan();
    stop_then_open(&store, move || running.stop());

    rt.block_on(async {
        let running = Running::start(store.clone()).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !inbox_has(&running.hub, inbox, conversation).await {
            assert!(
                Instant::now() < deadline,
                "the conversation never reached the manager's inbox"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        running.stop();
    });
}

#[test]
fn a_server_edit_waiting_on_a_load_is_kept_when_the_hub_stops() {
    let store = Arc::new(TestStore::default());
    let rt = runtime();
    let document = kept::random_document_id();
    let running = rt.block_on(Running::start(store.clone()));
    store.close(storage::document_prefix(&document));
    running
        .hub
        .edit(document, "someone", a_conversation("kept"));
    store.wait_for_a_held_scan();
    stop_then_open(&store, move || running.stop());

    rt.block_on(async {
        let running = Running::start(store.clone()).await;
        let subject = running
            .hub
            .read(document, |tx| {
                backchannel::community::At::now(tx).text(&ROOT, "subject")
            })
            .await
            .unwrap();
        assert_eq!(subject.as_deref(), Some("kept"));
        running.stop();
    });
}

#[test]
fn after_a_failed_flush_nothing_unflushed_is_loaded_until_a_flush_succeeds() {
    let store = Arc::new(TestStore::default());
    let rt = runtime();
    rt.block_on(async {
        let running = Running::start(store.clone()).await;
        let document = kept::random_document_id();
        store.fail_flush.store(true, Ordering::SeqCst);
        let written = running
            .hub
            .edit_durably(document, "someone", a_conversation("unflushed"))
            .await;
        assert!(
            written.is_err(),
            "a write that was not flushed was acknowledged"
        );
        assert!(running.hub.store_failure().is_some());
        // The store shows the applied write, but it is not durable.
        let read = running
            .hub
            .read(document, |tx| {
                backchannel::community::At::now(tx).text(&ROOT, "subject")
            })
            .await;
        assert!(read.is_err(), "unflushed state was served: {read:?}");

        store.fail_flush.store(false, Ordering::SeqCst);
        let read = running
            .hub
            .read(document, |tx| {
                backchannel::community::At::now(tx).text(&ROOT, "subject")
            })
            .await
            .unwrap();
        assert_eq!(read.as_deref(), Some("unflushed"));
        assert_eq!(running.hub.store_failure(), None);
        running.stop();
    });
}
