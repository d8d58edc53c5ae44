//! The sync hub: runs the sans-IO engine and does its IO.
//!
//! - **Shards.** Documents are spread over a few shard threads by id; each owns
//!   one [`Engine`] and is the only owner of its documents' state.
//! - **Loads and compactions** run on a small IO pool, so rebuilding a large
//!   document never blocks a shard or an HTTP worker.
//! - **The flusher** applies writes and makes them durable with one flush for
//!   every write waiting at that moment, then tells the shards, which only
//!   then acknowledge the changes to clients.
//! - **The registry** maps live connections to their outbound queues, and peer
//!   ids to their users (a peer id is scoped to its user).

mod io;
mod registry;
mod shard;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use std::collections::HashMap;
use std::sync::Mutex;

use automerge::ActorId;
use automerge::transaction::Transaction;
use backchannel_sync::handshake::ServerIdentity;
use backchannel_sync::{
    Connection, ConnectionId, DocumentId, DocumentMessage, Engine, Input, LocalEdit, PeerId,
    StorageId,
};

use crate::community::{
    ActorBindings, BYTES_PER_USER, CommunityRules, DOCUMENTS_PER_USER, Quota, Restrictions,
    STALE_GRACE_MILLIS, Summary, SyncUser, Usage,
};
use crate::config::Limits;
use crate::store::{Store, StoreError};
use registry::Registry;

/// How recently a client must have synced a document for it to count as
/// open on screen (push notifications about it are then skipped).
pub const OPEN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
pub use registry::{JoinRefused, Outbound, OutboundQueue, SocketCaps, SocketId, TooManySockets};

const STORAGE_ID_KEY: &[u8] = b"server/storage-id";

pub use shard::InboundPermit;
use shard::ShardCommand;

/// Told each document's summary after durable changes (whatever derives
/// state from documents).
pub type SummarySink = Arc<dyn Fn(DocumentId, Summary) + Send + Sync>;

type EditResult = Result<(), String>;

/// Waiters for local edits, answered when the edit is durable.
#[derive(Default)]
pub struct EditTickets {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<EditResult>>>,
}

impl EditTickets {
    fn issue(&self) -> (u64, tokio::sync::oneshot::Receiver<EditResult>) {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ticket, sender);
        (ticket, receiver)
    }

    pub fn finish(&self, ticket: u64, result: EditResult) {
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ticket);
        if let Some(waiter) = waiter {
            let _ = waiter.send(result);
        }
    }
}

/// A server edit: runs in the document's shard with the server's actor.
pub use backchannel_sync::EditFn;

pub struct SyncHub {
    identity: ServerIdentity,
    tickets: Arc<EditTickets>,
    shards: Vec<mpsc::Sender<ShardCommand>>,
    registry: Arc<Registry>,
    next_connection: AtomicU64,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
    flusher: std::sync::Mutex<Option<io::Flusher>>,
    health: Arc<io::StoreHealth>,
}

impl std::fmt::Debug for SyncHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHub")
            .field("identity", &self.identity)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl SyncHub {
    /// Starts the shard threads, the IO pool and the flusher over `store`.
    pub fn start(
        store: Arc<dyn Store>,
        shard_count: usize,
        limits: &Limits,
        summaries: SummarySink,
    ) -> Result<Self, StoreError> {
        let identity = server_identity(store.as_ref())?;
        let server_actor = server_actor(&identity);
        let actors = ActorBindings::new(store.clone());
        actors
            .claim(&server_actor, crate::community::SERVER_OWNER)
            .map_err(|error| {
                StoreError::Backend(format!("the server's actor is not its own: {error:?}"))
            })?;
        let quota = Quota::new(
            store.clone(),
            Usage {
                documents: DOCUMENTS_PER_USER,
                bytes: BYTES_PER_USER,
            },
        );
        let restrictions = Restrictions::new(
            store.clone(),
            Arc::new(crate::auth::now_millis),
            STALE_GRACE_MILLIS,
        );
        let tickets = Arc::new(EditTickets::default());
        let registry = Arc::new(Registry::default());
        let health = Arc::new(io::StoreHealth::default());
        let flusher = io::Flusher::start(store.clone(), health.clone());
        let pool = io::IoPool::start(store.clone(), 2, health.clone());
        let mut shards = Vec::new();
        let mut threads = Vec::new();
        for index in 0..shard_count.max(1) {
            let (sender, receiver) = mpsc::channel();
            let engine = Engine::new(
                limits.engine_config(identity.peer_id.clone(), server_actor.clone()),
                CommunityRules::new(actors.clone(), quota.clone(), restrictions.clone()),
            );
            let context = shard::ShardContext {
                inbox: sender.clone(),
                tickets: tickets.clone(),
                summaries: summaries.clone(),
                registry: registry.clone(),
                flusher: flusher.handle(),
                pool: pool.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("sync-shard-{index}"))
                .spawn(move || shard::run(engine, receiver, context))
                .map_err(|error| {
                    StoreError::Backend(format!("cannot start a sync shard: {error}"))
                })?;
            shards.push(sender);
            threads.push(thread);
        }
        tracing::info!(peer_id = %identity.peer_id, storage_id = %identity.storage_id, shards = shards.len(), "sync hub started");
        Ok(Self {
            identity,
            tickets,
            shards,
            registry,
            next_connection: AtomicU64::new(1),
            threads: std::sync::Mutex::new(threads),
            flusher: std::sync::Mutex::new(Some(flusher)),
            health,
        })
    }

    pub fn identity(&self) -> &ServerIdentity {
        &self.identity
    }

    /// Why the store cannot make writes durable (its last flush failed), or
    /// `None` while it is healthy.
    pub fn store_failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// Admits an upgraded socket before it joins, so that ending its session
    /// or changing its user's role closes it even before `join`.
    pub fn admit(
        &self,
        user: &SyncUser,
        address: std::net::IpAddr,
        close: tokio::sync::mpsc::UnboundedSender<String>,
        caps: SocketCaps,
    ) -> Result<SocketId, TooManySockets> {
        self.registry.admit(user, address, close, caps)
    }

    /// The socket's task ended.
    pub fn release(&self, socket: SocketId) {
        self.registry.release(socket);
    }

    /// Registers a connection that sent `join`. A peer id held by another
    /// user's live connection is refused; the same user's older connection
    /// with that peer id is closed and replaced.
    pub fn join(
        &self,
        peer_id: PeerId,
        storage_id: Option<StorageId>,
        is_ephemeral: bool,
        user: SyncUser,
        outbound: OutboundQueue,
    ) -> Result<Arc<Connection<SyncUser>>, JoinRefused> {
        let id = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        let connection = Arc::new(Connection {
            id,
            peer_id,
            user,
            storage_id,
            is_ephemeral,
        });
        if let Some(replaced) = self.registry.join(&connection, outbound)? {
            self.broadcast_disconnect(replaced);
        }
        Ok(connection)
    }

    /// Changes a document as the server (creating it, with `creator`, if it
    /// is missing), without waiting.
    pub fn edit(&self, document_id: DocumentId, creator: &str, apply: EditFn) {
        self.send_edit(document_id, creator, apply, None);
    }

    /// Changes a document as the server and waits until the change is
    /// durable (at once if it changed nothing).
    pub async fn edit_durably(
        &self,
        document_id: DocumentId,
        creator: &str,
        apply: EditFn,
    ) -> EditResult {
        self.edit_with_receipt(document_id, creator, apply)
            .await
            .unwrap_or_else(|_| Err("the sync hub stopped".to_string()))
    }

    /// Sends a server edit at once; the receipt is answered when the edit is
    /// durable (for callers outside async code: `blocking_recv`).
    pub fn edit_with_receipt(
        &self,
        document_id: DocumentId,
        creator: &str,
        apply: EditFn,
    ) -> tokio::sync::oneshot::Receiver<EditResult> {
        let (ticket, done) = self.tickets.issue();
        self.send_edit(document_id, creator, apply, Some(ticket));
        done
    }

    /// Reads a document in its shard (`read` sees an empty document if it
    /// does not exist).
    pub async fn read<T: Send + 'static>(
        &self,
        document_id: DocumentId,
        read: impl FnOnce(&Transaction<'_>) -> T + Send + 'static,
    ) -> Result<T, String> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.edit_durably(
            document_id,
            crate::community::SERVER_OWNER,
            Box::new(move |tx| {
                let _ = sender.send(read(tx));
                Ok(())
            }),
        )
        .await?;
        receiver
            .await
            .map_err(|_| "the read did not run".to_string())
    }

    fn send_edit(
        &self,
        document_id: DocumentId,
        creator: &str,
        apply: EditFn,
        ticket: Option<u64>,
    ) {
        let shard = self.shard_for(&document_id);
        let edit = LocalEdit {
            creator: creator.to_string(),
            apply,
            ticket,
        };
        if self.shards[shard]
            .send(ShardCommand::Input(Input::Edit { document_id, edit }))
            .is_err()
            && let Some(ticket) = ticket
        {
            self.tickets
                .finish(ticket, Err("the sync hub stopped".to_string()));
        }
    }

    /// Asks for a document's summary again (after a restart).
    pub fn describe(&self, document_id: DocumentId) {
        let shard = self.shard_for(&document_id);
        let _ = self.shards[shard].send(ShardCommand::Input(Input::Describe { document_id }));
    }

    /// Hands a document message to the shard that owns the document.
    /// Hands a client's message to its document's shard; `permit` holds the
    /// message's bytes against the connection's inbound budget until the
    /// engine has taken it in.
    pub fn route(
        &self,
        connection: Arc<Connection<SyncUser>>,
        message: DocumentMessage,
        permit: InboundPermit,
    ) {
        let shard = self.shard_for(message.document_id());
        let input = Input::Message {
            connection,
            message,
        };
        let _ = self.shards[shard].send(ShardCommand::Routed(input, permit));
    }

    /// The connection's client has `document` open (it asked for or sent it).
    pub fn opened(&self, connection: ConnectionId, document: DocumentId) {
        self.registry
            .opened(connection, document, std::time::Instant::now());
    }

    /// Whether `user` has `document` open on a live connection and active
    /// within the last [`OPEN_WINDOW`].
    pub fn is_open(&self, user: &str, document: &DocumentId) -> bool {
        self.registry
            .is_open(user, document, std::time::Instant::now(), OPEN_WINDOW)
    }

    /// The connection ended: its shards forget it and persist its sync states.
    pub fn leave(&self, connection: ConnectionId) {
        if self.registry.leave(connection) {
            self.broadcast_disconnect(connection);
        }
    }

    /// Closes every live connection of a session (logout, token reuse).
    pub fn close_session(&self, session_id: &str) {
        self.registry.close_where(
            |user| user.session_id == session_id,
            "the session has ended",
        );
    }

    /// Closes every live connection of a user (their role changed: their
    /// client reconnects and every document is judged with the new role).
    pub fn close_user(&self, user_id: &str, reason: &str) {
        self.registry.close_where(|user| user.id == user_id, reason);
    }

    fn broadcast_disconnect(&self, connection: ConnectionId) {
        for shard in &self.shards {
            let _ = shard.send(ShardCommand::Input(Input::Disconnected { connection }));
        }
    }

    fn shard_for(&self, document: &backchannel_sync::DocumentId) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        document.hash(&mut hasher);
        (hasher.finish() % self.shards.len() as u64) as usize
    }

    pub fn close_all(&self, reason: &str) {
        self.registry.close_where(|_| true, reason);
    }

    /// Stops the shards (each first finishes its loads and writes in flight,
    /// and so the edits waiting on them), then lets the flusher finish every
    /// write they issued.
    pub fn shutdown(&self) {
        self.close_all("the server is shutting down");
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for shard in &self.shards {
            let _ = shard.send(ShardCommand::Stop);
        }
        for thread in threads {
            let _ = thread.join();
        }
        if let Some(flusher) = self
            .flusher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            flusher.stop();
        }
    }
}

/// The actor of the server's own changes: its storage id's 16 bytes, the same
/// across restarts.
fn server_actor(identity: &ServerIdentity) -> ActorId {
    let text = identity.storage_id.to_string();
    match uuid::Uuid::parse_str(&text) {
        Ok(uuid) => ActorId::from(uuid.as_bytes().as_slice()),
        Err(_) => ActorId::from(text.as_bytes()),
    }
}

/// The server's `peer` identity: its storage id is made once and kept in the
/// store, so clients can tell across restarts that their changes are here.
fn server_identity(store: &dyn Store) -> Result<ServerIdentity, StoreError> {
    let storage_id = match store.get(STORAGE_ID_KEY)? {
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            store.put(STORAGE_ID_KEY, id.as_bytes())?;
            store.flush()?;
            id
        }
    };
    Ok(ServerIdentity {
        peer_id: PeerId::new(format!("backchannel-{storage_id}")),
        storage_id: StorageId::new(storage_id),
    })
}
