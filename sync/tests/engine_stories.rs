//! The engine as deterministic multi-peer stories: in-memory peers built on
//! the automerge library, an in-memory store, no sockets, no clock.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, ROOT, ReadDoc};
use backchannel_sync::storage::{self, StorageWrite};
use backchannel_sync::{
    Connection, ConnectionId, DocMessage, DocumentId, DocumentMessage, DocumentView, Effect,
    Engine, EngineConfig, Ephemeral, Input, LocalEdit, Message, PeerId, Policy, Refusal, StorageId,
    WriteId,
};

/// Test rules: a document is readable by its creator, and by everyone once
/// its root has `public: true`; nobody may write a root key `forbidden`.
struct TestPolicy;

impl Policy for TestPolicy {
    type User = String;
    /// The number of keys at the document's root.
    type Summary = usize;

    fn user_id<'a>(&self, user: &'a String) -> &'a str {
        user
    }

    fn may_read(&self, user: &String, document: DocumentView<'_>, _memo: &mut Self::Memo) -> bool {
        document.creator == user
            || matches!(document.doc.get(ROOT, "public"), Ok(Some((value, _))) if value.as_bool() == Some(true))
    }

    fn check_changes(
        &self,
        user: &String,
        document: DocumentView<'_>,
        _before: &[ChangeHash],
        _changes: &[automerge::Change],
        _creating: bool,
    ) -> Result<Vec<StorageWrite>, Refusal> {
        if let Ok(Some(_)) = document.doc.get(ROOT, "panic") {
            panic!("the test policy panics on `panic`");
        }
        match document.doc.get(ROOT, "forbidden") {
            Ok(Some(_)) => Err(Refusal::new("no one may write `forbidden`")),
            _ => Ok(vec![StorageWrite::Put {
                key: verdict_key(document.id, user),
                value: Vec::new(),
            }]),
        }
    }

    /// The changes the summaries were told of: each accepted change once, so
    /// that together with a fresh memo's whole reading they are the
    /// document's history (a story's summary goes missing if not).
    type Memo = Option<HashSet<ChangeHash>>;

    fn summarize(
        &self,
        document: DocumentView<'_>,
        memo: &mut Self::Memo,
        changes: &[automerge::Change],
    ) -> Option<usize> {
        let history: HashSet<ChangeHash> = document
            .doc
            .get_changes(&[])
            .iter()
            .map(automerge::Change::hash)
            .collect();
        let Some(seen) = memo else {
            *memo = Some(history);
            return Some(document.doc.keys(ROOT).count());
        };
        for change in changes {
            assert!(seen.insert(change.hash()), "a change was summarized twice");
        }
        assert_eq!(*seen, history, "a change never reached the summary");
        Some(document.doc.keys(ROOT).count())
    }
}

struct Client {
    connection: Arc<Connection<String>>,
    docs: BTreeMap<DocumentId, (Automerge, sync::State)>,
    /// Fixed per client so change hashes, and with them the sync protocol's
    /// Bloom filters (false positives included), are the same on every run.
    actor: ActorId,
    received: Vec<Message>,
    closed: Option<String>,
    online: bool,
}

struct World {
    engine: Engine<TestPolicy>,
    store: BTreeMap<String, Vec<u8>>,
    clients: Vec<Client>,
    now: u64,
    /// When false, writes wait in `held_writes` until `release_writes`.
    writes_are_durable_at_once: bool,
    held_writes: Vec<(WriteId, Vec<StorageWrite>)>,
    log: Vec<Effect<usize>>,
}

const SERVER: &str = "server";

/// What the test policy stores for each message it accepts.
fn verdict_key(document: &DocumentId, user: &str) -> String {
    format!("verdict/{document}/{user}")
}

fn doc_id(n: u8) -> DocumentId {
    DocumentId::from_bytes([n; 16])
}

impl World {
    fn new() -> Self {
        Self::with_config(|_| {})
    }

    /// A world whose engine limits `adjust` sets (low, for tests of limits).
    fn with_config(adjust: impl FnOnce(&mut EngineConfig)) -> Self {
        let mut config = EngineConfig::new(PeerId::new(SERVER), ActorId::from([0xee; 16]));
        config.evict_after_ms = 1_000;
        config.compact_after_chunks = 3;
        adjust(&mut config);
        Self {
            engine: Engine::new(config, TestPolicy),
            store: BTreeMap::new(),
            clients: Vec::new(),
            now: 0,
            writes_are_durable_at_once: true,
            held_writes: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Step: a device of `user` connects.
    fn connect(&mut self, user: &str, storage: Option<&str>) -> usize {
        let index = self.clients.len();
        self.clients.push(Client {
            connection: Arc::new(Connection {
                id: ConnectionId(index as u64 + 1000 * self.now),
                peer_id: PeerId::new(format!("peer-{index}")),
                user: user.to_string(),
                storage_id: storage.map(StorageId::new),
                is_ephemeral: false,
            }),
            docs: BTreeMap::new(),
            actor: ActorId::from(vec![index as u8 + 1; 16]),
            received: Vec::new(),
            closed: None,
            online: true,
        });
        index
    }

    fn edit(&mut self, client: usize, document: DocumentId, key: &str, value: i64) {
        let actor = self.clients[client].actor.clone();
        let (doc, _) = self.clients[client]
            .docs
            .entry(document)
            .or_insert_with(|| (Automerge::new().with_actor(actor), sync::State::new()));
        let mut tx = doc.transaction();
        tx.put(ROOT, key, value).unwrap();
        tx.commit_with(CommitOptions::default().with_time(0));
    }

    fn make_public(&mut self, client: usize, document: DocumentId) {
        let (doc, _) = self.clients[client].docs.get_mut(&document).unwrap();
        let mut tx = doc.transaction();
        tx.put(ROOT, "public", true).unwrap();
        tx.commit();
    }

    fn value(&self, client: usize, document: DocumentId, key: &str) -> Option<i64> {
        let (doc, _) = self.clients[client].docs.get(&document)?;
        doc.get(ROOT, key).ok()??.0.as_i64()
    }

    fn heads(&self, client: usize, document: DocumentId) -> Vec<ChangeHash> {
        self.clients[client].docs[&document].0.get_heads()
    }

    /// The client sends what it has for `document` (as `request` if it has nothing).
    fn sync(&mut self, client: usize, document: DocumentId) {
        let actor = self.clients[client].actor.clone();
        let (doc, state) = self.clients[client]
            .docs
            .entry(document)
            .or_insert_with(|| (Automerge::new().with_actor(actor), sync::State::new()));
        let is_empty = doc.get_heads().is_empty();
        let Some(message) = doc.generate_sync_message(state) else {
            return;
        };
        let connection = self.clients[client].connection.clone();
        let wire = DocMessage {
            sender_id: connection.peer_id.clone(),
            target_id: PeerId::new(SERVER),
            document_id: document,
            data: message.encode(),
        };
        let message = if is_empty {
            DocumentMessage::Request(wire)
        } else {
            DocumentMessage::Sync(wire)
        };
        self.input(Input::Message {
            connection,
            message,
        });
    }

    fn send_ephemeral(&mut self, client: usize, document: DocumentId, count: u64) {
        let connection = self.clients[client].connection.clone();
        let message = DocumentMessage::Ephemeral(Ephemeral {
            sender_id: connection.peer_id.clone(),
            target_id: PeerId::new(SERVER),
            document_id: document,
            data: vec![0xa0],
            count,
            session_id: "session".into(),
        });
        self.input(Input::Message {
            connection,
            message,
        });
    }

    fn disconnect(&mut self, client: usize) {
        self.clients[client].online = false;
        let id = self.clients[client].connection.id;
        self.input(Input::Disconnected { connection: id });
    }

    /// Feeds one input and carries out every effect until the world is quiet.
    fn input(&mut self, input: Input<String>) {
        let mut inputs = vec![input];
        while let Some(input) = inputs.pop() {
            for effect in self.engine.handle(input, self.now) {
                self.log.push(effect.clone());
                match effect {
                    Effect::Send {
                        connection,
                        message,
                    } => {
                        if let Some(reply) = self.deliver(connection, message) {
                            inputs.push(reply);
                        }
                    }
                    Effect::SendFrame { connection, frame } => {
                        let message = Message::decode(&frame.to_vec()).unwrap();
                        if let Some(reply) = self.deliver(connection, message) {
                            inputs.push(reply);
                        }
                    }
                    Effect::Close { connection, reason } => {
                        if let Some(client) = self.client_mut(connection) {
                            client.closed = Some(reason);
                            client.online = false;
                        }
                        inputs.push(Input::Disconnected { connection });
                    }
                    Effect::Load { document_id } => {
                        let prefix = storage::document_prefix(&document_id);
                        let entries = self
                            .store
                            .range(prefix.clone()..)
                            .take_while(|(key, _)| key.starts_with(&prefix))
                            .map(|(key, value)| (key.clone(), value.clone()))
                            .collect();
                        let result = storage::assemble(&document_id, entries)
                            .map(|stored| stored.map(Box::new))
                            .map_err(|error| error.to_string());
                        inputs.push(Input::Loaded {
                            document_id,
                            result,
                        });
                    }
                    Effect::Write { write, writes } => match write {
                        Some(id) if !self.writes_are_durable_at_once => {
                            self.held_writes.push((id, writes))
                        }
                        _ => {
                            self.apply(writes);
                            if let Some(id) = write {
                                inputs.push(Input::Written { write: id });
                            }
                        }
                    },
                    Effect::Compact { document_id } => self.compact(document_id),
                    Effect::DocumentChanged { .. }
                    | Effect::Summary { .. }
                    | Effect::EditDone { .. } => {}
                }
            }
        }
    }

    fn release_writes(&mut self) {
        for (id, writes) in std::mem::take(&mut self.held_writes) {
            self.apply(writes);
            self.input(Input::Written { write: id });
        }
    }

    fn apply(&mut self, writes: Vec<StorageWrite>) {
        for write in writes {
            match write {
                StorageWrite::Put { key, value } => {
                    self.store.insert(key, value);
                }
                StorageWrite::Delete { key } => {
                    self.store.remove(&key);
                }
            }
        }
    }

    fn compact(&mut self, document_id: DocumentId) {
        let prefix = storage::document_prefix(&document_id);
        let entries: Vec<(String, Vec<u8>)> = self
            .store
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let stored = storage::assemble(&document_id, entries).unwrap().unwrap();
        let writes = storage::compaction_writes(
            &document_id,
            &stored.doc,
            &stored.content_keys,
            &format!("snap-{}", self.now),
        );
        self.apply(writes);
    }

    fn client_mut(&mut self, connection: ConnectionId) -> Option<&mut Client> {
        self.clients
            .iter_mut()
            .find(|client| client.connection.id == connection && client.online)
    }

    /// A client receives a message and answers as automerge-repo would.
    fn deliver(&mut self, connection: ConnectionId, message: Message) -> Option<Input<String>> {
        let client = self.client_mut(connection)?;
        client.received.push(message.clone());
        let Message::Sync(sync_message) = message else {
            return None;
        };
        let actor = client.actor.clone();
        let (doc, state) = client
            .docs
            .entry(sync_message.document_id)
            .or_insert_with(|| (Automerge::new().with_actor(actor), sync::State::new()));
        doc.receive_sync_message(state, sync::Message::decode(&sync_message.data).unwrap())
            .unwrap();
        let reply = doc.generate_sync_message(state)?;
        Some(Input::Message {
            connection: client.connection.clone(),
            message: DocumentMessage::Sync(DocMessage {
                sender_id: client.connection.peer_id.clone(),
                target_id: PeerId::new(SERVER),
                document_id: sync_message.document_id,
                data: reply.encode(),
            }),
        })
    }

    fn received_about(&self, client: usize, document: DocumentId) -> Vec<&Message> {
        self.clients[client]
            .received
            .iter()
            .filter(|message| match message {
                Message::Sync(m) | Message::Request(m) => m.document_id == document,
                Message::DocUnavailable(m) => m.document_id == document,
                Message::Ephemeral(m) => m.document_id == document,
                _ => false,
            })
            .collect()
    }

    fn stored_keys(&self, document: DocumentId) -> Vec<String> {
        let prefix = storage::document_prefix(&document);
        self.store
            .keys()
            .filter(|key| key.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

fn server_edit(key: &'static str, value: i64, ticket: u64) -> LocalEdit {
    LocalEdit {
        creator: SERVER.to_string(),
        apply: Box::new(move |tx| {
            tx.put(ROOT, key, value)?;
            tx.put(ROOT, "public", true)
        }),
        ticket: Some(ticket),
    }
}

impl World {
    fn effects_matching(&self, wanted: impl Fn(&Effect<usize>) -> bool) -> Vec<&Effect<usize>> {
        self.log.iter().filter(|effect| wanted(effect)).collect()
    }
}

fn is_unavailable(message: &Message) -> bool {
    matches!(message, Message::DocUnavailable(_))
}

#[test]
fn a_document_first_sent_by_sync_is_created_stored_and_reaches_the_creators_other_device() {
    let mut world = World::new();
    // Step 1: Ada's phone creates a document offline, then syncs it.
    let phone = world.connect("ada", Some("phone"));
    world.edit(phone, doc_id(1), "n", 1);
    world.sync(phone, doc_id(1));
    assert!(
        world
            .stored_keys(doc_id(1))
            .contains(&storage::meta_key(&doc_id(1)))
    );
    // Step 2: the server acknowledged it: the phone knows the server has its heads.
    let heads = world.heads(phone, doc_id(1));
    let (_, state) = &world.clients[phone].docs[&doc_id(1)];
    assert_eq!(state.shared_heads, heads);
    // Step 3: Ada's laptop asks for it and gets it.
    let laptop = world.connect("ada", Some("laptop"));
    world.sync(laptop, doc_id(1));
    assert_eq!(world.value(laptop, doc_id(1), "n"), Some(1));
}

#[test]
fn a_request_for_an_unknown_document_gets_doc_unavailable_alone() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.sync(ada, doc_id(9));
    let answers = world.received_about(ada, doc_id(9));
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(is_unavailable(answers[0]));
    assert!(
        world.stored_keys(doc_id(9)).is_empty(),
        "nothing is created"
    );
}

#[test]
fn requests_for_documents_nobody_created_leave_nothing_in_memory_once_their_connection_closes() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "n", 1);
    world.sync(ada, doc_id(1));
    let resident = world.engine.resident_documents();
    let mallory = world.connect("mallory", None);
    for n in 100..=140 {
        world.sync(mallory, doc_id(n));
    }
    assert!(world.engine.resident_documents() > resident);
    world.disconnect(mallory);
    assert_eq!(world.engine.resident_documents(), resident);
}

#[test]
fn a_document_another_user_may_not_read_looks_exactly_like_a_missing_one() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "secret", 42);
    world.sync(ada, doc_id(1));

    let bob = world.connect("bob", None);
    world.sync(bob, doc_id(1));
    world.sync(bob, doc_id(2)); // never existed
    let private: Vec<_> = world.received_about(bob, doc_id(1));
    let missing: Vec<_> = world.received_about(bob, doc_id(2));
    assert_eq!(private.len(), 1);
    assert_eq!(missing.len(), 1);
    let Message::DocUnavailable(private) = private[0] else {
        panic!("expected doc-unavailable");
    };
    let Message::DocUnavailable(missing) = missing[0] else {
        panic!("expected doc-unavailable");
    };
    assert_eq!(private.sender_id, missing.sender_id);
    assert_eq!(private.target_id, missing.target_id);
    assert_eq!(world.value(bob, doc_id(1), "secret"), None);
}

#[test]
fn a_change_reaches_every_other_peer_with_the_document_open() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "n", 1);
    world.make_public(ada, doc_id(1));
    world.sync(ada, doc_id(1));
    let bob = world.connect("bob", None);
    let cy = world.connect("cy", None);
    world.sync(bob, doc_id(1));
    world.sync(cy, doc_id(1));
    assert_eq!(world.value(bob, doc_id(1), "n"), Some(1));

    // Step: Bob edits; Ada and Cy get it without asking.
    world.edit(bob, doc_id(1), "n", 2);
    world.sync(bob, doc_id(1));
    assert_eq!(world.value(ada, doc_id(1), "n"), Some(2));
    assert_eq!(world.value(cy, doc_id(1), "n"), Some(2));
}

#[test]
fn readers_in_the_same_sync_state_share_one_generated_message_and_all_get_the_change() {
    let mut world = World::new();
    let writer = world.connect("ada", None);
    world.edit(writer, doc_id(1), "n", 1);
    world.make_public(writer, doc_id(1));
    world.sync(writer, doc_id(1));
    let readers: Vec<usize> = (0..6).map(|_| world.connect("bob", None)).collect();
    for &reader in &readers {
        world.sync(reader, doc_id(1));
    }
    let generated = world.engine.sync_messages_generated();
    world.edit(writer, doc_id(1), "n", 2);
    world.sync(writer, doc_id(1));
    for &reader in &readers {
        assert_eq!(world.value(reader, doc_id(1), "n"), Some(2));
    }
    let per_round = world.engine.sync_messages_generated() - generated;
    assert!(
        per_round < readers.len() as u64,
        "{per_round} messages generated for {} readers in one state",
        readers.len()
    );
}

#[test]
fn nothing_is_acknowledged_or_relayed_before_the_write_is_durable() {
    let mut world = World::new();
    let phone = world.connect("ada", None);
    world.edit(phone, doc_id(1), "n", 1);
    world.sync(phone, doc_id(1));
    let laptop = world.connect("ada", None);
    world.sync(laptop, doc_id(1));

    world.writes_are_durable_at_once = false;
    world.edit(phone, doc_id(1), "n", 2);
    world.sync(phone, doc_id(1));
    let heads_with_change = world.heads(phone, doc_id(1));
    let shared = &world.clients[phone].docs[&doc_id(1)].1.shared_heads;
    assert_ne!(shared, &heads_with_change, "acknowledged before durable");
    assert_eq!(
        world.value(laptop, doc_id(1), "n"),
        Some(1),
        "relayed before durable"
    );
    assert_eq!(world.held_writes.len(), 1);

    world.release_writes();
    assert_eq!(
        world.clients[phone].docs[&doc_id(1)].1.shared_heads,
        heads_with_change
    );
    assert_eq!(world.value(laptop, doc_id(1), "n"), Some(2));
}

#[test]
fn what_the_policy_stores_for_an_accepted_message_goes_in_the_write_of_its_changes() {
    let mut world = World::new();
    let phone = world.connect("ada", None);
    world.edit(phone, doc_id(1), "n", 1);
    world.writes_are_durable_at_once = false;
    world.sync(phone, doc_id(1));
    let (_, writes) = &world.held_writes[0];
    let keys: Vec<&str> = writes
        .iter()
        .map(|write| match write {
            StorageWrite::Put { key, .. } | StorageWrite::Delete { key } => key.as_str(),
        })
        .collect();
    assert!(keys.contains(&verdict_key(&doc_id(1), "ada").as_str()));
    assert!(keys.contains(&storage::meta_key(&doc_id(1)).as_str()));
    world.release_writes();

    let bob = world.connect("bob", None);
    world.edit(bob, doc_id(2), "forbidden", 1);
    world.sync(bob, doc_id(2));
    assert!(!world.store.contains_key(&verdict_key(&doc_id(2), "bob")));
}

#[test]
fn messages_arriving_while_a_write_is_in_flight_wait_and_are_answered_after_it() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "n", 1);
    world.writes_are_durable_at_once = false;
    world.sync(ada, doc_id(1));
    let laptop = world.connect("ada", None);
    world.sync(laptop, doc_id(1));
    assert!(world.received_about(laptop, doc_id(1)).is_empty());
    world.writes_are_durable_at_once = true;
    world.release_writes();
    assert_eq!(world.value(laptop, doc_id(1), "n"), Some(1));
}

#[test]
fn a_refused_change_is_neither_stored_nor_relayed_and_closes_only_that_connection() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "n", 1);
    world.sync(ada, doc_id(1));
    let laptop = world.connect("ada", None);
    world.sync(laptop, doc_id(1));
    let stored_before = world.stored_keys(doc_id(1));

    world.edit(ada, doc_id(1), "forbidden", 1);
    world.sync(ada, doc_id(1));
    assert_eq!(
        world.clients[ada].closed.clone(),
        Some(format!(
            "refused change to {}: no one may write `forbidden`",
            doc_id(1)
        ))
    );
    assert_eq!(world.stored_keys(doc_id(1)), stored_before);
    assert_eq!(world.value(laptop, doc_id(1), "forbidden"), None);

    // The laptop keeps syncing, and a new device sees no trace of the refusal.
    world.edit(laptop, doc_id(1), "n", 5);
    world.sync(laptop, doc_id(1));
    let tablet = world.connect("ada", None);
    world.sync(tablet, doc_id(1));
    assert_eq!(world.value(tablet, doc_id(1), "n"), Some(5));
    assert_eq!(world.value(tablet, doc_id(1), "forbidden"), None);
}

#[test]
fn a_refused_change_is_undone_without_rebuilding_the_document_from_its_history() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    for n in 0..50 {
        world.edit(ada, doc_id(1), "n", n);
        world.sync(ada, doc_id(1));
    }
    for attempt in 0..5 {
        let mallory = world.connect("ada", None);
        world.sync(mallory, doc_id(1));
        world.edit(mallory, doc_id(1), "forbidden", attempt);
        world.sync(mallory, doc_id(1));
        assert!(world.clients[mallory].closed.is_some());
    }
    assert_eq!(world.engine.rebuilds(), 0);
    world.edit(ada, doc_id(1), "n", 99);
    world.sync(ada, doc_id(1));
    let tablet = world.connect("ada", None);
    world.sync(tablet, doc_id(1));
    assert_eq!(world.value(tablet, doc_id(1), "n"), Some(99));
    assert_eq!(world.value(tablet, doc_id(1), "forbidden"), None);
}

#[test]
fn a_change_the_policy_panics_on_is_refused_and_everyone_else_keeps_syncing() {
    let mut world = World::new();
    let (phone, laptop, bob) = three_readers(&mut world);
    world.edit(bob, doc_id(1), "panic", 1);
    world.sync(bob, doc_id(1));
    let reason = world.clients[bob].closed.clone().unwrap_or_default();
    assert!(reason.contains("could not be judged"), "{reason}");
    world.edit(phone, doc_id(1), "n", 7);
    world.sync(phone, doc_id(1));
    world.sync(laptop, doc_id(1));
    assert_eq!(world.value(laptop, doc_id(1), "n"), Some(7));
    assert_eq!(world.value(laptop, doc_id(1), "panic"), None);
}

#[test]
fn a_refused_creation_leaves_no_document() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "forbidden", 1);
    world.sync(ada, doc_id(1));
    assert!(world.clients[ada].closed.is_some());
    assert!(world.stored_keys(doc_id(1)).is_empty());
    let other = world.connect("ada", None);
    world.sync(other, doc_id(1));
    assert!(is_unavailable(world.received_about(other, doc_id(1))[0]));
}

#[test]
fn concurrent_offline_edits_converge_with_both_changes() {
    let mut world = World::new();
    let phone = world.connect("ada", None);
    world.edit(phone, doc_id(1), "start", 0);
    world.sync(phone, doc_id(1));
    let laptop = world.connect("ada", None);
    world.sync(laptop, doc_id(1));

    // Both edit while offline (nothing sent), then reconnect and sync.
    world.edit(phone, doc_id(1), "phone", 1);
    world.edit(laptop, doc_id(1), "laptop", 2);
    world.sync(phone, doc_id(1));
    world.sync(laptop, doc_id(1));
    assert_eq!(
        world.heads(phone, doc_id(1)),
        world.heads(laptop, doc_id(1))
    );
    assert_eq!(world.value(phone, doc_id(1), "laptop"), Some(2));
    assert_eq!(world.value(laptop, doc_id(1), "phone"), Some(1));
}

#[test]
fn an_idle_document_is_evicted_and_reloads_from_the_store() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "n", 7);
    world.sync(ada, doc_id(1));
    world.disconnect(ada);
    world.now += 5_000;
    world.input(Input::Tick);
    assert_eq!(world.engine.resident_documents(), 0);

    let again = world.connect("ada", None);
    world.sync(again, doc_id(1));
    assert_eq!(world.value(again, doc_id(1), "n"), Some(7));
}

#[test]
fn compaction_keeps_every_change_loadable() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    for n in 0..10 {
        world.edit(ada, doc_id(1), "n", n);
        world.sync(ada, doc_id(1));
    }
    let keys = world.stored_keys(doc_id(1));
    assert!(keys.iter().any(|key| key.contains("/s/")), "{keys:?}");
    world.disconnect(ada);
    world.now += 5_000;
    world.input(Input::Tick);
    let reader = world.connect("ada", None);
    world.sync(reader, doc_id(1));
    assert_eq!(world.value(reader, doc_id(1), "n"), Some(9));
}

#[test]
fn a_devices_sync_state_is_stored_on_disconnect_and_reused_on_reconnect() {
    let mut world = World::new();
    let phone = world.connect("ada", Some("phone-store"));
    world.edit(phone, doc_id(1), "n", 1);
    world.sync(phone, doc_id(1));
    world.disconnect(phone);
    let key = storage::sync_state_key(&doc_id(1), "ada", &StorageId::new("phone-store"));
    let stored = sync::State::decode(&world.store[&key][8..]).unwrap();
    assert_eq!(stored.shared_heads, world.heads(phone, doc_id(1)));
}

#[test]
fn a_device_that_reconnects_gets_what_was_sent_to_its_lost_connection() {
    let mut world = World::new();
    let phone = world.connect("ada", Some("phone-store"));
    world.edit(phone, doc_id(1), "n", 1);
    world.sync(phone, doc_id(1));
    let laptop = world.connect("ada", None);
    world.sync(laptop, doc_id(1));

    // The phone loses its network without the socket closing: what the
    // server relays now never arrives.
    world.clients[phone].online = false;
    world.edit(laptop, doc_id(1), "n", 2);
    world.sync(laptop, doc_id(1));
    world.disconnect(phone);

    let again = world.connect("ada", Some("phone-store"));
    let (doc, _) = world.clients[phone].docs[&doc_id(1)].clone();
    world.clients[again]
        .docs
        .insert(doc_id(1), (doc, sync::State::new()));
    world.sync(again, doc_id(1));
    assert_eq!(world.value(again, doc_id(1), "n"), Some(2));
}

#[test]
fn ephemeral_messages_reach_the_other_readers_once() {
    let mut world = World::new();
    let phone = world.connect("ada", None);
    world.edit(phone, doc_id(1), "n", 1);
    world.sync(phone, doc_id(1));
    let laptop = world.connect("ada", None);
    world.sync(laptop, doc_id(1));
    let stranger = world.connect("bob", None);
    world.sync(stranger, doc_id(1));
    assert!(is_unavailable(world.received_about(stranger, doc_id(1))[0]));

    world.send_ephemeral(phone, doc_id(1), 1);
    world.send_ephemeral(phone, doc_id(1), 1); // echoed back: a repeat
    let relayed: Vec<_> = world
        .received_about(laptop, doc_id(1))
        .into_iter()
        .filter(|message| matches!(message, Message::Ephemeral(_)))
        .collect();
    assert_eq!(relayed.len(), 1);
    let Message::Ephemeral(relayed) = relayed[0] else {
        unreachable!()
    };
    assert_eq!(relayed.sender_id, PeerId::new("peer-0"));
    assert_eq!(relayed.target_id, PeerId::new("peer-1"));
    assert!(
        !world
            .received_about(stranger, doc_id(1))
            .iter()
            .any(|message| matches!(message, Message::Ephemeral(_)))
    );
    assert!(
        !world
            .received_about(phone, doc_id(1))
            .iter()
            .any(|message| matches!(message, Message::Ephemeral(_)))
    );
}

#[test]
fn a_device_that_asked_before_the_document_existed_gets_it_once_created() {
    let mut world = World::new();
    let laptop = world.connect("ada", None);
    world.sync(laptop, doc_id(1));
    assert!(is_unavailable(world.received_about(laptop, doc_id(1))[0]));
    let stranger = world.connect("bob", None);
    world.sync(stranger, doc_id(1));

    let phone = world.connect("ada", None);
    world.edit(phone, doc_id(1), "n", 3);
    world.sync(phone, doc_id(1));
    assert_eq!(world.value(laptop, doc_id(1), "n"), Some(3));
    assert_eq!(world.value(stranger, doc_id(1), "n"), None);
}

#[test]
fn a_failed_write_acknowledges_nothing_and_closes_the_documents_peers() {
    let mut world = World::new();
    let phone = world.connect("ada", None);
    world.edit(phone, doc_id(1), "n", 1);
    world.writes_are_durable_at_once = false;
    world.sync(phone, doc_id(1));
    let (write, _) = world.held_writes.pop().unwrap();
    world.input(Input::WriteFailed {
        write,
        reason: "disk full".into(),
    });
    assert!(
        world.clients[phone]
            .closed
            .as_deref()
            .unwrap()
            .contains("disk full")
    );
    assert!(
        world.clients[phone].docs[&doc_id(1)]
            .1
            .shared_heads
            .is_empty()
    );
}

#[test]
fn an_undecodable_automerge_sync_message_closes_the_connection() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    let connection = world.clients[ada].connection.clone();
    world.input(Input::Message {
        connection: connection.clone(),
        message: DocumentMessage::Sync(DocMessage {
            sender_id: connection.peer_id.clone(),
            target_id: PeerId::new(SERVER),
            document_id: doc_id(1),
            data: vec![0x42, 0xff, 0xff],
        }),
    });
    assert!(world.clients[ada].closed.is_some());
    assert!(world.stored_keys(doc_id(1)).is_empty());
}

#[test]
fn changes_that_arrive_during_a_write_share_the_next_write() {
    let mut world = World::new();
    let phone = world.connect("ada", None);
    world.edit(phone, doc_id(1), "phone", 0);
    world.sync(phone, doc_id(1));
    let laptop = world.connect("ada", None);
    let tablet = world.connect("ada", None);
    world.sync(laptop, doc_id(1));
    world.sync(tablet, doc_id(1));

    world.writes_are_durable_at_once = false;
    world.edit(phone, doc_id(1), "phone", 1);
    world.sync(phone, doc_id(1));
    world.edit(laptop, doc_id(1), "laptop", 1);
    world.sync(laptop, doc_id(1));
    world.edit(tablet, doc_id(1), "tablet", 1);
    world.sync(tablet, doc_id(1));
    assert_eq!(
        world.held_writes.len(),
        1,
        "one write in flight; the rest wait"
    );

    world.release_writes();
    assert_eq!(
        world.held_writes.len(),
        1,
        "the waiting changes share one write"
    );
    let chunks = world.held_writes[0]
        .1
        .iter()
        .filter(|write| matches!(write, StorageWrite::Put { key, .. } if key.contains("/c/")))
        .count();
    assert_eq!(chunks, 2);

    world.writes_are_durable_at_once = true;
    world.release_writes();
    for client in [phone, laptop, tablet] {
        assert_eq!(world.value(client, doc_id(1), "phone"), Some(1));
        assert_eq!(world.value(client, doc_id(1), "laptop"), Some(1));
        assert_eq!(world.value(client, doc_id(1), "tablet"), Some(1));
    }
}

#[test]
fn a_server_edit_creates_the_document_with_the_server_actor_and_answers_once_durable() {
    let mut world = World::new();
    world.writes_are_durable_at_once = false;
    world.input(Input::Edit {
        document_id: doc_id(1),
        edit: server_edit("n", 5, 7),
    });
    let done = |world: &World| {
        world
            .effects_matching(|e| matches!(e, Effect::EditDone { ticket: 7, .. }))
            .len()
    };
    assert_eq!(done(&world), 0, "not before the write is durable");
    world.release_writes();
    assert_eq!(done(&world), 1);
    assert!(world.log.contains(&Effect::EditDone {
        ticket: 7,
        result: Ok(())
    }));

    let ada = world.connect("ada", None);
    world.sync(ada, doc_id(1));
    assert_eq!(world.value(ada, doc_id(1), "n"), Some(5));
    let (doc, _) = &world.clients[ada].docs[&doc_id(1)];
    let change = doc.get_changes(&[]).into_iter().next().unwrap();
    assert_eq!(change.actor_id(), &ActorId::from([0xee; 16]));
}

#[test]
fn a_server_edit_reaches_the_peers_that_have_the_document_open() {
    let mut world = World::new();
    world.input(Input::Edit {
        document_id: doc_id(1),
        edit: server_edit("n", 1, 1),
    });
    let ada = world.connect("ada", None);
    world.sync(ada, doc_id(1));
    world.input(Input::Edit {
        document_id: doc_id(1),
        edit: server_edit("n", 2, 2),
    });
    assert_eq!(world.value(ada, doc_id(1), "n"), Some(2));
}

#[test]
fn an_edit_that_changes_nothing_is_answered_at_once_and_stores_nothing() {
    let mut world = World::new();
    world.input(Input::Edit {
        document_id: doc_id(1),
        edit: LocalEdit {
            creator: SERVER.to_string(),
            apply: Box::new(|_| Ok(())),
            ticket: Some(3),
        },
    });
    assert!(world.log.contains(&Effect::EditDone {
        ticket: 3,
        result: Ok(())
    }));
    assert!(world.stored_keys(doc_id(1)).is_empty());
}

#[test]
fn durable_client_changes_are_summarized_and_leave_a_changed_marker() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "n", 1);
    world.edit(ada, doc_id(1), "m", 1);
    world.sync(ada, doc_id(1));
    assert!(world.log.contains(&Effect::Summary {
        document_id: doc_id(1),
        summary: 2
    }));
    assert!(world.store.contains_key(&storage::changed_key(&doc_id(1))));
}

#[test]
fn every_durable_round_is_summarized_from_the_changes_since_the_last() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "first", 0);
    world.make_public(ada, doc_id(1));
    world.sync(ada, doc_id(1));
    let bob = world.connect("bob", None);
    world.sync(bob, doc_id(1));
    for round in 0..4 {
        let writer = if round % 2 == 0 { ada } else { bob };
        world.edit(writer, doc_id(1), &format!("key{round}"), round);
        world.sync(writer, doc_id(1));
    }
    world.compact(doc_id(1));
    world.edit(ada, doc_id(1), "last", 1);
    world.sync(ada, doc_id(1));
    let summaries: Vec<usize> = world
        .effects_matching(|effect| matches!(effect, Effect::Summary { .. }))
        .into_iter()
        .map(|effect| match effect {
            Effect::Summary { summary, .. } => *summary,
            _ => unreachable!(),
        })
        .collect();
    // `first` and `public`, then four keys, then `last`: a summary for every
    // round, none lost to a memo that missed a change (the policy checks).
    assert_eq!(summaries, vec![2, 3, 4, 5, 6, 7]);
}

#[test]
fn describe_summarizes_a_stored_document_after_loading_it() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "n", 1);
    world.sync(ada, doc_id(1));
    world.disconnect(ada);
    world.now += 5_000;
    world.input(Input::Tick);
    world.log.clear();
    world.input(Input::Describe {
        document_id: doc_id(1),
    });
    assert_eq!(
        world.log.last(),
        Some(&Effect::Summary {
            document_id: doc_id(1),
            summary: 1
        })
    );
}

#[test]
fn a_change_is_acknowledged_even_when_a_message_with_the_same_heads_arrives_before_it_is_stored() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "n", 1);
    world.sync(ada, doc_id(1));
    world.writes_are_durable_at_once = false;
    world.edit(ada, doc_id(1), "n", 2);
    world.sync(ada, doc_id(1));
    // Before the change is durable, the client says again that it has it
    // (a message without changes, carrying its heads).
    let (doc, _) = &world.clients[ada].docs[&doc_id(1)];
    let again = doc.generate_sync_message(&mut sync::State::new()).unwrap();
    let connection = world.clients[ada].connection.clone();
    world.input(Input::Message {
        connection: connection.clone(),
        message: DocumentMessage::Sync(DocMessage {
            sender_id: connection.peer_id.clone(),
            target_id: PeerId::new(SERVER),
            document_id: doc_id(1),
            data: again.encode(),
        }),
    });
    world.writes_are_durable_at_once = true;
    world.release_writes();
    let heads = world.heads(ada, doc_id(1));
    let (_, state) = &world.clients[ada].docs[&doc_id(1)];
    assert_eq!(
        state.shared_heads, heads,
        "the server never said it stored the change"
    );
}

#[test]
fn changes_from_someone_who_lost_access_are_judged_stored_if_allowed_and_answered_as_missing() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "n", 1);
    world.make_public(ada, doc_id(1));
    world.sync(ada, doc_id(1));
    let bob = world.connect("bob", None);
    world.sync(bob, doc_id(1));
    assert_eq!(world.value(bob, doc_id(1), "n"), Some(1));
    // Bob goes offline and writes; meanwhile Ada makes the document private.
    world.disconnect(bob);
    world.edit(bob, doc_id(1), "b", 7);
    {
        let (doc, _) = world.clients[ada].docs.get_mut(&doc_id(1)).unwrap();
        let mut tx = doc.transaction();
        tx.put(ROOT, "public", false).unwrap();
        tx.commit();
    }
    world.sync(ada, doc_id(1));
    let bob = world.connect("bob", None);
    {
        let old = world.clients[bob - 1].docs.remove(&doc_id(1)).unwrap();
        world.clients[bob]
            .docs
            .insert(doc_id(1), (old.0, sync::State::new()));
    }
    world.sync(bob, doc_id(1));
    // Bob hears what he would hear of a document the server lacks: a request
    // for his changes with no heads or changes of ours, then doc-unavailable.
    let answers = world.received_about(bob, doc_id(1));
    for answer in &answers {
        if let Message::Sync(sync_message) = answer {
            let decoded = sync::Message::decode(&sync_message.data).unwrap();
            assert!(decoded.heads.is_empty() && decoded.changes.is_empty());
        } else {
            assert!(is_unavailable(answer), "{answer:?}");
        }
    }
    assert!(answers.iter().any(|m| is_unavailable(m)));
    assert_eq!(
        world.value(ada, doc_id(1), "b"),
        Some(7),
        "the allowed change landed"
    );
    // A refused one is dropped, and the connection closed without naming
    // any rule of the document.
    world.edit(bob, doc_id(1), "forbidden", 1);
    world.sync(bob, doc_id(1));
    let reason = world.clients[bob].closed.clone().unwrap_or_default();
    assert!(
        reason.contains("unavailable") && !reason.contains("forbidden"),
        "{reason}"
    );
    assert_eq!(world.value(ada, doc_id(1), "forbidden"), None);
}

#[test]
fn changes_waiting_for_their_dependencies_land_once_those_arrive() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "n", 1);
    world.sync(ada, doc_id(1));
    // Two changes; the second reaches the server first.
    let (doc, _) = world.clients[ada].docs.get_mut(&doc_id(1)).unwrap();
    let mut tx = doc.transaction();
    tx.put(ROOT, "first", 1).unwrap();
    tx.commit();
    let first = doc.get_last_local_change().unwrap().clone();
    let mut tx = doc.transaction();
    tx.put(ROOT, "second", 2).unwrap();
    tx.commit();
    let second = doc.get_last_local_change().unwrap().clone();
    let heads = doc.get_heads();
    let connection = world.clients[ada].connection.clone();
    for change in [second, first] {
        let message = sync::Message {
            heads: heads.clone(),
            need: Vec::new(),
            have: Vec::new(),
            changes: vec![change.raw_bytes().to_vec()].into(),
            flags: None,
            version: sync::MessageVersion::V1,
        };
        world.input(Input::Message {
            connection: connection.clone(),
            message: DocumentMessage::Sync(DocMessage {
                sender_id: connection.peer_id.clone(),
                target_id: PeerId::new(SERVER),
                document_id: doc_id(1),
                data: message.encode(),
            }),
        });
    }
    let laptop = world.connect("ada", None);
    world.sync(laptop, doc_id(1));
    assert_eq!(world.value(laptop, doc_id(1), "second"), Some(2));
}

impl World {
    /// Client `client` sends `document` an ephemeral as the stock client
    /// would: its own sender id unless `sender` names another.
    fn send_ephemeral_as(
        &mut self,
        client: usize,
        document: DocumentId,
        sender: Option<&str>,
        session: &str,
        count: u64,
        data: Vec<u8>,
    ) {
        let connection = self.clients[client].connection.clone();
        let message = DocumentMessage::Ephemeral(Ephemeral {
            sender_id: sender.map_or(connection.peer_id.clone(), PeerId::new),
            target_id: PeerId::new(SERVER),
            document_id: document,
            data,
            count,
            session_id: session.into(),
        });
        self.input(Input::Message {
            connection,
            message,
        });
    }

    fn ephemerals_received(&self, client: usize, document: DocumentId) -> usize {
        self.received_about(client, document)
            .into_iter()
            .filter(|message| matches!(message, Message::Ephemeral(_)))
            .count()
    }

    /// Sends `changes` from `client` in one sync message with `heads`.
    fn send_changes(
        &mut self,
        client: usize,
        document: DocumentId,
        heads: Vec<ChangeHash>,
        changes: &[automerge::Change],
    ) {
        let message = sync::Message {
            heads,
            need: Vec::new(),
            have: Vec::new(),
            changes: changes
                .iter()
                .map(|change| change.raw_bytes().to_vec())
                .collect::<Vec<_>>()
                .into(),
            flags: None,
            version: sync::MessageVersion::V1,
        };
        let connection = self.clients[client].connection.clone();
        self.input(Input::Message {
            connection: connection.clone(),
            message: DocumentMessage::Sync(DocMessage {
                sender_id: connection.peer_id.clone(),
                target_id: PeerId::new(SERVER),
                document_id: document,
                data: message.encode(),
            }),
        });
    }
}

/// Three readers of one public document: ada's phone, ada's laptop, bob.
fn three_readers(world: &mut World) -> (usize, usize, usize) {
    let phone = world.connect("ada", None);
    world.edit(phone, doc_id(1), "n", 1);
    world.make_public(phone, doc_id(1));
    world.sync(phone, doc_id(1));
    let laptop = world.connect("ada", None);
    world.sync(laptop, doc_id(1));
    let bob = world.connect("bob", None);
    world.sync(bob, doc_id(1));
    (phone, laptop, bob)
}

/// A change by `actor` on top of `deps` that nobody else has.
fn change_on(deps_doc: &Automerge, actor: u8, key: &str) -> automerge::Change {
    let mut doc = deps_doc.fork().with_actor(ActorId::from(vec![actor; 16]));
    let mut tx = doc.transaction();
    tx.put(ROOT, key, i64::from(actor)).unwrap();
    tx.commit_with(CommitOptions::default().with_time(0));
    doc.get_last_local_change().unwrap().clone()
}

#[test]
fn ephemeral_over_the_size_limit_closes_only_its_sender() {
    let mut world = World::with_config(|config| config.ephemeral_max_bytes = 1_000);
    let (phone, laptop, bob) = three_readers(&mut world);
    world.send_ephemeral_as(phone, doc_id(1), None, "s", 1, vec![0x40; 1_001]);
    let reason = world.clients[phone].closed.clone().unwrap_or_default();
    assert!(reason.contains("ephemeral_max_bytes"), "{reason}");
    assert_eq!(world.ephemerals_received(laptop, doc_id(1)), 0);
    assert!(world.clients[laptop].closed.is_none() && world.clients[bob].closed.is_none());
}

#[test]
fn a_small_ephemeral_still_reaches_every_other_reader() {
    let mut world = World::with_config(|config| config.ephemeral_max_bytes = 1_000);
    let (phone, laptop, bob) = three_readers(&mut world);
    world.send_ephemeral_as(phone, doc_id(1), None, "s", 1, vec![0x40; 1_000]);
    assert_eq!(world.ephemerals_received(laptop, doc_id(1)), 1);
    assert_eq!(world.ephemerals_received(bob, doc_id(1)), 1);
    assert!(world.clients[phone].closed.is_none());
}

#[test]
fn an_ephemeral_session_id_over_the_limit_closes_its_sender() {
    let mut world = World::new();
    let (phone, laptop, _) = three_readers(&mut world);
    world.send_ephemeral_as(phone, doc_id(1), None, &"s".repeat(65), 1, vec![0xa0]);
    let reason = world.clients[phone].closed.clone().unwrap_or_default();
    assert!(reason.contains("sessionId"), "{reason}");
    assert_eq!(world.ephemerals_received(laptop, doc_id(1)), 0);
}

#[test]
fn ephemerals_beyond_the_rate_close_their_sender() {
    let mut world = World::with_config(|config| {
        config.ephemeral_burst = 3;
        config.ephemeral_per_second = 1;
    });
    let (phone, laptop, _) = three_readers(&mut world);
    for count in 1..=3 {
        world.send_ephemeral_as(phone, doc_id(1), None, "s", count, vec![0xa0]);
    }
    assert!(world.clients[phone].closed.is_none());
    // A second later one more token is there; the one after it is not.
    world.now += 1_000;
    world.send_ephemeral_as(phone, doc_id(1), None, "s", 4, vec![0xa0]);
    assert!(world.clients[phone].closed.is_none());
    world.send_ephemeral_as(phone, doc_id(1), None, "s", 5, vec![0xa0]);
    let reason = world.clients[phone].closed.clone().unwrap_or_default();
    assert!(reason.contains("ephemeral_per_second"), "{reason}");
    assert_eq!(world.ephemerals_received(laptop, doc_id(1)), 4);
}

#[test]
fn a_users_ephemeral_bytes_are_bounded_across_reconnects() {
    let mut world = World::with_config(|config| {
        config.ephemeral_bytes_burst = 3_000;
        config.ephemeral_bytes_per_second = 1_000;
    });
    let (phone, laptop, _) = three_readers(&mut world);
    for count in 1..=3 {
        world.send_ephemeral_as(phone, doc_id(1), None, "s", count, vec![0xa0; 1_000]);
    }
    assert!(world.clients[phone].closed.is_none());
    world.send_ephemeral_as(phone, doc_id(1), None, "s", 4, vec![0xa0; 1_000]);
    let reason = world.clients[phone].closed.clone().unwrap_or_default();
    assert!(reason.contains("ephemeral_bytes_per_second"), "{reason}");
    // A new connection of the same user finds the budget still spent...
    let again = world.connect("ada", None);
    world.sync(again, doc_id(1));
    world.send_ephemeral_as(again, doc_id(1), None, "t", 1, vec![0xa0; 1_000]);
    assert!(world.clients[again].closed.is_some());
    // ...and a second later there is a second's worth again.
    world.now += 1_000;
    let later = world.connect("ada", None);
    world.sync(later, doc_id(1));
    world.send_ephemeral_as(later, doc_id(1), None, "u", 1, vec![0xa0; 1_000]);
    assert!(world.clients[later].closed.is_none());
    assert_eq!(world.ephemerals_received(laptop, doc_id(1)), 4);
}

#[test]
fn a_relayed_ephemeral_is_encoded_once_and_its_bytes_shared_between_readers() {
    let mut world = World::new();
    let (phone, _, _) = three_readers(&mut world);
    world.send_ephemeral_as(phone, doc_id(1), None, "s", 1, vec![0x40; 4_000]);
    let frames: Vec<_> = world
        .log
        .iter()
        .filter_map(|effect| match effect {
            Effect::SendFrame { frame, .. } => Some(frame),
            _ => None,
        })
        .collect();
    assert_eq!(frames.len(), 2);
    assert!(frames[0].shares_body_with(frames[1]));
}

#[test]
fn a_forwarded_copy_of_an_ephemeral_is_accepted_and_never_relayed_again() {
    let mut world = World::new();
    let (phone, laptop, bob) = three_readers(&mut world);
    world.send_ephemeral_as(phone, doc_id(1), None, "s", 1, vec![0xa0]);
    // The stock client passes what it received on to us under the original
    // sender's id, and so would a forger with a count never seen.
    world.send_ephemeral_as(laptop, doc_id(1), Some("peer-0"), "s", 1, vec![0xa0]);
    world.send_ephemeral_as(bob, doc_id(1), Some("peer-0"), "s", 99, vec![0xa0]);
    assert_eq!(world.ephemerals_received(laptop, doc_id(1)), 1);
    assert_eq!(world.ephemerals_received(bob, doc_id(1)), 1);
    assert_eq!(world.ephemerals_received(phone, doc_id(1)), 0);
    assert!(world.clients.iter().all(|client| client.closed.is_none()));
}

#[test]
fn the_ephemeral_repeat_map_forgets_the_oldest_source_beyond_its_cap() {
    let mut world = World::with_config(|config| config.ephemeral_sources_per_document = 2);
    let (phone, laptop, _) = three_readers(&mut world);
    for (at, session) in ["a", "b", "c"].into_iter().enumerate() {
        world.now = at as u64;
        world.send_ephemeral_as(phone, doc_id(1), None, session, 1, vec![0xa0]);
    }
    // "b" is still remembered (a repeat is dropped); "a" was forgotten.
    world.send_ephemeral_as(phone, doc_id(1), None, "b", 1, vec![0xa0]);
    assert_eq!(world.ephemerals_received(laptop, doc_id(1)), 3);
    world.send_ephemeral_as(phone, doc_id(1), None, "a", 1, vec![0xa0]);
    assert_eq!(world.ephemerals_received(laptop, doc_id(1)), 4);
}

#[test]
fn held_changes_survive_another_connections_messages_and_land_when_their_deps_arrive() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "n", 1);
    world.make_public(ada, doc_id(1));
    world.sync(ada, doc_id(1));
    let (doc, _) = world.clients[ada].docs[&doc_id(1)].clone();
    let first = change_on(&doc, 0x31, "first");
    let mut with_first = doc.fork();
    with_first.apply_changes([first.clone()]).unwrap();
    let second = change_on(&with_first, 0x31, "second");
    let heads = vec![second.hash()];
    world.send_changes(ada, doc_id(1), heads.clone(), std::slice::from_ref(&second));
    // Another reader syncs in between (today that dropped ada's change).
    let bob = world.connect("bob", None);
    world.edit(bob, doc_id(1), "other", 1);
    world.sync(bob, doc_id(1));
    world.send_changes(ada, doc_id(1), heads, std::slice::from_ref(&first));
    let laptop = world.connect("ada", None);
    world.sync(laptop, doc_id(1));
    assert_eq!(world.value(laptop, doc_id(1), "second"), Some(0x31));
    assert_eq!(world.engine.rebuilds(), 0);
}

#[test]
fn alternating_connections_with_missing_deps_force_no_rebuild_and_are_closed_past_the_bound() {
    let mut world = World::with_config(|config| config.max_held_bytes_per_connection = 2_000);
    let honest = world.connect("ada", None);
    world.edit(honest, doc_id(1), "n", 1);
    world.make_public(honest, doc_id(1));
    world.sync(honest, doc_id(1));
    let attackers = [world.connect("bob", None), world.connect("cy", None)];
    for attacker in attackers {
        world.sync(attacker, doc_id(1));
    }
    let nowhere = Automerge::new();
    for round in 0..40u8 {
        let attacker = attackers[usize::from(round % 2)];
        if world.clients[attacker].closed.is_some() {
            continue;
        }
        // A change that depends on a change nobody has.
        let missing = change_on(&nowhere, 0x70 + round, "missing");
        let mut base = Automerge::new();
        base.apply_changes([missing]).unwrap();
        let orphan = change_on(&base, 0x70 + round, &"x".repeat(200));
        world.send_changes(attacker, doc_id(1), vec![orphan.hash()], &[orphan]);
        // The honest writer's change is acknowledged in the same round.
        world.edit(honest, doc_id(1), "n", i64::from(round) + 2);
        world.sync(honest, doc_id(1));
        assert_eq!(
            world.clients[honest].docs[&doc_id(1)].1.shared_heads,
            world.heads(honest, doc_id(1)),
            "round {round}"
        );
    }
    for attacker in attackers {
        let reason = world.clients[attacker].closed.clone().unwrap_or_default();
        assert!(
            reason.contains("before the changes they depend on"),
            "{reason}"
        );
    }
    assert!(world.clients[honest].closed.is_none());
    assert_eq!(world.engine.rebuilds(), 0);
}

#[test]
fn a_storage_id_names_only_its_own_users_sync_state() {
    let mut world = World::new();
    let phone = world.connect("ada", Some("phone-store"));
    world.edit(phone, doc_id(1), "n", 1);
    world.make_public(phone, doc_id(1));
    world.sync(phone, doc_id(1));
    world.disconnect(phone);
    let adas = storage::sync_state_key(&doc_id(1), "ada", &StorageId::new("phone-store"));
    let saved = world.store[&adas].clone();

    // Bob names ada's storage id: he neither starts from her state nor
    // overwrites it.
    let bob = world.connect("bob", Some("phone-store"));
    world.sync(bob, doc_id(1));
    world.disconnect(bob);
    assert_eq!(world.store[&adas], saved);
    let bobs = storage::sync_state_key(&doc_id(1), "bob", &StorageId::new("phone-store"));
    assert!(world.store.contains_key(&bobs));
}

#[test]
fn stored_sync_states_per_document_are_capped_dropping_the_oldest() {
    let mut world = World::with_config(|config| config.max_sync_states_per_document = 2);
    let phone = world.connect("ada", Some("store-0"));
    world.edit(phone, doc_id(1), "n", 1);
    world.sync(phone, doc_id(1));
    world.disconnect(phone);
    for n in 1..=2 {
        world.now += 1;
        let device = world.connect("ada", Some(&format!("store-{n}")));
        world.sync(device, doc_id(1));
        world.disconnect(device);
    }
    let states: Vec<String> = world
        .stored_keys(doc_id(1))
        .into_iter()
        .filter(|key| key.contains("/sync/"))
        .collect();
    assert_eq!(states.len(), 2, "{states:?}");
    let oldest = storage::sync_state_key(&doc_id(1), "ada", &StorageId::new("store-0"));
    assert!(!states.contains(&oldest));
}

#[test]
fn a_connection_opening_too_many_documents_is_closed() {
    let mut world = World::with_config(|config| config.max_documents_per_connection = 3);
    let ada = world.connect("ada", None);
    for n in 1..=3 {
        world.sync(ada, doc_id(n));
    }
    assert!(world.clients[ada].closed.is_none());
    world.sync(ada, doc_id(4));
    let reason = world.clients[ada].closed.clone().unwrap_or_default();
    assert!(reason.contains("max_documents_per_connection"), "{reason}");
}

#[test]
fn a_slot_for_a_document_nobody_created_is_evicted_and_its_waiter_still_gets_it() {
    let mut world = World::new();
    let laptop = world.connect("ada", None);
    for n in 1..=5 {
        world.sync(laptop, doc_id(n));
    }
    assert_eq!(world.engine.resident_documents(), 5);
    world.now += 1_000;
    world.input(Input::Tick);
    assert_eq!(world.engine.resident_documents(), 0);

    let phone = world.connect("ada", None);
    world.edit(phone, doc_id(1), "n", 3);
    world.sync(phone, doc_id(1));
    assert_eq!(world.value(laptop, doc_id(1), "n"), Some(3));
}

#[test]
fn bytes_waiting_behind_a_write_over_the_limit_close_the_connection() {
    let mut world = World::with_config(|config| config.max_queued_bytes_per_connection = 4_000);
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "n", 1);
    world.sync(ada, doc_id(1));
    world.writes_are_durable_at_once = false;
    let bob = world.connect("ada", None);
    world.edit(bob, doc_id(1), "m", 1);
    world.sync(bob, doc_id(1));
    // While that write is in flight, ada's messages wait in the queue.
    for round in 0..10 {
        world.send_ephemeral_as(ada, doc_id(1), None, "s", round + 1, vec![0x40; 1_000]);
    }
    let reason = world.clients[ada].closed.clone().unwrap_or_default();
    assert!(
        reason.contains("max_queued_bytes_per_connection"),
        "{reason}"
    );
    assert!(world.clients[bob].closed.is_none());
    world.release_writes();
}

#[test]
fn a_version_2_message_of_concatenated_changes_is_split_and_applied() {
    let mut world = World::new();
    let ada = world.connect("ada", None);
    world.edit(ada, doc_id(1), "n", 1);
    world.sync(ada, doc_id(1));
    let (doc, _) = world.clients[ada].docs[&doc_id(1)].clone();
    let first = change_on(&doc, 0x41, "first");
    let mut with_first = doc.fork();
    with_first.apply_changes([first.clone()]).unwrap();
    let second = change_on(&with_first, 0x41, "second");
    let mut joined = first.raw_bytes().to_vec();
    joined.extend_from_slice(second.raw_bytes());
    let message = sync::Message {
        heads: vec![second.hash()],
        need: Vec::new(),
        have: Vec::new(),
        changes: vec![joined].into(),
        flags: None,
        version: sync::MessageVersion::V2,
    };
    let connection = world.clients[ada].connection.clone();
    world.input(Input::Message {
        connection: connection.clone(),
        message: DocumentMessage::Sync(DocMessage {
            sender_id: connection.peer_id.clone(),
            target_id: PeerId::new(SERVER),
            document_id: doc_id(1),
            data: message.encode(),
        }),
    });
    let laptop = world.connect("ada", None);
    world.sync(laptop, doc_id(1));
    assert_eq!(world.value(laptop, doc_id(1), "second"), Some(0x41));
    assert!(world.clients[ada].closed.is_none());
}

#[test]
fn acknowledgements_keep_coming_while_every_write_overlaps_the_next_change() {
    let mut world = World::new();
    let phone = world.connect("ada", None);
    world.edit(phone, doc_id(1), "n", 0);
    world.sync(phone, doc_id(1));
    let laptop = world.connect("ada", None);
    world.sync(laptop, doc_id(1));

    // Step: each write is still flushing when the phone's next change arrives.
    world.writes_are_durable_at_once = false;
    world.edit(phone, doc_id(1), "n", 1);
    world.sync(phone, doc_id(1));
    for n in 2..20 {
        let durable = world.heads(phone, doc_id(1));
        world.edit(phone, doc_id(1), "n", n);
        world.sync(phone, doc_id(1));
        world.release_writes();
        assert_eq!(
            world.clients[phone].docs[&doc_id(1)].1.shared_heads,
            durable,
            "round {n}: the durable change is acknowledged although a newer one is waiting"
        );
        assert_eq!(world.value(laptop, doc_id(1), "n"), Some(n - 1));
    }
}
