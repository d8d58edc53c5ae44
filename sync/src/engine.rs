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

    fn may_read(&self, user: &Self::User, document: DocumentView<'_>) -> bool;

    /// Judges `changes`, already applied to `document`, whose heads before
    /// them were `before`. `creating` is true when these changes create it.
    fn check_changes(
        &self,
        user: &Self::User,
        document: DocumentView<'_>,
        before: &[ChangeHash],
        changes: &[Change],
        creating: bool,
    ) -> Result<(), Refusal>;

    /// Describes a document after durable changes, or `None` if nothing is
    /// derived from it.
    fn summarize(&self, document: DocumentView<'_>) -> Option<Self::Summary>;
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
}

impl EngineConfig {
    pub fn new(server_peer_id: PeerId, server_actor: ActorId) -> Self {
        Self {
            server_peer_id,
            server_actor,
            evict_after_ms: 60_000,
            compact_after_chunks: 64,
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

struct Existing<U> {
    doc: Automerge,
    creator: String,
    /// Meta is written with the first chunk of a document made in memory.
    meta_stored: bool,
    chunks_since_compaction: usize,
    peers: HashMap<ConnectionId, Peer<U>>,
    stored_sync_states: HashMap<StorageId, sync::State>,
    last_ephemeral: HashMap<(PeerId, String), u64>,
    orphans: Orphans,
}

/// Changes automerge holds back until their dependencies arrive (a peer's
/// changes can come out of order, and the sync protocol relies on the
/// receiver keeping them). They belong to the one connection that sent them.
#[derive(Default)]
struct Orphans {
    sender: Option<ConnectionId>,
    bytes: usize,
}

/// At most this much may wait for missing dependencies in one document.
const MAX_ORPHAN_BYTES: usize = 16 * 1024 * 1024;

struct Loaded<U> {
    existing: Option<Existing<U>>,
    /// Connections that asked for the document before it existed.
    waiting: HashMap<ConnectionId, Arc<Connection<U>>>,
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

enum Slot<U> {
    Loading,
    Loaded(Box<Loaded<U>>),
}

struct DocumentSlot<U> {
    slot: Slot<U>,
    queue: VecDeque<Queued<U>>,
    last_active_ms: u64,
}

/// One shard of documents and the peers syncing them.
pub struct Engine<P: Policy> {
    config: EngineConfig,
    policy: P,
    documents: HashMap<DocumentId, DocumentSlot<P::User>>,
    /// Which documents each live connection touched, for disconnects.
    connections: HashMap<ConnectionId, HashSet<DocumentId>>,
    writes: HashMap<WriteId, DocumentId>,
    next_write: u64,
}

impl<P: Policy> Engine<P> {
    pub fn new(config: EngineConfig, policy: P) -> Self {
        Self {
            config,
            policy,
            documents: HashMap::new(),
            connections: HashMap::new(),
            writes: HashMap::new(),
            next_write: 0,
        }
    }

    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// How many documents are in memory (loaded or loading).
    pub fn resident_documents(&self) -> usize {
        self.documents.len()
    }

    pub fn handle(&mut self, input: Input<P::User>, now_ms: u64) -> Vec<Effect<P::Summary>> {
        let mut effects = Vec::new();
        match input {
            Input::Message {
                connection,
                message,
            } => self.on_message(connection, message, now_ms, &mut effects),
            Input::Disconnected { connection } => self.on_disconnect(connection, &mut effects),
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
            Input::Tick => self.evict_idle(now_ms),
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
        self.connections
            .entry(connection.id)
            .or_default()
            .insert(document_id);
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
        self.drain_queue(document_id, effects);
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
                        Queued::Message(connection, _) => effects.push(Effect::Close {
                            connection: connection.id,
                            reason: format!("document {document_id} could not be loaded: {reason}"),
                        }),
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
                let existing = stored.map(|stored| {
                    let stored = *stored;
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
                        stored_sync_states: stored.sync_states.into_iter().collect(),
                        last_ephemeral: HashMap::new(),
                        orphans: Orphans::default(),
                    }
                });
                entry.slot = Slot::Loaded(Box::new(Loaded {
                    existing,
                    waiting: HashMap::new(),
                    write_in_flight: None,
                    pending_writes: Vec::new(),
                    unacknowledged: Vec::new(),
                    owed: HashSet::new(),
                }));
                entry.last_active_ms = now_ms;
                self.drain_queue(document_id, effects);
            }
        }
    }

    /// Processes every queued message (unless a write is in flight), then
    /// either writes the changes they brought, as one write, or, with nothing
    /// to write, sends every peer what it is owed.
    fn drain_queue(&mut self, document_id: DocumentId, effects: &mut Vec<Effect<P::Summary>>) {
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
                    if !self.connections.contains_key(&connection.id) {
                        continue; // disconnected while its message waited
                    }
                    self.process(document_id, connection, message, effects);
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
                self.relay_ephemeral(document_id, &connection, message, effects)
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
        let Some(entry) = self.documents.get_mut(&document_id) else {
            return;
        };
        let Slot::Loaded(loaded) = &mut entry.slot else {
            return;
        };

        if let Some(existing) = &mut loaded.existing {
            let view = DocumentView {
                id: &document_id,
                doc: &existing.doc,
                creator: &existing.creator,
            };
            if !self.policy.may_read(&connection.user, view) {
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

        let peer = existing.peers.entry(connection.id).or_insert_with(|| Peer {
            state: connection
                .storage_id
                .as_ref()
                .and_then(|storage_id| existing.stored_sync_states.get(storage_id).cloned())
                .unwrap_or_default(),
            connection: connection.clone(),
            announced: Vec::new(),
        });
        let creating = !existing.meta_stored;
        let before = existing.doc.get_heads();
        let received = apply_sync_message(
            &mut existing.doc,
            &mut existing.orphans,
            &mut peer.state,
            sync_message,
            connection.id,
        );
        let after = existing.doc.get_heads();
        let verdict = match received {
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
            Applied::Done if after == before => {
                loaded.owed.insert(connection.id);
                return;
            }
            Applied::Done => {
                let changes = existing.doc.get_changes(&before);
                let view = DocumentView {
                    id: &document_id,
                    doc: &existing.doc,
                    creator: &existing.creator,
                };
                self.policy
                    .check_changes(&connection.user, view, &before, &changes, creating)
                    .map(|()| changes)
            }
        };
        match verdict {
            Ok(changes) => {
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
                    true,
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
        let received = apply_sync_message(
            &mut existing.doc,
            &mut existing.orphans,
            &mut scratch,
            sync_message,
            connection.id,
        );
        let refused = || Effect::Close {
            connection: connection.id,
            reason: "refused: the document is unavailable".to_string(),
        };
        let verdict = match received {
            Applied::Broken => {
                effects.push(refused());
                self.forget_document(
                    document_id,
                    &format!("document {document_id} had to be reloaded"),
                    effects,
                );
                return;
            }
            Applied::Done if existing.doc.get_heads() == before => return,
            Applied::Failed(error) => Err(Refusal::new(error)),
            Applied::Done => Ok(()),
        };
        let changes = existing.doc.get_changes(&before);
        let view = DocumentView {
            id: &document_id,
            doc: &existing.doc,
            creator: &existing.creator,
        };
        let verdict = verdict.and_then(|()| {
            self.policy
                .check_changes(&connection.user, view, &before, &changes, false)
        });
        match verdict {
            Ok(()) => {
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
                    true,
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
            false,
            effects,
        );
    }

    fn describe(&mut self, document_id: DocumentId, effects: &mut Vec<Effect<P::Summary>>) {
        let Some(existing) =
            loaded_mut(&mut self.documents, &document_id).and_then(|l| l.existing.as_ref())
        else {
            return;
        };
        let view = DocumentView {
            id: &document_id,
            doc: &existing.doc,
            creator: &existing.creator,
        };
        if let Some(summary) = self.policy.summarize(view) {
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
        effects: &mut Vec<Effect<P::Summary>>,
    ) {
        let Some(existing) =
            loaded_mut(&mut self.documents, &document_id).and_then(|l| l.existing.as_mut())
        else {
            return;
        };
        let view = DocumentView {
            id: &document_id,
            doc: &existing.doc,
            creator: &existing.creator,
        };
        if !self.policy.may_read(&connection.user, view) {
            return;
        }
        // Clients re-gossip what they receive, back to us too: drop repeats.
        let key = (message.sender_id.clone(), message.session_id.clone());
        if existing
            .last_ephemeral
            .get(&key)
            .is_some_and(|&last| message.count <= last)
        {
            return;
        }
        existing.last_ephemeral.insert(key, message.count);
        for (id, peer) in &existing.peers {
            if *id == connection.id || !self.policy.may_read(&peer.connection.user, view) {
                continue;
            }
            effects.push(Effect::Send {
                connection: *id,
                message: Message::Ephemeral(Ephemeral {
                    target_id: peer.connection.peer_id.clone(),
                    ..message.clone()
                }),
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
        for id in owed {
            let Some(peer) = existing.peers.get_mut(&id) else {
                continue;
            };
            let view = DocumentView {
                id: &document_id,
                doc: &existing.doc,
                creator: &existing.creator,
            };
            if !self.policy.may_read(&peer.connection.user, view) {
                // Access was lost (removed from a conversation, a post hidden).
                existing.peers.remove(&id);
                continue;
            }
            let heads = existing.doc.get_heads();
            if peer.announced != heads {
                // Forget what automerge inferred; tell the peer our durable heads.
                peer.state.last_sent_heads.clear();
            }
            if let Some(message) = existing.doc.generate_sync_message(&mut peer.state) {
                peer.announced = heads;
                effects.push(Effect::Send {
                    connection: id,
                    message: Message::Sync(DocMessage {
                        sender_id: self.config.server_peer_id.clone(),
                        target_id: peer.connection.peer_id.clone(),
                        document_id,
                        data: message.encode(),
                    }),
                });
            }
        }
    }

    fn on_written(&mut self, write: WriteId, _now_ms: u64, effects: &mut Vec<Effect<P::Summary>>) {
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
        self.drain_queue(document_id, effects);
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
                Queued::Message(connection, _) => {
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

    fn on_disconnect(&mut self, connection: ConnectionId, effects: &mut Vec<Effect<P::Summary>>) {
        let Some(documents) = self.connections.remove(&connection) else {
            return;
        };
        for document_id in documents {
            let Some(loaded) = loaded_mut(&mut self.documents, &document_id) else {
                continue;
            };
            loaded.waiting.remove(&connection);
            loaded.owed.remove(&connection);
            let Some(existing) = loaded.existing.as_mut() else {
                continue;
            };
            let Some(peer) = existing.peers.remove(&connection) else {
                continue;
            };
            // Remember what this device's store shares with us, so its next
            // connection skips most of the Bloom filter exchange. Only the
            // shared heads carry over (as in the stored form): what was sent
            // on this connection may never have arrived.
            if let (Some(storage_id), false, true) = (
                &peer.connection.storage_id,
                peer.connection.is_ephemeral,
                existing.meta_stored,
            ) {
                let encoded = peer.state.encode();
                let kept = sync::State::decode(&encoded).unwrap_or_default();
                effects.push(Effect::Write {
                    write: None,
                    writes: vec![StorageWrite::Put {
                        key: storage::sync_state_key(&document_id, storage_id),
                        value: encoded,
                    }],
                });
                existing.stored_sync_states.insert(storage_id.clone(), kept);
            }
        }
    }

    fn evict_idle(&mut self, now_ms: u64) {
        let evict_after = self.config.evict_after_ms;
        self.documents.retain(|_, entry| {
            let Slot::Loaded(loaded) = &entry.slot else {
                return true;
            };
            let idle = entry.queue.is_empty()
                && loaded.write_in_flight.is_none()
                && loaded.waiting.is_empty()
                && loaded
                    .existing
                    .as_ref()
                    .is_none_or(|existing| existing.peers.is_empty());
            !(idle && now_ms.saturating_sub(entry.last_active_ms) >= evict_after)
        });
    }
}

/// How applying a peer's sync message went.
enum Applied {
    Done,
    Failed(String),
    /// automerge panicked on a malformed change: the document in memory can
    /// no longer be trusted.
    Broken,
}

/// Applies a peer's sync message from connection `from`. Changes waiting
/// for dependencies stay only while the same connection keeps sending and
/// below a size limit; otherwise they are dropped (a later change would be
/// judged as whoever completed them) and the sync protocol asks again.
fn apply_sync_message(
    doc: &mut Automerge,
    orphans: &mut Orphans,
    state: &mut sync::State,
    message: sync::Message,
    from: ConnectionId,
) -> Applied {
    if orphans.sender.is_some_and(|sender| sender != from) && drop_orphans(doc, orphans).is_err() {
        return Applied::Broken;
    }
    let size: usize = message.changes.iter().map(<[u8]>::len).sum();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        doc.receive_sync_message(state, message)
    }));
    match outcome {
        Err(_) => Applied::Broken,
        Ok(Err(error)) => Applied::Failed(error.to_string()),
        Ok(Ok(())) if doc.get_missing_deps(&[]).is_empty() => {
            *orphans = Orphans::default();
            Applied::Done
        }
        Ok(Ok(())) => {
            orphans.sender = Some(from);
            orphans.bytes += size;
            if orphans.bytes > MAX_ORPHAN_BYTES {
                return match drop_orphans(doc, orphans) {
                    Ok(()) => Applied::Failed(
                        "too many changes arrived before the changes they depend on".into(),
                    ),
                    Err(()) => Applied::Broken,
                };
            }
            Applied::Done
        }
    }
}

/// Forgets the changes waiting for dependencies, keeping everything applied.
fn drop_orphans(doc: &mut Automerge, orphans: &mut Orphans) -> Result<(), ()> {
    *orphans = Orphans::default();
    let actor = doc.get_actor().clone();
    let applied_only = doc.fork_at(&doc.get_heads()).map_err(drop)?;
    *doc = applied_only.with_actor(actor);
    Ok(())
}

/// The user id recorded for changes the server makes itself.
pub const SERVER_USER: &str = "server";

impl<U> Existing<U> {
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
            orphans: Orphans::default(),
        }
    }
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
    loaded: &mut Loaded<P::User>,
    document_id: DocumentId,
    accepted: Unacknowledged,
    changes: &[Change],
    from_client: bool,
    effects: &mut Vec<Effect<P::Summary>>,
) {
    let Some(existing) = loaded.existing.as_mut() else {
        return;
    };
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
    if from_client {
        writes.push(StorageWrite::Put {
            key: storage::changed_key(&document_id),
            value: Vec::new(),
        });
    }
    loaded.unacknowledged.push(accepted);
    loaded.owed.extend(existing.peers.keys().copied());
    existing.chunks_since_compaction += 1;
    if existing.chunks_since_compaction >= config.compact_after_chunks {
        existing.chunks_since_compaction = 0;
        effects.push(Effect::Compact { document_id });
    }
    // Whoever waited for this document gets it, if they may read it.
    let view = DocumentView {
        id: &document_id,
        doc: &existing.doc,
        creator: &existing.creator,
    };
    for (id, waiting) in loaded.waiting.drain() {
        if policy.may_read(&waiting.user, view) {
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

fn loaded_mut<'a, U>(
    documents: &'a mut HashMap<DocumentId, DocumentSlot<U>>,
    document_id: &DocumentId,
) -> Option<&'a mut Loaded<U>> {
    match &mut documents.get_mut(document_id)?.slot {
        Slot::Loaded(loaded) => Some(loaded),
        Slot::Loading => None,
    }
}

/// Drops the changes applied since `before`. Rare (a refused message), so
/// rebuilding the document is an acceptable cost. Other peers' sync states
/// stay valid: nothing about the dropped changes was ever sent to them.
fn rollback<U>(existing: &mut Existing<U>, before: &[ChangeHash]) -> Result<(), String> {
    let actor = existing.doc.get_actor().clone();
    let mut restored = existing
        .doc
        .fork_at(before)
        .map_err(|error| error.to_string())?;
    restored.set_actor(actor);
    existing.doc = restored;
    existing.orphans = Orphans::default();
    Ok(())
}
