//! The sync engine: automerge sync per document per peer, with no IO.
//!
//! The caller feeds [`Input`]s (document messages from connections,
//! disconnections, storage results, ticks) together with the current time, and
//! carries out the [`Effect`]s that come back (send, close, load, write,
//! compact). One engine owns a set of documents; the server runs several
//! engines (shards), each on its own thread, and routes a document's messages
//! to the shard that owns it.
//!
//! Invariants:
//! - **Acknowledged means durable.** After changes are applied, nothing about
//!   that document is sent to anyone until the caller reports the write
//!   [`Input::Written`]. Messages arriving meanwhile wait in the document's
//!   queue, so every reply is generated from durable state only.
//! - **Refused whole.** If the policy refuses any change of a sync message, the
//!   document is rolled back to its heads before the message, nothing is
//!   written or relayed, and the sender's connection is closed with the rule.
//! - **Denied looks missing.** A document the user may not read is answered with
//!   `doc-unavailable`, exactly as one that does not exist.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transaction;
use automerge::{ActorId, Automerge, AutomergeError, Change, ChangeHash, ReadDoc};

use crate::frame::{Frame, SharedEphemeral};
use crate::ids::{DocumentId, PeerId, StorageId};
use crate::messages::{DocMessage, DocUnavailable, Ephemeral, Message};
use crate::storage::{self, StorageWrite, StoredDocument};

/// Identifies one live connection (one WebSocket) for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Identifies a write the engine waits on before acknowledging changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteId(pub u64);

/// Who is at the other end of a connection, as the handshake established.
#[derive(Debug)]
pub struct Connection<U> {
    pub id: ConnectionId,
    pub peer_id: PeerId,
    pub user: U,
    pub storage_id: Option<StorageId>,
    pub is_ephemeral: bool,
}

/// A document as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct DocumentView<'a> {
    pub id: &'a DocumentId,
    pub doc: &'a Automerge,
    /// The user id of whoever first sent the document.
    pub creator: &'a str,
    /// For [`Policy::check_changes`]: the document as it was before the
    /// changes being judged, so that what it was need not be read from
    /// history (each read at past heads walks the change graph).
    pub previous: Option<&'a Automerge>,
}

/// Why the policy refused a change; `rule` is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: String,
}

impl Refusal {
    pub fn new(rule: impl Into<String>) -> Self {
        Self { rule: rule.into() }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rule)
    }
}

/// Who may read a document and which changes a user may make: the access
/// hooks the engine calls for every document and every incoming change.
pub trait Policy {
    type User: fmt::Debug;
    /// What the server derives from a document (for indexes, counts, push).
    type Summary: fmt::Debug + PartialEq;

    /// The stable id recorded as a new document's creator.
    fn user_id<'a>(&self, user: &'a Self::User) -> &'a str;

    /// Whether `user` may read `document`. `memo` is the document's (see
    /// [`Self::Memo`]): the engine asks for every peer it sends to.
    fn may_read(
        &self,
        user: &Self::User,
        document: DocumentView<'_>,
        memo: &mut Self::Memo,
    ) -> bool;

    /// Judges `changes`, already applied to `document`, whose heads before
    /// them were `before`. `creating` is true when these changes create it.
    /// An accepted message answers the store writes its verdict needs (an
    /// actor bound to its user, a quota counted): they go in the same write
    /// as the changes, so both are durable or neither is.
    fn check_changes(
        &self,
        user: &Self::User,
        document: DocumentView<'_>,
        before: &[ChangeHash],
        changes: &[Change],
        creating: bool,
    ) -> Result<Vec<StorageWrite>, Refusal>;

    /// What the policy keeps of a document in memory between calls: what it
    /// read of the document, so that a summary follows from the changes
    /// since the last one and the read rules' facts are read once per state,
    /// not once per peer. Reading a field costs microseconds.
    type Memo: Default;

    /// Describes a document after durable changes, or `None` if nothing is
    /// derived from it. `changes` were accepted since the last summary kept
    /// in `memo`. A new memo (the document just loaded, or too much changed
    /// in between) has to read the whole document, which holds `changes`.
    fn summarize(
        &self,
        document: DocumentView<'_>,
        memo: &mut Self::Memo,
        changes: &[Change],
    ) -> Option<Self::Summary>;
}

/// The body of a [`LocalEdit`]: changes made in one transaction.
pub type EditFn = Box<dyn FnOnce(&mut Transaction<'_>) -> Result<(), AutomergeError> + Send>;

/// A change the server itself makes to a document, with its own actor.
pub struct LocalEdit {
    /// Recorded as the document's creator if this edit creates it.
    pub creator: String,
    pub apply: EditFn,
    /// Answered with [`Effect::EditDone`] once the edit is durable (or failed).
    pub ticket: Option<u64>,
}

impl fmt::Debug for LocalEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEdit")
            .field("creator", &self.creator)
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

/// The document-level messages a connection hands to the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum DocumentMessage {
    Request(DocMessage),
    Sync(DocMessage),
    Ephemeral(Ephemeral),
    DocUnavailable(DocUnavailable),
}

impl DocumentMessage {
    /// The document a wire message is about, if it is a document message.
    pub fn from_message(message: Message) -> Option<Self> {
        match message {
            Message::Request(m) => Some(Self::Request(m)),
            Message::Sync(m) => Some(Self::Sync(m)),
            Message::Ephemeral(m) => Some(Self::Ephemeral(m)),
            Message::DocUnavailable(m) => Some(Self::DocUnavailable(m)),
            _ => None,
        }
    }

    pub fn sender_id(&self) -> &PeerId {
        match self {
            Self::Request(m) | Self::Sync(m) => &m.sender_id,
            Self::Ephemeral(m) => &m.sender_id,
            Self::DocUnavailable(m) => &m.sender_id,
        }
    }

    pub fn document_id(&self) -> &DocumentId {
        match self {
            Self::Request(m) | Self::Sync(m) => &m.document_id,
            Self::Ephemeral(m) => &m.document_id,
            Self::DocUnavailable(m) => &m.document_id,
        }
    }
}

#[derive(Debug)]
pub enum Input<U> {
    Message {
        connection: Arc<Connection<U>>,
        message: DocumentMessage,
    },
    Disconnected {
        connection: ConnectionId,
    },
    /// The answer to [`Effect::Load`]: `Ok(None)` when nothing is stored.
    Loaded {
        document_id: DocumentId,
        result: Result<Option<Box<StoredDocument>>, String>,
    },
    /// The writes of [`Effect::Write`] with this id are durable.
    Written {
        write: WriteId,
    },
    WriteFailed {
        write: WriteId,
        reason: String,
    },
    /// The server changes a document itself (creating it if it is missing).
    Edit {
        document_id: DocumentId,
        edit: LocalEdit,
    },
    /// Emit the document's [`Effect::Summary`] (after a restart, for derived
    /// state that may have missed its last changes).
    Describe {
        document_id: DocumentId,
    },
    /// Time passes: idle documents are evicted.
    Tick,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect<S> {
    Send {
        connection: ConnectionId,
        message: Message,
    },
    /// Send an already encoded frame (an ephemeral whose bytes are shared
    /// between the readers it is relayed to).
    SendFrame {
        connection: ConnectionId,
        frame: Frame,
    },
    /// Send an `error` naming `reason`, then close the connection.
    Close {
        connection: ConnectionId,
        reason: String,
    },
    /// Read everything under `storage::document_prefix` and answer [`Input::Loaded`].
    Load { document_id: DocumentId },
    /// Apply atomically. With an id, make durable and answer [`Input::Written`];
    /// without one, durability may wait for the next flush.
    Write {
        write: Option<WriteId>,
        writes: Vec<StorageWrite>,
    },
    /// The document has enough chunks to be worth compacting (see `storage`).
    Compact { document_id: DocumentId },
    /// Durable new changes, for whatever derives state from documents.
    DocumentChanged {
        document_id: DocumentId,
        user_id: String,
        changes: Vec<ChangeHash>,
    },
    /// The policy's summary of a document after its durable changes (or on
    /// [`Input::Describe`]); a client change also left a
    /// [`storage::changed_key`] marker for whoever derives state to clear.
    Summary { document_id: DocumentId, summary: S },
    /// The local edit with this ticket is durable (`Ok`) or failed.
    EditDone {
        ticket: u64,
        result: Result<(), String>,
    },
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Our `senderId` in every message.
    pub server_peer_id: PeerId,
    /// The actor of every change the server makes ([`Input::Edit`]).
    pub server_actor: ActorId,
    /// A document nobody has open is dropped from memory after this long.
    pub evict_after_ms: u64,
    /// Ask for compaction once a document has this many change chunks.
    pub compact_after_chunks: usize,
    /// Largest `data` of an ephemeral message; a larger one closes its sender.
    pub ephemeral_max_bytes: usize,
    /// Longest `sessionId` of an ephemeral message.
    pub ephemeral_session_id_max_bytes: usize,
    /// Ephemeral messages a connection may send per second, sustained, and
    /// at once; beyond them it is closed.
    pub ephemeral_per_second: u32,
    pub ephemeral_burst: u32,
    /// Bytes of ephemeral `data` one user may send per second, sustained, and
    /// at once, all their connections to this engine together: each relayed
    /// byte goes to every reader, and reconnecting must not refill it.
    pub ephemeral_bytes_per_second: usize,
    pub ephemeral_bytes_burst: usize,
    /// Ephemeral sources (sender and session) remembered per document for
    /// repeat detection; the oldest is forgotten first.
    pub ephemeral_sources_per_document: usize,
    /// Documents one connection may have open in this engine.
    pub max_documents_per_connection: usize,
    /// Bytes of messages from one connection waiting in document queues
    /// (while a write is in flight or a document loads).
    pub max_queued_bytes_per_connection: usize,
    /// Bytes of changes held, waiting for their dependencies, from one
    /// connection, and in one document from all connections.
    pub max_held_bytes_per_connection: usize,
    pub max_held_bytes_per_document: usize,
    /// Device sync states kept per document; the oldest is dropped first.
    pub max_sync_states_per_document: usize,
}

impl EngineConfig {
    pub fn new(server_peer_id: PeerId, server_actor: ActorId) -> Self {
        Self {
            server_peer_id,
            server_actor,
            evict_after_ms: 60_000,
            compact_after_chunks: 64,
            ephemeral_max_bytes: 16 * 1024,
            ephemeral_session_id_max_bytes: 64,
            ephemeral_per_second: 20,
            ephemeral_burst: 60,
            ephemeral_bytes_per_second: 32 * 1024,
            ephemeral_bytes_burst: 64 * 1024,
            ephemeral_sources_per_document: 256,
            max_documents_per_connection: 2_000,
            max_queued_bytes_per_connection: 24 * 1024 * 1024,
            max_held_bytes_per_connection: 8 * 1024 * 1024,
            max_held_bytes_per_document: 16 * 1024 * 1024,
            max_sync_states_per_document: 512,
        }
    }
}

struct Peer<U> {
    connection: Arc<Connection<U>>,
    state: sync::State,
    /// The heads of the last sync message we sent this peer. automerge takes
    /// a peer's message with our own heads as proof we told it them, but we
    /// hold acknowledgements until changes are durable, so only what we sent
    /// counts.
    announced: Vec<ChangeHash>,
}

struct Existing<U, M> {
    doc: Automerge,
    creator: String,
    /// Meta is written with the first chunk of a document made in memory.
    meta_stored: bool,
    chunks_since_compaction: usize,
    peers: HashMap<ConnectionId, Peer<U>>,
    /// Devices' sync states by (user id, storage id): when saved, and the state.
    stored_sync_states: HashMap<(String, StorageId), (u64, sync::State)>,
    /// The last `count` relayed per (sender, session), and when it came (for
    /// forgetting the oldest source first).
    last_ephemeral: HashMap<(PeerId, String), (u64, u64)>,
    /// Changes that arrived before their dependencies, per connection. They
    /// stay out of the document (automerge would queue them inside it, and
    /// only a rebuild could take them out again) until their dependencies are
    /// in it, and are then judged as the connection's user.
    held: HashMap<ConnectionId, Held>,
    held_bytes: usize,
    /// The document before the message being judged. A refusal puts it back:
    /// a copy costs microseconds, where rebuilding from history (`fork_at`)
    /// costs a second on a post of a few thousand changes.
    undo: Option<Automerge>,
    /// The policy's memo for summaries, and the changes accepted since it
    /// last summarized (up to [`UNSUMMARIZED_CHANGES`]).
    memo: M,
    unsummarized: Vec<Change>,
}

/// More changes than this between two summaries start the memo afresh: a
/// whole reading then costs less than holding on to them.
const UNSUMMARIZED_CHANGES: usize = 1024;

#[derive(Default)]
struct Held {
    changes: HashMap<ChangeHash, Change>,
    bytes: usize,
}

struct Loaded<U, M> {
    existing: Option<Existing<U, M>>,
    /// Connections that asked for the document before it existed.
    waiting: Waiting<U>,
    write_in_flight: Option<WriteId>,
    /// Writes of changes applied in this round, issued as one write when the
    /// queue is empty: a document pays one flush per round, not per message.
    pending_writes: Vec<StorageWrite>,
    /// Changes applied but not yet durable.
    unacknowledged: Vec<Unacknowledged>,
    /// Peers owed a sync message once nothing is in flight.
    owed: HashSet<ConnectionId>,
}

struct Unacknowledged {
    user_id: String,
    changes: Vec<ChangeHash>,
    ticket: Option<u64>,
}

enum Queued<U> {
    Message(Arc<Connection<U>>, DocumentMessage),
    Edit(LocalEdit),
    Describe,
}

enum Slot<U, M> {
    Loading,
    Loaded(Box<Loaded<U, M>>),
}

struct DocumentSlot<U, M> {
    slot: Slot<U, M>,
    queue: VecDeque<Queued<U>>,
    last_active_ms: u64,
}

/// Connections waiting for a document, by id.
type Waiting<U> = HashMap<ConnectionId, Arc<Connection<U>>>;

/// What the engine keeps about one live connection.
#[derive(Default)]
struct ConnectionState {
    /// Documents it touched, for disconnects (and the per-connection cap).
    documents: HashSet<DocumentId>,
    /// Bytes of its messages waiting in document queues.
    queued_bytes: usize,
    /// Bytes of its changes held for missing dependencies.
    held_bytes: usize,
    /// Ephemeral messages it may still send.
    ephemeral: TokenBucket,
    /// Told to close: its further messages are ignored.
    closing: bool,
}

/// One shard of documents and the peers syncing them.
pub struct Engine<P: Policy> {
    config: EngineConfig,
    policy: P,
    documents: HashMap<DocumentId, DocumentSlot<P::User, P::Memo>>,
    /// Each live connection's documents, budgets and limits.
    connections: HashMap<ConnectionId, ConnectionState>,
    /// Connections waiting for documents nobody has created, kept outside
    /// the document slots so those slots can be evicted.
    waiters: HashMap<DocumentId, Waiting<P::User>>,
    writes: HashMap<WriteId, DocumentId>,
    next_write: u64,
    /// How often a document in memory had to be rebuilt from its history.
    rebuilds: u64,
    /// Ephemeral bytes each user may still send, by user id.
    ephemeral_bytes: HashMap<String, TokenBucket>,
    sync_messages_generated: u64,
}

/// A sync message generated for one peer, reused for the others whose sync
/// state was the same.
struct SharedMessage {
    before: sync::State,
    after: sync::State,
    data: Option<Vec<u8>>,
}

/// What most often tells two sync states apart, cheap to compare: only
/// peers that agree on it are compared in full.
#[derive(Clone, PartialEq, Eq, Hash)]
struct StateFingerprint {
    shared_heads: Vec<ChangeHash>,
    last_sent_heads: Vec<ChangeHash>,
    their_heads: Option<Vec<ChangeHash>>,
    sent: usize,
    in_flight: bool,
}

impl StateFingerprint {
    fn of(state: &sync::State) -> Self {
        Self {
            shared_heads: state.shared_heads.clone(),
            last_sent_heads: state.last_sent_heads.clone(),
            their_heads: state.their_heads.clone(),
            sent: state.sent_hashes.len(),
            in_flight: state.in_flight,
        }
    }
}

/// Distinct sync states remembered while owed messages go out (comparing a
/// state is cheap next to generating a message, but not free).
const SHARED_SYNC_STATES: usize = 8;

/// A rate limit: `tokens` refill at a steady rate up to a burst.
#[derive(Debug, Clone, Copy, Default)]
struct TokenBucket {
    tokens: f64,
    refilled_ms: u64,
}

impl TokenBucket {
    fn full(burst: f64, now_ms: u64) -> Self {
        Self {
            tokens: burst,
            refilled_ms: now_ms,
        }
    }

    fn refill(&mut self, per_second: f64, burst: f64, now_ms: u64) {
        let elapsed_ms = now_ms.saturating_sub(self.refilled_ms);
        self.refilled_ms = now_ms;
        self.tokens = (self.tokens + elapsed_ms as f64 * per_second / 1000.0).min(burst);
    }

    /// Takes `amount` if there is that much.
    fn take(&mut self, amount: f64) -> bool {
        if self.tokens < amount {
            return false;
        }
        self.tokens -= amount;
        true
    }
}

impl<P: Policy> Engine<P> {
    pub fn new(config: EngineConfig, policy: P) -> Self {
        Self {
            config,
            policy,
            documents: HashMap::new(),
            connections: HashMap::new(),
            waiters: HashMap::new(),
            writes: HashMap::new(),
            next_write: 0,
            rebuilds: 0,
            ephemeral_bytes: HashMap::new(),
            sync_messages_generated: 0,
        }
    }

    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// How many documents are in memory (loaded or loading).
    pub fn resident_documents(&self) -> usize {
        self.documents.len()
    }

    /// How many times a document in memory was rebuilt from its history
    /// (`fork_at`) to undo refused changes: the expensive path.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// How many sync messages were generated (and not merely shared) for
    /// peers owed one: peers in the same sync state share one.
    pub fn sync_messages_generated(&self) -> u64 {
        self.sync_messages_generated
    }

    pub fn handle(&mut self, input: Input<P::User>, now_ms: u64) -> Vec<Effect<P::Summary>> {
        let mut effects = Vec::new();
        match input {
            Input::Message {
                connection,
                message,
            } => self.on_message(connection, message, now_ms, &mut effects),
            Input::Disconnected { connection } => {
                self.on_disconnect(connection, now_ms, &mut effects)
            }
            Input::Loaded {
                document_id,
                result,
            } => self.on_loaded(document_id, result, now_ms, &mut effects),
            Input::Written { write } => self.on_written(write, now_ms, &mut effects),
            Input::WriteFailed { write, reason } => {
                self.on_write_failed(write, &reason, &mut effects)
            }
            Input::Edit { document_id, edit } => {
                self.enqueue(document_id, Queued::Edit(edit), now_ms, &mut effects)
            }
            Input::Describe { document_id } => {
                self.enqueue(document_id, Queued::Describe, now_ms, &mut effects)
            }
            Input::Tick => {
                self.evict_idle(now_ms);
                self.forget_refilled_ephemeral_budgets(now_ms);
            }
        }
        effects
    }

    fn on_message(
        &mut self,
        connection: Arc<Connection<P::User>>,
        message: DocumentMessage,
        now_ms: u64,
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        let document_id = *message.document_id();
        let config = &self.config;
        let state = self
            .connections
            .entry(connection.id)
            .or_insert_with(|| ConnectionState {
                ephemeral: TokenBucket::full(f64::from(config.ephemeral_burst), now_ms),
                ..ConnectionState::default()
            });
        if state.closing {
            return;
        }
        let refusal = match &message {
            // The stock client passes every ephemeral it receives on to its
            // other peers, us included, under the original sender's id. Such
            // a copy was relayed already (or is not that sender's at all): it
            // is dropped, never relayed as new.
            DocumentMessage::Ephemeral(ephemeral) if ephemeral.sender_id != connection.peer_id => {
                return;
            }
            DocumentMessage::Ephemeral(ephemeral) => {
                let burst = config.ephemeral_bytes_burst as f64;
                let user_bytes = self
                    .ephemeral_bytes
                    .entry(self.policy.user_id(&connection.user).to_string())
                    .or_insert_with(|| TokenBucket::full(burst, now_ms));
                admit_ephemeral(config, state, user_bytes, ephemeral, now_ms)
            }
            _ => Ok(()),
        };
        let size = message_size(&message);
        let refusal = refusal.and_then(|()| {
            if !state.documents.contains(&document_id)
                && state.documents.len() >= config.max_documents_per_connection
            {
                Err(format!(
                    "too many documents open on one connection: the limit is {} (max_documents_per_connection)",
                    config.max_documents_per_connection
                ))
            } else if state.queued_bytes + size > config.max_queued_bytes_per_connection {
                Err(format!(
                    "too many bytes waiting to be processed from one connection: the limit is {} (max_queued_bytes_per_connection)",
                    config.max_queued_bytes_per_connection
                ))
            } else {
                Ok(())
            }
        });
        if let Err(reason) = refusal {
            state.closing = true;
            effects.push(Effect::Close {
                connection: connection.id,
                reason,
            });
            return;
        }
        state.documents.insert(document_id);
        state.queued_bytes += size;
        self.enqueue(
            document_id,
            Queued::Message(connection, message),
            now_ms,
            effects,
        );
    }

    fn enqueue(
        &mut self,
        document_id: DocumentId,
        item: Queued<P::User>,
        now_ms: u64,
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        let entry = self
            .documents
            .entry(document_id)
            .or_insert_with(|| DocumentSlot {
                slot: Slot::Loading,
                queue: VecDeque::new(),
                last_active_ms: now_ms,
            });
        entry.last_active_ms = now_ms;
        let is_new_slot = matches!(entry.slot, Slot::Loading) && entry.queue.is_empty();
        entry.queue.push_back(item);
        if is_new_slot {
            effects.push(Effect::Load { document_id });
            return;
        }
        self.drain_queue(document_id, now_ms, effects);
    }

    fn on_loaded(
        &mut self,
        document_id: DocumentId,
        result: Result<Option<Box<StoredDocument>>, String>,
        now_ms: u64,
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        let Some(entry) = self.documents.get_mut(&document_id) else {
            return;
        };
        if !matches!(entry.slot, Slot::Loading) {
            return;
        }
        match result {
            Err(reason) => {
                // Not knowing whether the document exists, we must not answer
                // as if it did not (a `sync` would then overwrite it): close,
                // and let the client's reconnect retry the load.
                let entry = self.documents.remove(&document_id);
                for item in entry.into_iter().flat_map(|entry| entry.queue) {
                    match item {
                        Queued::Message(connection, message) => {
                            if let Some(state) = self.connections.get_mut(&connection.id) {
                                state.queued_bytes =
                                    state.queued_bytes.saturating_sub(message_size(&message));
                            }
                            effects.push(Effect::Close {
                                connection: connection.id,
                                reason: format!(
                                    "document {document_id} could not be loaded: {reason}"
                                ),
                            })
                        }
                        Queued::Edit(LocalEdit {
                            ticket: Some(ticket),
                            ..
                        }) => effects.push(Effect::EditDone {
                            ticket,
                            result: Err(format!(
                                "document {document_id} could not be loaded: {reason}"
                            )),
                        }),
                        Queued::Edit(_) | Queued::Describe => {}
                    }
                }
            }
            Ok(stored) => {
                let max_states = self.config.max_sync_states_per_document;
                let mut cleanup = Vec::new();
                let existing = stored.map(|stored| {
                    let stored = *stored;
                    // Oldest first: beyond the cap, the oldest states go.
                    let excess = stored.sync_states.len().saturating_sub(max_states);
                    let mut sync_states = HashMap::new();
                    for (index, kept) in stored.sync_states.into_iter().enumerate() {
                        if index < excess {
                            cleanup.push(StorageWrite::Delete {
                                key: storage::sync_state_key(
                                    &document_id,
                                    &kept.user,
                                    &kept.storage_id,
                                ),
                            });
                        } else {
                            sync_states.insert(
                                (kept.user, kept.storage_id),
                                (kept.saved_at_ms, kept.state),
                            );
                        }
                    }
                    cleanup.extend(
                        stored
                            .stale_sync_keys
                            .into_iter()
                            .map(|key| StorageWrite::Delete { key }),
                    );
                    let chunks = stored
                        .content_keys
                        .iter()
                        .filter(|key| key.contains("/c/"))
                        .count();
                    let mut doc = stored.doc;
                    doc.set_actor(self.config.server_actor.clone());
                    Existing {
                        doc,
                        creator: stored.creator,
                        meta_stored: true,
                        chunks_since_compaction: chunks,
                        peers: HashMap::new(),
                        stored_sync_states: sync_states,
                        last_ephemeral: HashMap::new(),
                        held: HashMap::new(),
                        held_bytes: 0,
                        undo: None,
                        memo: P::Memo::default(),
                        unsummarized: Vec::new(),
                    }
                });
                if !cleanup.is_empty() {
                    effects.push(Effect::Write {
                        write: None,
                        writes: cleanup,
                    });
                }
                let live = &self.connections;
                let waiting = self
                    .waiters
                    .remove(&document_id)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(id, _)| live.contains_key(id))
                    .collect();
                entry.slot = Slot::Loaded(Box::new(Loaded {
                    existing,
                    waiting,
                    write_in_flight: None,
                    pending_writes: Vec::new(),
                    unacknowledged: Vec::new(),
                    owed: HashSet::new(),
                }));
                entry.last_active_ms = now_ms;
                self.drain_queue(document_id, now_ms, effects);
            }
        }
    }

    /// Processes every queued message (unless a write is in flight), then
    /// either writes the changes they brought, as one write, or, with nothing
    /// to write, sends every peer what it is owed.
    fn drain_queue(
        &mut self,
        document_id: DocumentId,
        now_ms: u64,
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        loop {
            let Some(entry) = self.documents.get_mut(&document_id) else {
                return;
            };
            let Slot::Loaded(loaded) = &mut entry.slot else {
                return;
            };
            if loaded.write_in_flight.is_some() {
                return;
            }
            let Some(item) = entry.queue.pop_front() else {
                if loaded.pending_writes.is_empty() {
                    self.send_owed(document_id, effects);
                } else {
                    let write = WriteId(self.next_write);
                    self.next_write += 1;
                    self.writes.insert(write, document_id);
                    loaded.write_in_flight = Some(write);
                    effects.push(Effect::Write {
                        write: Some(write),
                        writes: std::mem::take(&mut loaded.pending_writes),
                    });
                }
                return;
            };
            match item {
                Queued::Message(connection, message) => {
                    let Some(state) = self.connections.get_mut(&connection.id) else {
                        continue; // disconnected while its message waited
                    };
                    state.queued_bytes = state.queued_bytes.saturating_sub(message_size(&message));
                    if state.closing {
                        continue;
                    }
                    self.process(document_id, connection, message, now_ms, effects);
                }
                Queued::Edit(edit) => self.apply_edit(document_id, edit, effects),
                Queued::Describe => self.describe(document_id, effects),
            }
        }
    }

    fn process(
        &mut self,
        document_id: DocumentId,
        connection: Arc<Connection<P::User>>,
        message: DocumentMessage,
        now_ms: u64,
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        match message {
            DocumentMessage::Request(message) => {
                self.receive_sync(document_id, connection, message, true, effects)
            }
            DocumentMessage::Sync(message) => {
                self.receive_sync(document_id, connection, message, false, effects)
            }
            DocumentMessage::Ephemeral(message) => {
                self.relay_ephemeral(document_id, &connection, message, now_ms, effects)
            }
            // The client has no copy; nothing for us to do.
            DocumentMessage::DocUnavailable(_) => {}
        }
    }

    fn receive_sync(
        &mut self,
        document_id: DocumentId,
        connection: Arc<Connection<P::User>>,
        message: DocMessage,
        is_request: bool,
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        let server_peer_id = self.config.server_peer_id.clone();
        let unavailable = |connection: &Connection<P::User>| Effect::Send {
            connection: connection.id,
            message: Message::DocUnavailable(DocUnavailable {
                sender_id: server_peer_id.clone(),
                target_id: connection.peer_id.clone(),
                document_id,
            }),
        };
        let sync_message = match sync::Message::decode(&message.data) {
            Ok(sync_message) => sync_message,
            Err(error) => {
                effects.push(Effect::Close {
                    connection: connection.id,
                    reason: format!("invalid automerge sync message for {document_id}: {error}"),
                });
                return;
            }
        };
        // A large message's bytes are copied again below (changes, then the
        // document); the encoded copy is not needed past here.
        drop(message);
        let Some(entry) = self.documents.get_mut(&document_id) else {
            return;
        };
        let Slot::Loaded(loaded) = &mut entry.slot else {
            return;
        };

        if let Some(existing) = &mut loaded.existing
            && !existing.may_read(&self.policy, &document_id, &connection.user)
        {
            existing.peers.remove(&connection.id);
            if is_request || sync_message.heads.is_empty() {
                effects.push(unavailable(&connection));
                return;
            }
            if sync_message.changes.is_empty() {
                // Heads without changes: answer exactly as for a document
                // we lack (asking for everything), so that offline work
                // can arrive and be judged, and nothing is revealed.
                let mut nothing = Automerge::new();
                let mut scratch = sync::State::new();
                if nothing
                    .receive_sync_message(&mut scratch, sync_message)
                    .is_ok()
                    && let Some(reply) = nothing.generate_sync_message(&mut scratch)
                {
                    effects.push(Effect::Send {
                        connection: connection.id,
                        message: Message::Sync(DocMessage {
                            sender_id: self.config.server_peer_id.clone(),
                            target_id: connection.peer_id.clone(),
                            document_id,
                            data: reply.encode(),
                        }),
                    });
                }
                return;
            }
            // Changes from someone who can no longer read the document
            // (written offline before a removal, say) are judged as the
            // rules say, at their dependencies; either way the sender
            // learns nothing but `doc-unavailable`.
            self.receive_from_outsider(document_id, connection, sync_message, effects);
            return;
        }
        let stored = loaded
            .existing
            .as_ref()
            .is_some_and(|existing| existing.meta_stored);
        // A `sync` from a peer that has content for a document we lack is its
        // creation, which takes a round trip: the first message carries only
        // heads, the changes follow our reply. Until its first change is
        // stored the document is provisional, and a `request` (a peer with
        // nothing) finds it missing, as it would find any unknown document.
        if !stored && (is_request || sync_message.heads.is_empty()) {
            loaded.waiting.insert(connection.id, connection.clone());
            effects.push(unavailable(&connection));
            return;
        }
        if loaded.existing.is_none() {
            loaded.existing = Some(Existing::new(
                self.policy.user_id(&connection.user).to_string(),
                &self.config.server_actor,
            ));
        }
        let Some(existing) = loaded.existing.as_mut() else {
            return;
        };

        let user_id = self.policy.user_id(&connection.user);
        // The peer's state leaves the map while the message is applied.
        let (mut state, announced) = match existing.peers.remove(&connection.id) {
            Some(peer) => (peer.state, peer.announced),
            None => (
                connection
                    .storage_id
                    .as_ref()
                    .and_then(|storage_id| {
                        existing
                            .stored_sync_states
                            .get(&(user_id.to_string(), storage_id.clone()))
                    })
                    .map(|(_, state)| state.clone())
                    .unwrap_or_default(),
                Vec::new(),
            ),
        };
        let creating = !existing.meta_stored;
        let before = existing.doc.get_heads();
        let mut no_budget = 0;
        let budget = HeldBudget {
            connection_bytes: self
                .connections
                .get_mut(&connection.id)
                .map_or(&mut no_budget, |state| &mut state.held_bytes),
            max_per_connection: self.config.max_held_bytes_per_connection,
            max_per_document: self.config.max_held_bytes_per_document,
        };
        let received = apply_sync_message(
            existing,
            &mut state,
            sync_message,
            connection.id,
            budget,
            &mut self.rebuilds,
        );
        existing.peers.insert(
            connection.id,
            Peer {
                connection: connection.clone(),
                state,
                announced,
            },
        );
        let after = existing.doc.get_heads();
        let verdict = match received {
            Applied::Malformed(reason) => {
                existing.peers.remove(&connection.id);
                effects.push(Effect::Close {
                    connection: connection.id,
                    reason: format!("malformed changes for {document_id}: {reason}"),
                });
                return;
            }
            Applied::TooMuchHeld(reason) => {
                existing.peers.remove(&connection.id);
                effects.push(Effect::Close {
                    connection: connection.id,
                    reason: format!("{reason} in {document_id}"),
                });
                return;
            }
            Applied::Broken => {
                effects.push(Effect::Close {
                    connection: connection.id,
                    reason: format!("malformed changes for {document_id}"),
                });
                self.forget_document(
                    document_id,
                    &format!("document {document_id} had to be reloaded"),
                    effects,
                );
                return;
            }
            Applied::Failed(error) => Err(Refusal::new(format!(
                "the automerge sync message for {document_id} could not be applied: {error}"
            ))),
            Applied::Done(_) if after == before => {
                existing.undo = None;
                loaded.owed.insert(connection.id);
                return;
            }
            Applied::Done(applied) => {
                let changes = applied.unwrap_or_else(|| existing.doc.get_changes(&before));
                let view = existing.view_while_judging(&document_id);
                judge(
                    &self.policy,
                    &connection.user,
                    view,
                    &before,
                    &changes,
                    creating,
                )
                .map(|verdict_writes| (changes, verdict_writes))
            }
        };
        match verdict {
            Ok((changes, verdict_writes)) => {
                let user_id = self.policy.user_id(&connection.user).to_string();
                record_accepted(
                    &self.policy,
                    &self.config,
                    loaded,
                    document_id,
                    Unacknowledged {
                        user_id,
                        changes: changes.iter().map(Change::hash).collect(),
                        ticket: None,
                    },
                    &changes,
                    Origin::Client(verdict_writes),
                    effects,
                );
            }
            Err(refusal) => {
                existing.peers.remove(&connection.id);
                // The document's id lets a client drop its copy of the
                // refused change instead of offering it on every reconnect.
                effects.push(Effect::Close {
                    connection: connection.id,
                    reason: format!("refused change to {document_id}: {}", refusal.rule),
                });
                if creating {
                    loaded.existing = None;
                } else {
                    self.roll_back(document_id, &before, effects);
                }
            }
        }
    }

    /// Drops the changes applied since `before`. Our own heads of a moment
    /// ago cannot fail to fork; if they somehow do, forget the document: the
    /// store has its durable state, and its peers resync from that after
    /// reconnecting.
    fn roll_back(
        &mut self,
        document_id: DocumentId,
        before: &[ChangeHash],
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        let Some(existing) =
            loaded_mut(&mut self.documents, &document_id).and_then(|l| l.existing.as_mut())
        else {
            return;
        };
        if let Some(undo) = existing.undo.take()
            && sorted_heads(undo.get_heads()) == sorted_heads(before.to_vec())
        {
            existing.doc = undo;
            return;
        }
        self.rebuilds += 1;
        if let Err(reason) = rollback(existing, before) {
            self.forget_document(
                document_id,
                &format!("document {document_id} had to be reloaded: {reason}"),
                effects,
            );
        }
    }

    fn receive_from_outsider(
        &mut self,
        document_id: DocumentId,
        connection: Arc<Connection<P::User>>,
        sync_message: sync::Message,
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        let server_peer_id = self.config.server_peer_id.clone();
        effects.push(Effect::Send {
            connection: connection.id,
            message: Message::DocUnavailable(DocUnavailable {
                sender_id: server_peer_id,
                target_id: connection.peer_id.clone(),
                document_id,
            }),
        });
        let Some(loaded) = loaded_mut(&mut self.documents, &document_id) else {
            return;
        };
        let Some(existing) = loaded.existing.as_mut() else {
            return;
        };
        let before = existing.doc.get_heads();
        let mut scratch = sync::State::new();
        let mut no_budget = 0;
        let budget = HeldBudget {
            connection_bytes: self
                .connections
                .get_mut(&connection.id)
                .map_or(&mut no_budget, |state| &mut state.held_bytes),
            max_per_connection: self.config.max_held_bytes_per_connection,
            max_per_document: self.config.max_held_bytes_per_document,
        };
        let received = apply_sync_message(
            existing,
            &mut scratch,
            sync_message,
            connection.id,
            budget,
            &mut self.rebuilds,
        );
        let refused = || Effect::Close {
            connection: connection.id,
            reason: "refused: the document is unavailable".to_string(),
        };
        let verdict = match received {
            Applied::Malformed(_) | Applied::TooMuchHeld(_) => {
                effects.push(refused());
                return;
            }
            Applied::Broken => {
                effects.push(refused());
                self.forget_document(
                    document_id,
                    &format!("document {document_id} had to be reloaded"),
                    effects,
                );
                return;
            }
            Applied::Done(_) if existing.doc.get_heads() == before => {
                existing.undo = None;
                return;
            }
            Applied::Failed(error) => Err(Refusal::new(error)),
            Applied::Done(applied) => Ok(applied),
        };
        let (verdict, changes) = match verdict {
            Ok(Some(applied)) => (Ok(()), applied),
            Ok(None) => (Ok(()), existing.doc.get_changes(&before)),
            Err(refusal) => (Err(refusal), Vec::new()),
        };
        let view = existing.view_while_judging(&document_id);
        let verdict = verdict.and_then(|()| {
            judge(
                &self.policy,
                &connection.user,
                view,
                &before,
                &changes,
                false,
            )
        });
        match verdict {
            Ok(verdict_writes) => {
                let user_id = self.policy.user_id(&connection.user).to_string();
                record_accepted(
                    &self.policy,
                    &self.config,
                    loaded,
                    document_id,
                    Unacknowledged {
                        user_id,
                        changes: changes.iter().map(Change::hash).collect(),
                        ticket: None,
                    },
                    &changes,
                    Origin::Client(verdict_writes),
                    effects,
                );
            }
            Err(_) => {
                // Closing makes each attempt cost the sender a reconnect.
                effects.push(refused());
                self.roll_back(document_id, &before, effects);
            }
        }
    }

    fn apply_edit(
        &mut self,
        document_id: DocumentId,
        edit: LocalEdit,
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        let Some(loaded) = loaded_mut(&mut self.documents, &document_id) else {
            return;
        };
        let LocalEdit {
            creator,
            apply,
            ticket,
        } = edit;
        let existing = loaded
            .existing
            .get_or_insert_with(|| Existing::new(creator, &self.config.server_actor));
        let before = existing.doc.get_heads();
        let mut transaction = existing.doc.transaction();
        let outcome = apply(&mut transaction);
        match outcome {
            Ok(()) => {
                transaction.commit();
            }
            Err(error) => {
                transaction.rollback();
                if !existing.meta_stored {
                    loaded.existing = None;
                }
                if let Some(ticket) = ticket {
                    effects.push(Effect::EditDone {
                        ticket,
                        result: Err(error.to_string()),
                    });
                }
                return;
            }
        }
        let changes = existing.doc.get_changes(&before);
        if changes.is_empty() {
            if !existing.meta_stored {
                loaded.existing = None;
            }
            // Nothing new, but an earlier change this round may still be on
            // its way to the disk: answer once it is.
            if let Some(ticket) = ticket {
                if loaded.pending_writes.is_empty() {
                    effects.push(Effect::EditDone {
                        ticket,
                        result: Ok(()),
                    });
                } else {
                    loaded.unacknowledged.push(Unacknowledged {
                        user_id: String::new(),
                        changes: Vec::new(),
                        ticket: Some(ticket),
                    });
                }
            }
            return;
        }
        record_accepted(
            &self.policy,
            &self.config,
            loaded,
            document_id,
            Unacknowledged {
                user_id: SERVER_USER.to_string(),
                changes: changes.iter().map(Change::hash).collect(),
                ticket,
            },
            &changes,
            Origin::Server,
            effects,
        );
    }

    fn describe(&mut self, document_id: DocumentId, effects: &mut Vec<Effect<P::Summary>>) {
        let Some(existing) =
            loaded_mut(&mut self.documents, &document_id).and_then(|l| l.existing.as_mut())
        else {
            return;
        };
        let changes = std::mem::take(&mut existing.unsummarized);
        let view = DocumentView {
            id: &document_id,
            doc: &existing.doc,
            creator: &existing.creator,
            previous: None,
        };
        let policy = &self.policy;
        let memo = &mut existing.memo;
        // A policy that panics on a hand-made document derives nothing from
        // it this time, starts its memo afresh, and the shard goes on.
        let summary = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            policy.summarize(view, memo, &changes)
        }))
        .unwrap_or_else(|_| {
            existing.memo = P::Memo::default();
            None
        });
        if let Some(summary) = summary {
            effects.push(Effect::Summary {
                document_id,
                summary,
            });
        }
    }

    fn relay_ephemeral(
        &mut self,
        document_id: DocumentId,
        connection: &Connection<P::User>,
        message: Ephemeral,
        now_ms: u64,
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        let Some(existing) =
            loaded_mut(&mut self.documents, &document_id).and_then(|l| l.existing.as_mut())
        else {
            return;
        };
        if !existing.may_read(&self.policy, &document_id, &connection.user) {
            return;
        }
        let view = DocumentView {
            id: &document_id,
            doc: &existing.doc,
            creator: &existing.creator,
            previous: None,
        };
        // A client may send the same ephemeral twice (the stock client's
        // copies of ours are dropped before they get here): drop repeats.
        let key = (message.sender_id.clone(), message.session_id.clone());
        if existing
            .last_ephemeral
            .get(&key)
            .is_some_and(|&(last, _)| message.count <= last)
        {
            return;
        }
        if !existing.last_ephemeral.contains_key(&key)
            && existing.last_ephemeral.len() >= self.config.ephemeral_sources_per_document
        {
            // Forget the source heard from longest ago.
            let oldest = existing
                .last_ephemeral
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                existing.last_ephemeral.remove(&oldest);
            }
        }
        existing.last_ephemeral.insert(key, (message.count, now_ms));
        // Encoded once; each reader's frame shares the bytes.
        let mut shared = None;
        for (id, peer) in &existing.peers {
            if *id == connection.id
                || !self
                    .policy
                    .may_read(&peer.connection.user, view, &mut existing.memo)
            {
                continue;
            }
            let shared = shared.get_or_insert_with(|| SharedEphemeral::new(&message));
            effects.push(Effect::SendFrame {
                connection: *id,
                frame: shared.for_target(&peer.connection.peer_id),
            });
        }
    }

    /// Sends every owed peer what it lacks, now that nothing is in flight.
    fn send_owed(&mut self, document_id: DocumentId, effects: &mut Vec<Effect<P::Summary>>) {
        let Some(loaded) = loaded_mut(&mut self.documents, &document_id) else {
            return;
        };
        let owed: Vec<ConnectionId> = loaded.owed.drain().collect();
        let Some(existing) = loaded.existing.as_mut() else {
            return;
        };
        let heads = existing.doc.get_heads();
        // First the peers that may still read it, each with our durable heads
        // to announce; then how many share a likely sync state.
        let mut ready = Vec::with_capacity(owed.len());
        let mut alike: HashMap<StateFingerprint, usize> = HashMap::new();
        for id in owed {
            let Some(peer) = existing.peers.get_mut(&id) else {
                continue;
            };
            let view = DocumentView {
                id: &document_id,
                doc: &existing.doc,
                creator: &existing.creator,
                previous: None,
            };
            if !self
                .policy
                .may_read(&peer.connection.user, view, &mut existing.memo)
            {
                // Access was lost (removed from a conversation, a post hidden).
                existing.peers.remove(&id);
                continue;
            }
            if peer.announced != heads {
                // Forget what automerge inferred; tell the peer our durable heads.
                peer.state.last_sent_heads.clear();
            }
            let fingerprint = StateFingerprint::of(&peer.state);
            *alike.entry(fingerprint.clone()).or_default() += 1;
            ready.push((id, fingerprint));
        }
        let mut generated: Vec<SharedMessage> = Vec::new();
        for (id, fingerprint) in ready {
            let Some(peer) = existing.peers.get_mut(&id) else {
                continue;
            };
            // A message depends only on the document and the sync state:
            // peers in the same state (readers keeping up) share one. A peer
            // alone in its state skips the bookkeeping.
            let shares = alike.get(&fingerprint).is_some_and(|count| *count > 1);
            let data = match generated
                .iter()
                .find(|shared| shares && shared.before == peer.state)
            {
                Some(shared) => {
                    peer.state = shared.after.clone();
                    shared.data.clone()
                }
                None => {
                    let before = shares.then(|| peer.state.clone());
                    let data = existing
                        .doc
                        .generate_sync_message(&mut peer.state)
                        .map(|message| message.encode());
                    self.sync_messages_generated += u64::from(data.is_some());
                    if let Some(before) = before {
                        if generated.len() == SHARED_SYNC_STATES {
                            generated.remove(0);
                        }
                        generated.push(SharedMessage {
                            before,
                            after: peer.state.clone(),
                            data: data.clone(),
                        });
                    }
                    data
                }
            };
            if let Some(data) = data {
                peer.announced = heads.clone();
                effects.push(Effect::Send {
                    connection: id,
                    message: Message::Sync(DocMessage {
                        sender_id: self.config.server_peer_id.clone(),
                        target_id: peer.connection.peer_id.clone(),
                        document_id,
                        data,
                    }),
                });
            }
        }
    }

    fn on_written(&mut self, write: WriteId, now_ms: u64, effects: &mut Vec<Effect<P::Summary>>) {
        let Some(document_id) = self.writes.remove(&write) else {
            return;
        };
        let Some(loaded) = loaded_mut(&mut self.documents, &document_id) else {
            return;
        };
        if loaded.write_in_flight != Some(write) {
            return;
        }
        loaded.write_in_flight = None;
        let mut changed = false;
        for accepted in loaded.unacknowledged.drain(..) {
            if let Some(ticket) = accepted.ticket {
                effects.push(Effect::EditDone {
                    ticket,
                    result: Ok(()),
                });
            }
            if !accepted.changes.is_empty() {
                changed = true;
                effects.push(Effect::DocumentChanged {
                    document_id,
                    user_id: accepted.user_id,
                    changes: accepted.changes,
                });
            }
        }
        if changed {
            self.describe(document_id, effects);
        }
        // Everything in memory is durable now: messages that came during the
        // flush waited in the queue. Answer before taking them in, or a peer
        // writing faster than the disk flushes would never hear an ack.
        self.send_owed(document_id, effects);
        self.drain_queue(document_id, now_ms, effects);
    }

    fn on_write_failed(
        &mut self,
        write: WriteId,
        reason: &str,
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        let Some(document_id) = self.writes.remove(&write) else {
            return;
        };
        // The changes in memory are not durable and must never be acknowledged:
        // forget the document and close its peers, who still hold their changes
        // and will send them again after reconnecting.
        self.forget_document(
            document_id,
            &format!("the server could not store changes to {document_id}: {reason}"),
            effects,
        );
    }

    /// Drops a document from memory (the store keeps its durable state),
    /// closing every connection that has it open or waits on it and failing
    /// the server edits that wait on it.
    fn forget_document(
        &mut self,
        document_id: DocumentId,
        reason: &str,
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        let Some(entry) = self.documents.remove(&document_id) else {
            return;
        };
        let mut to_close = HashSet::new();
        let mut tickets = Vec::new();
        for item in &entry.queue {
            match item {
                Queued::Message(connection, message) => {
                    if let Some(state) = self.connections.get_mut(&connection.id) {
                        state.queued_bytes =
                            state.queued_bytes.saturating_sub(message_size(message));
                    }
                    to_close.insert(connection.id);
                }
                Queued::Edit(edit) => tickets.extend(edit.ticket),
                Queued::Describe => {}
            }
        }
        if let Slot::Loaded(loaded) = entry.slot {
            tickets.extend(loaded.unacknowledged.iter().filter_map(|a| a.ticket));
            to_close.extend(loaded.waiting.keys());
            if let Some(existing) = loaded.existing {
                to_close.extend(existing.peers.keys());
                for (id, held) in &existing.held {
                    if let Some(state) = self.connections.get_mut(id) {
                        state.held_bytes = state.held_bytes.saturating_sub(held.bytes);
                    }
                }
            }
        }
        for connection in to_close {
            effects.push(Effect::Close {
                connection,
                reason: reason.to_string(),
            });
        }
        for ticket in tickets {
            effects.push(Effect::EditDone {
                ticket,
                result: Err(reason.to_string()),
            });
        }
    }

    fn on_disconnect(
        &mut self,
        connection: ConnectionId,
        now_ms: u64,
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        let Some(state) = self.connections.remove(&connection) else {
            return;
        };
        let mut never_created = Vec::new();
        for document_id in state.documents {
            if let Some(waiters) = self.waiters.get_mut(&document_id) {
                waiters.remove(&connection);
                if waiters.is_empty() {
                    self.waiters.remove(&document_id);
                }
            }
            let Some(loaded) = loaded_mut(&mut self.documents, &document_id) else {
                continue;
            };
            loaded.waiting.remove(&connection);
            loaded.owed.remove(&connection);
            let Some(existing) = loaded.existing.as_mut() else {
                never_created.push(document_id);
                continue;
            };
            if let Some(held) = existing.held.remove(&connection) {
                existing.held_bytes = existing.held_bytes.saturating_sub(held.bytes);
            }
            let Some(peer) = existing.peers.remove(&connection) else {
                continue;
            };
            // Remember what this device's store shares with us, so its next
            // connection skips most of the Bloom filter exchange. Only the
            // shared heads carry over (as in the stored form): what was sent
            // on this connection may never have arrived. The state is the
            // user's: another user naming the same storage id gets its own.
            if let (Some(storage_id), false, true) = (
                &peer.connection.storage_id,
                peer.connection.is_ephemeral,
                existing.meta_stored,
            ) {
                let user = self.policy.user_id(&peer.connection.user).to_string();
                let encoded = peer.state.encode();
                let kept = sync::State::decode(&encoded).unwrap_or_default();
                let mut writes = vec![StorageWrite::Put {
                    key: storage::sync_state_key(&document_id, &user, storage_id),
                    value: storage::sync_state_value(now_ms, &kept),
                }];
                existing
                    .stored_sync_states
                    .insert((user, storage_id.clone()), (now_ms, kept));
                while existing.stored_sync_states.len() > self.config.max_sync_states_per_document {
                    let oldest = existing
                        .stored_sync_states
                        .iter()
                        .min_by_key(|(_, (saved_at, _))| *saved_at)
                        .map(|(key, _)| key.clone());
                    let Some(oldest) = oldest else { break };
                    existing.stored_sync_states.remove(&oldest);
                    writes.push(StorageWrite::Delete {
                        key: storage::sync_state_key(&document_id, &oldest.0, &oldest.1),
                    });
                }
                effects.push(Effect::Write {
                    write: None,
                    writes,
                });
            }
        }
        // A slot for a document nobody created, that no one else waits for,
        // goes with the connection that asked, not after the idle time: a
        // client asking for random ids must not pile them up by reconnecting.
        for document_id in never_created {
            let forget = self.documents.get(&document_id).is_some_and(|entry| {
                entry.queue.is_empty()
                    && matches!(&entry.slot, Slot::Loaded(loaded)
                        if loaded.existing.is_none()
                            && loaded.waiting.is_empty()
                            && loaded.write_in_flight.is_none()
                            && loaded.unacknowledged.is_empty())
            });
            if forget && !self.waiters.contains_key(&document_id) {
                self.documents.remove(&document_id);
            }
        }
    }

    /// A user whose ephemeral budget is full again needs no entry.
    fn forget_refilled_ephemeral_budgets(&mut self, now_ms: u64) {
        let rate = self.config.ephemeral_bytes_per_second as f64;
        let burst = self.config.ephemeral_bytes_burst as f64;
        self.ephemeral_bytes.retain(|_, bucket| {
            bucket.refill(rate, burst, now_ms);
            bucket.tokens < burst
        });
    }

    fn evict_idle(&mut self, now_ms: u64) {
        let evict_after = self.config.evict_after_ms;
        let waiters = &mut self.waiters;
        let connections = &mut self.connections;
        self.documents.retain(|document_id, entry| {
            let Slot::Loaded(loaded) = &mut entry.slot else {
                return true;
            };
            // A document nobody has created pins nothing: who waits for it
            // is remembered outside, and its slot goes like any idle one.
            let created = loaded
                .existing
                .as_ref()
                .is_some_and(|existing| existing.meta_stored);
            let idle = entry.queue.is_empty()
                && loaded.write_in_flight.is_none()
                && loaded.unacknowledged.is_empty()
                && (loaded.waiting.is_empty() || !created)
                && loaded
                    .existing
                    .as_ref()
                    .is_none_or(|existing| existing.peers.is_empty());
            if !(idle && now_ms.saturating_sub(entry.last_active_ms) >= evict_after) {
                return true;
            }
            if !loaded.waiting.is_empty() {
                waiters
                    .entry(*document_id)
                    .or_default()
                    .extend(loaded.waiting.drain());
            }
            if let Some(existing) = &loaded.existing {
                for (id, held) in &existing.held {
                    if let Some(state) = connections.get_mut(id) {
                        state.held_bytes = state.held_bytes.saturating_sub(held.bytes);
                    }
                }
            }
            false
        });
    }
}

/// How applying a peer's sync message went.
enum Applied {
    /// Applied; the changes it added, in causal order, when it is known
    /// without asking automerge (a whole document in the message: `None`).
    Done(Option<Vec<Change>>),
    Failed(String),
    /// The message's changes do not parse: nothing was applied.
    Malformed(String),
    /// The sender holds too much waiting for missing dependencies: nothing
    /// was applied and what it held is dropped.
    TooMuchHeld(String),
    /// automerge panicked on a malformed change: the document in memory can
    /// no longer be trusted.
    Broken,
}

/// The limits and counters [`apply_sync_message`] works within.
struct HeldBudget<'a> {
    connection_bytes: &'a mut usize,
    max_per_connection: usize,
    max_per_document: usize,
}

/// Applies a peer's sync message from connection `from`. The changes whose
/// dependencies are in the document go in, with any this connection sent
/// earlier that they complete; the rest are held for the connection,
/// outside the document, within its byte budget. The sync state then takes
/// the message as `receive_sync_message` would have.
fn apply_sync_message<U, M>(
    existing: &mut Existing<U, M>,
    state: &mut sync::State,
    mut message: sync::Message,
    from: ConnectionId,
    budget: HeldBudget<'_>,
    rebuilds: &mut u64,
) -> Applied {
    let chunks = std::mem::replace(&mut message.changes, sync::ChunkList::empty());
    let mut incoming = Vec::new();
    let mut whole_documents = Vec::new();
    for chunk in chunks.iter() {
        let parts = match split_chunks(chunk) {
            Ok(parts) => parts,
            Err(reason) => return Applied::Malformed(reason),
        };
        for (kind, part) in parts {
            if kind == CHUNK_CHANGE || kind == CHUNK_COMPRESSED_CHANGE {
                match Change::try_from(part) {
                    Ok(change) => incoming.push(change),
                    Err(error) => return Applied::Malformed(error.to_string()),
                }
            } else {
                whole_documents.push(part.to_vec());
            }
        }
    }
    // Each change now holds its own bytes: the message's copy goes before
    // the document takes a third (a large message costs its size fewer times).
    drop(chunks);
    let doc = &mut existing.doc;
    let held = existing.held.entry(from).or_default();
    let held_before = held.bytes;
    for change in incoming {
        let hash = change.hash();
        if !has_change(doc, &hash) && !held.changes.contains_key(&hash) {
            held.bytes += change.raw_bytes().len();
            held.changes.insert(hash, change);
        }
    }
    let ready = take_ready(doc, held);
    let grown = held.bytes.saturating_sub(held_before);
    let shrunk = held_before.saturating_sub(held.bytes);
    existing.held_bytes = existing.held_bytes + grown - shrunk.min(existing.held_bytes);
    *budget.connection_bytes =
        *budget.connection_bytes + grown - shrunk.min(*budget.connection_bytes);
    if *budget.connection_bytes > budget.max_per_connection
        || existing.held_bytes > budget.max_per_document
    {
        let dropped = existing.held.remove(&from).map_or(0, |held| held.bytes);
        existing.held_bytes = existing.held_bytes.saturating_sub(dropped);
        *budget.connection_bytes = budget.connection_bytes.saturating_sub(dropped);
        return Applied::TooMuchHeld(format!(
            "too many changes arrived before the changes they depend on (the limits are {} bytes per connection and {} per document)",
            budget.max_per_connection, budget.max_per_document
        ));
    }
    if existing
        .held
        .get(&from)
        .is_some_and(|held| held.changes.is_empty())
    {
        existing.held.remove(&from);
    }

    let before = doc.get_heads();
    existing.undo = (!ready.is_empty() || !whole_documents.is_empty()).then(|| doc.clone());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // A whole document (a version-2 message) holds its own history, so
        // it never leaves changes waiting inside automerge.
        for document in &whole_documents {
            doc.load_incremental(document)?;
        }
        if !ready.is_empty() {
            doc.apply_changes(ready.iter().cloned())?;
        }
        Ok::<(), AutomergeError>(())
    }));
    match outcome {
        Err(_) => return Applied::Broken,
        Ok(Err(error)) => return Applied::Failed(error.to_string()),
        Ok(Ok(())) => {}
    }
    if !doc.get_missing_deps(&[]).is_empty() {
        // Cannot happen with well-formed documents; if it does, take the
        // waiting changes out again rather than keep them inside.
        if let Some(undo) = existing.undo.take() {
            *doc = undo;
            return Applied::Failed("a document in the message depends on changes it lacks".into());
        }
        *rebuilds += 1;
        let actor = doc.get_actor().clone();
        return match doc.fork_at(&doc.get_heads()) {
            Ok(applied_only) => {
                *doc = applied_only.with_actor(actor);
                Applied::Failed("a document in the message depends on changes it lacks".into())
            }
            Err(_) => Applied::Broken,
        };
    }
    let after = doc.get_heads();
    if after != before {
        state.shared_heads = advance_heads(&before, &after, &state.shared_heads);
    }
    match doc.receive_sync_message(state, message) {
        Ok(()) => Applied::Done(whole_documents.is_empty().then_some(ready)),
        Err(error) => Applied::Failed(error.to_string()),
    }
}

/// Whether `doc` has applied the change `hash`. (automerge's own check is
/// not public; with nothing queued inside the document, as here, the
/// missing dependencies of `hash` are itself or nothing.)
fn has_change(doc: &Automerge, hash: &ChangeHash) -> bool {
    doc.get_missing_deps(std::slice::from_ref(hash)).is_empty()
}

/// Takes out of `held` the changes whose dependencies are all in `doc` or
/// taken before them, in an order `apply_changes` can apply.
fn take_ready(doc: &Automerge, held: &mut Held) -> Vec<Change> {
    let mut missing: HashMap<ChangeHash, usize> = HashMap::new();
    let mut dependents: HashMap<ChangeHash, Vec<ChangeHash>> = HashMap::new();
    let mut ready_hashes = Vec::new();
    for (hash, change) in &held.changes {
        let absent: Vec<ChangeHash> = change
            .deps()
            .iter()
            .filter(|dep| !has_change(doc, dep))
            .copied()
            .collect();
        if absent.is_empty() {
            ready_hashes.push(*hash);
        } else {
            missing.insert(*hash, absent.len());
            for dep in absent {
                dependents.entry(dep).or_default().push(*hash);
            }
        }
    }
    let mut ready = Vec::new();
    let mut next = 0;
    while next < ready_hashes.len() {
        let hash = ready_hashes[next];
        next += 1;
        if let Some(change) = held.changes.remove(&hash) {
            held.bytes = held.bytes.saturating_sub(change.raw_bytes().len());
            ready.push(change);
        }
        for dependent in dependents.remove(&hash).unwrap_or_default() {
            if let Some(count) = missing.get_mut(&dependent) {
                *count -= 1;
                if *count == 0 {
                    ready_hashes.push(dependent);
                }
            }
        }
    }
    ready
}

/// The shared heads after applying changes, as automerge's sync does: our
/// new heads, and the old shared heads that are still heads.
fn advance_heads(
    before: &[ChangeHash],
    after: &[ChangeHash],
    shared: &[ChangeHash],
) -> Vec<ChangeHash> {
    let mut advanced: Vec<ChangeHash> = after
        .iter()
        .filter(|head| !before.contains(head))
        .chain(shared.iter().filter(|head| after.contains(head)))
        .copied()
        .collect();
    advanced.sort();
    advanced.dedup();
    advanced
}

const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED_CHANGE: u8 = 2;

/// Splits concatenated automerge chunks (magic, checksum, type, LEB128
/// length, data), as a version-2 sync message carries them, into
/// (type, whole chunk).
fn split_chunks(bytes: &[u8]) -> Result<Vec<(u8, &[u8])>, String> {
    let mut parts = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 9 || rest[..4] != CHUNK_MAGIC {
            return Err("not an automerge chunk".into());
        }
        let kind = rest[8];
        let mut length: u64 = 0;
        let mut at = 9;
        let mut shift = 0;
        loop {
            let byte = *rest.get(at).ok_or("a truncated chunk header")?;
            at += 1;
            if shift > 63 {
                return Err("a chunk length out of range".into());
            }
            length |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let end = usize::try_from(length)
            .ok()
            .and_then(|length| at.checked_add(length))
            .filter(|end| *end <= rest.len())
            .ok_or("a truncated chunk")?;
        parts.push((kind, &rest[..end]));
        rest = &rest[end..];
    }
    Ok(parts)
}

/// What a queued message counts against its connection's byte budget.
fn message_size(message: &DocumentMessage) -> usize {
    const OVERHEAD: usize = 128;
    OVERHEAD
        + match message {
            DocumentMessage::Request(m) | DocumentMessage::Sync(m) => m.data.len(),
            DocumentMessage::Ephemeral(m) => m.data.len() + m.session_id.len(),
            DocumentMessage::DocUnavailable(_) => 0,
        }
}

/// Checks an ephemeral against the size limits, its connection's rate and
/// its user's bytes.
fn admit_ephemeral(
    config: &EngineConfig,
    state: &mut ConnectionState,
    user_bytes: &mut TokenBucket,
    message: &Ephemeral,
    now_ms: u64,
) -> Result<(), String> {
    if message.data.len() > config.ephemeral_max_bytes {
        return Err(format!(
            "ephemeral message too large: its data is {} bytes, the limit is {} (ephemeral_max_bytes)",
            message.data.len(),
            config.ephemeral_max_bytes
        ));
    }
    if message.session_id.len() > config.ephemeral_session_id_max_bytes {
        return Err(format!(
            "ephemeral sessionId too long: the limit is {} bytes (ephemeral_session_id_max_bytes)",
            config.ephemeral_session_id_max_bytes
        ));
    }
    state.ephemeral.refill(
        f64::from(config.ephemeral_per_second),
        f64::from(config.ephemeral_burst),
        now_ms,
    );
    if !state.ephemeral.take(1.0) {
        return Err(format!(
            "too many ephemeral messages: the limit is {} per second, {} at once (ephemeral_per_second)",
            config.ephemeral_per_second, config.ephemeral_burst
        ));
    }
    user_bytes.refill(
        config.ephemeral_bytes_per_second as f64,
        config.ephemeral_bytes_burst as f64,
        now_ms,
    );
    if !user_bytes.take(message.data.len() as f64) {
        return Err(format!(
            "too many ephemeral bytes: the limit is {} bytes a second, {} at once, per user (ephemeral_bytes_per_second)",
            config.ephemeral_bytes_per_second, config.ephemeral_bytes_burst
        ));
    }
    Ok(())
}

/// The user id recorded for changes the server makes itself.
pub const SERVER_USER: &str = "server";

impl<U, M: Default> Existing<U, M> {
    /// The document as the policy sees it.
    fn view<'a>(&'a self, id: &'a DocumentId) -> DocumentView<'a> {
        DocumentView {
            id,
            doc: &self.doc,
            creator: &self.creator,
            previous: None,
        }
    }

    /// The same while a message's changes are judged: with the copy of the
    /// document from before them.
    fn view_while_judging<'a>(&'a self, id: &'a DocumentId) -> DocumentView<'a> {
        DocumentView {
            previous: self.undo.as_ref(),
            ..self.view(id)
        }
    }

    fn new(creator: String, server_actor: &ActorId) -> Self {
        let mut doc = Automerge::new();
        doc.set_actor(server_actor.clone());
        Self {
            doc,
            creator,
            meta_stored: false,
            chunks_since_compaction: 0,
            peers: HashMap::new(),
            stored_sync_states: HashMap::new(),
            last_ephemeral: HashMap::new(),
            held: HashMap::new(),
            held_bytes: 0,
            undo: None,
            memo: M::default(),
            unsummarized: Vec::new(),
        }
    }

    /// Whether `policy` lets `user` read this document, asked with its memo.
    fn may_read<P: Policy<User = U, Memo = M>>(
        &mut self,
        policy: &P,
        id: &DocumentId,
        user: &U,
    ) -> bool {
        let view = DocumentView {
            id,
            doc: &self.doc,
            creator: &self.creator,
            previous: None,
        };
        policy.may_read(user, view, &mut self.memo)
    }

    /// Keeps `changes` for the policy's next summary.
    fn note_accepted(&mut self, changes: &[Change]) {
        if self.unsummarized.len() + changes.len() > UNSUMMARIZED_CHANGES {
            self.unsummarized = Vec::new();
            self.memo = M::default();
        } else {
            self.unsummarized.extend_from_slice(changes);
        }
    }
}

/// The policy's verdict; a policy that panics on a hand-made change refuses
/// it, and the shard goes on serving everyone else.
fn judge<P: Policy>(
    policy: &P,
    user: &P::User,
    view: DocumentView<'_>,
    before: &[ChangeHash],
    changes: &[Change],
    creating: bool,
) -> Result<Vec<StorageWrite>, Refusal> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        policy.check_changes(user, view, before, changes, creating)
    }))
    .unwrap_or_else(|_| Err(Refusal::new("the change could not be judged")))
}

/// Who made accepted changes: a client (with the store writes the policy's
/// verdict needs) or the server itself.
enum Origin {
    Client(Vec<StorageWrite>),
    Server,
}

/// Queues the writes of changes just applied (`changes`, made by
/// `accepted.user_id`): they are stored with the round's one write, and
/// acknowledged to peers, and to whoever waited for the document, only
/// once durable. A client's changes also leave a marker that derived state
/// is pending.
#[allow(clippy::too_many_arguments)]
fn record_accepted<P: Policy>(
    policy: &P,
    config: &EngineConfig,
    loaded: &mut Loaded<P::User, P::Memo>,
    document_id: DocumentId,
    accepted: Unacknowledged,
    changes: &[Change],
    origin: Origin,
    effects: &mut Vec<Effect<P::Summary>>,
) {
    let Some(existing) = loaded.existing.as_mut() else {
        return;
    };
    existing.undo = None;
    existing.note_accepted(changes);
    let writes = &mut loaded.pending_writes;
    if !existing.meta_stored {
        writes.push(StorageWrite::Put {
            key: storage::meta_key(&document_id),
            value: existing.creator.clone().into_bytes(),
        });
        existing.meta_stored = true;
    }
    let mut chunk = Vec::new();
    for change in changes {
        chunk.extend_from_slice(change.raw_bytes());
    }
    writes.push(StorageWrite::Put {
        key: storage::change_chunk_key(&document_id, &changes[0].hash()),
        value: chunk,
    });
    if let Origin::Client(verdict_writes) = origin {
        writes.push(StorageWrite::Put {
            key: storage::changed_key(&document_id),
            value: Vec::new(),
        });
        writes.extend(verdict_writes);
    }
    loaded.unacknowledged.push(accepted);
    loaded.owed.extend(existing.peers.keys().copied());
    existing.chunks_since_compaction += 1;
    if existing.chunks_since_compaction >= config.compact_after_chunks {
        existing.chunks_since_compaction = 0;
        effects.push(Effect::Compact { document_id });
    }
    // Whoever waited for this document gets it, if they may read it.
    for (id, waiting) in loaded.waiting.drain() {
        if existing.may_read(policy, &document_id, &waiting.user) {
            existing.peers.insert(
                id,
                Peer {
                    connection: waiting,
                    state: sync::State::new(),
                    announced: Vec::new(),
                },
            );
            loaded.owed.insert(id);
        }
    }
}

fn loaded_mut<'a, U, M>(
    documents: &'a mut HashMap<DocumentId, DocumentSlot<U, M>>,
    document_id: &DocumentId,
) -> Option<&'a mut Loaded<U, M>> {
    match &mut documents.get_mut(document_id)?.slot {
        Slot::Loaded(loaded) => Some(loaded),
        Slot::Loading => None,
    }
}

/// Drops the changes applied since `before` by rebuilding the document from
/// its history: only when no copy from before the message was kept. Other peers' sync states
/// stay valid: nothing about the dropped changes was ever sent to them.
fn rollback<U, M>(existing: &mut Existing<U, M>, before: &[ChangeHash]) -> Result<(), String> {
    let actor = existing.doc.get_actor().clone();
    let mut restored = existing
        .doc
        .fork_at(before)
        .map_err(|error| error.to_string())?;
    restored.set_actor(actor);
    existing.doc = restored;
    Ok(())
}

fn sorted_heads(mut heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    heads.sort();
    heads
}
