//! The engine fed arbitrary message sequences from hostile connections:
//! garbage frames, corrupted sync messages, changes with missing
//! dependencies, refused changes, oversized ephemerals, disconnects, failed
//! writes and time passing. Whatever they send, the engine never panics,
//! stays within its limits, and an honest client that comes afterwards still
//! gets its change stored and acknowledged.
//!
//! Kept to a bounded number of cases so CI runs it on every commit; set
//! `PROPTEST_CASES` for a longer run.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use automerge::sync::{self, ChunkList, MessageVersion, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, ROOT, ReadDoc};
use backchannel_sync::storage::{self, StorageWrite};
use backchannel_sync::{
    Connection, ConnectionId, DocMessage, DocumentId, DocumentMessage, DocumentView, Effect,
    Engine, EngineConfig, Ephemeral, Input, Message, PeerId, Policy, Refusal, StorageId,
};
use proptest::prelude::*;

/// Everyone reads everything; nobody may write a root key `forbidden`.
struct OpenPolicy;

impl Policy for OpenPolicy {
    type User = String;
    type Summary = ();

    fn user_id<'a>(&self, user: &'a String) -> &'a str {
        user
    }

    fn may_read(&self, _user: &String, _document: DocumentView<'_>, _memo: &mut ()) -> bool {
        true
    }

    fn check_changes(
        &self,
        _user: &String,
        document: DocumentView<'_>,
        _before: &[ChangeHash],
        _changes: &[automerge::Change],
        _creating: bool,
    ) -> Result<Vec<StorageWrite>, Refusal> {
        match document.doc.get(ROOT, "forbidden") {
            Ok(Some(_)) => Err(Refusal::new("no one may write `forbidden`")),
            _ => Ok(Vec::new()),
        }
    }

    type Memo = ();

    fn summarize(
        &self,
        _document: DocumentView<'_>,
        _memo: &mut (),
        _changes: &[automerge::Change],
    ) -> Option<()> {
        None
    }
}

const SERVER: &str = "server";
const ATTACKERS: u8 = 3;
const DOCUMENTS: u8 = 4;
const KEYS: [&str; 3] = ["a", "b", "forbidden"];

#[derive(Debug, Clone)]
enum Step {
    /// Any bytes as a frame: decoded as the server would, fed if they are a
    /// document message.
    Frame {
        from: u8,
        bytes: Vec<u8>,
    },
    /// A real change, sent whole (with its dependencies).
    Change {
        from: u8,
        doc: u8,
        key: usize,
        value: i64,
    },
    /// A change whose dependency is never sent.
    Orphan {
        from: u8,
        doc: u8,
        value: i64,
    },
    /// A real sync message with some bytes overwritten.
    Corrupted {
        from: u8,
        doc: u8,
        edits: Vec<(prop::sample::Index, u8)>,
    },
    Request {
        from: u8,
        doc: u8,
    },
    Ephemeral {
        from: u8,
        doc: u8,
        bytes: usize,
        session: usize,
    },
    Disconnect {
        from: u8,
    },
    /// The store refuses the next write.
    FailNextWrite,
    Tick {
        ms: u64,
    },
}

fn arb_step() -> impl Strategy<Value = Step> {
    let from = 0..ATTACKERS;
    let doc = 0..DOCUMENTS;
    prop_oneof![
        1 => (from.clone(), prop::collection::vec(any::<u8>(), 0..256))
            .prop_map(|(from, bytes)| Step::Frame { from, bytes }),
        4 => (from.clone(), doc.clone(), 0..KEYS.len(), any::<i64>())
            .prop_map(|(from, doc, key, value)| Step::Change { from, doc, key, value }),
        2 => (from.clone(), doc.clone(), any::<i64>())
            .prop_map(|(from, doc, value)| Step::Orphan { from, doc, value }),
        1 => (from.clone(), doc.clone(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6))
            .prop_map(|(from, doc, edits)| Step::Corrupted { from, doc, edits }),
        1 => (from.clone(), 0..u8::MAX).prop_map(|(from, doc)| Step::Request { from, doc }),
        1 => (from.clone(), doc, 0..4096usize, 0..100usize)
            .prop_map(|(from, doc, bytes, session)| Step::Ephemeral { from, doc, bytes, session }),
        1 => from.prop_map(|from| Step::Disconnect { from }),
        1 => Just(Step::FailNextWrite),
        1 => (0..5_000u64).prop_map(|ms| Step::Tick { ms }),
    ]
}

struct Peer {
    connection: Arc<Connection<String>>,
    docs: BTreeMap<DocumentId, (Automerge, sync::State)>,
    closed: bool,
}

struct World {
    engine: Engine<OpenPolicy>,
    store: BTreeMap<String, Vec<u8>>,
    peers: Vec<Peer>,
    next_connection: u64,
    now: u64,
    fail_next_write: bool,
}

fn doc_id(n: u8) -> DocumentId {
    DocumentId::from_bytes([n; 16])
}

fn config() -> EngineConfig {
    let mut config = EngineConfig::new(PeerId::new(SERVER), ActorId::from([0xee; 16]));
    config.evict_after_ms = 2_000;
    config.compact_after_chunks = 4;
    config.ephemeral_max_bytes = 1024;
    config.ephemeral_session_id_max_bytes = 32;
    config.max_documents_per_connection = 3;
    config.max_queued_bytes_per_connection = 16 * 1024;
    config.max_held_bytes_per_connection = 8 * 1024;
    config.max_held_bytes_per_document = 12 * 1024;
    config.max_sync_states_per_document = 4;
    config
}

impl World {
    fn new() -> Self {
        let mut world = Self {
            engine: Engine::new(config(), OpenPolicy),
            store: BTreeMap::new(),
            peers: Vec::new(),
            next_connection: 1,
            now: 0,
            fail_next_write: false,
        };
        for index in 0..ATTACKERS {
            world.connect(&format!("attacker-{index}"));
        }
        world
    }

    fn connect(&mut self, user: &str) -> usize {
        let id = self.next_connection;
        self.next_connection += 1;
        let peer = Peer {
            connection: Arc::new(Connection {
                id: ConnectionId(id),
                peer_id: PeerId::new(format!("peer-{id}")),
                user: user.to_string(),
                storage_id: Some(StorageId::new(format!("storage-{id}"))),
                is_ephemeral: false,
            }),
            docs: BTreeMap::new(),
            closed: false,
        };
        self.peers.push(peer);
        self.peers.len() - 1
    }

    /// The attacker's live connection, reconnecting it if the server closed it.
    fn attacker(&mut self, from: u8) -> usize {
        let index = usize::from(from);
        if self.peers[index].closed {
            let fresh = self.connect(&format!("attacker-{from}"));
            self.peers.swap(index, fresh);
            self.peers.pop();
        }
        index
    }

    fn doc_of(&mut self, peer: usize, document: DocumentId) -> &mut (Automerge, sync::State) {
        let actor = ActorId::from(self.peers[peer].connection.id.0.to_be_bytes().to_vec());
        self.peers[peer]
            .docs
            .entry(document)
            .or_insert_with(|| (Automerge::new().with_actor(actor), sync::State::new()))
    }

    fn send(&mut self, peer: usize, message: DocumentMessage) {
        let connection = self.peers[peer].connection.clone();
        self.input(Input::Message {
            connection,
            message,
        });
    }

    fn doc_message(&self, peer: usize, document: DocumentId, data: Vec<u8>) -> DocMessage {
        DocMessage {
            sender_id: self.peers[peer].connection.peer_id.clone(),
            target_id: PeerId::new(SERVER),
            document_id: document,
            data,
        }
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Frame { from, bytes } => {
                let peer = self.attacker(from);
                if let Ok(message) = Message::decode(&bytes)
                    && let Some(message) = DocumentMessage::from_message(message)
                {
                    self.send(peer, message);
                }
            }
            Step::Change {
                from,
                doc,
                key,
                value,
            } => {
                let peer = self.attacker(from);
                let (automerge, _) = self.doc_of(peer, doc_id(doc));
                let mut tx = automerge.transaction();
                tx.put(ROOT, KEYS[key], value).unwrap();
                tx.commit_with(CommitOptions::default().with_time(0));
                self.sync(peer, doc_id(doc));
            }
            Step::Orphan { from, doc, value } => {
                let peer = self.attacker(from);
                let (automerge, _) = self.doc_of(peer, doc_id(doc));
                let mut fork = automerge.fork();
                for step in 0..2 {
                    let mut tx = fork.transaction();
                    tx.put(ROOT, "orphan", value.wrapping_add(step)).unwrap();
                    tx.commit_with(CommitOptions::default().with_time(0));
                }
                let last = fork.get_last_local_change().unwrap().raw_bytes().to_vec();
                let message = sync::Message {
                    heads: fork.get_heads(),
                    need: Vec::new(),
                    have: Vec::new(),
                    changes: ChunkList::from(vec![last]),
                    flags: None,
                    version: MessageVersion::V1,
                };
                let wire = self.doc_message(peer, doc_id(doc), message.encode());
                self.send(peer, DocumentMessage::Sync(wire));
            }
            Step::Corrupted { from, doc, edits } => {
                let peer = self.attacker(from);
                let (automerge, _) = self.doc_of(peer, doc_id(doc));
                let mut tx = automerge.transaction();
                tx.put(ROOT, "a", 1).unwrap();
                tx.commit_with(CommitOptions::default().with_time(0));
                let mut data = automerge
                    .generate_sync_message(&mut sync::State::new())
                    .unwrap()
                    .encode();
                for (at, byte) in edits {
                    let at = at.index(data.len());
                    data[at] = byte;
                }
                let wire = self.doc_message(peer, doc_id(doc), data);
                self.send(peer, DocumentMessage::Sync(wire));
            }
            Step::Request { from, doc } => {
                let peer = self.attacker(from);
                let empty = Automerge::new()
                    .generate_sync_message(&mut sync::State::new())
                    .unwrap();
                let wire = self.doc_message(peer, doc_id(doc), empty.encode());
                self.send(peer, DocumentMessage::Request(wire));
            }
            Step::Ephemeral {
                from,
                doc,
                bytes,
                session,
            } => {
                let peer = self.attacker(from);
                let message = DocumentMessage::Ephemeral(Ephemeral {
                    sender_id: self.peers[peer].connection.peer_id.clone(),
                    target_id: PeerId::new(SERVER),
                    document_id: doc_id(doc),
                    data: vec![0x40; bytes],
                    count: self.now,
                    session_id: "s".repeat(session),
                });
                self.send(peer, message);
            }
            Step::Disconnect { from } => {
                let peer = self.attacker(from);
                self.peers[peer].closed = true;
                let connection = self.peers[peer].connection.id;
                self.input(Input::Disconnected { connection });
            }
            Step::FailNextWrite => self.fail_next_write = true,
            Step::Tick { ms } => {
                self.now += ms;
                self.input(Input::Tick);
            }
        }
    }

    /// The peer sends what it has for `document`, as automerge-repo would.
    fn sync(&mut self, peer: usize, document: DocumentId) {
        let (automerge, state) = self.doc_of(peer, document);
        let Some(message) = automerge.generate_sync_message(state) else {
            return;
        };
        let wire = self.doc_message(peer, document, message.encode());
        self.send(peer, DocumentMessage::Sync(wire));
    }

    fn input(&mut self, input: Input<String>) {
        let mut inputs = vec![input];
        while let Some(input) = inputs.pop() {
            for effect in self.engine.handle(input, self.now) {
                self.carry_out(effect, &mut inputs);
            }
        }
    }

    fn carry_out(&mut self, effect: Effect<()>, inputs: &mut Vec<Input<String>>) {
        match effect {
            Effect::Send {
                connection,
                message,
            } => self.deliver(connection, message, inputs),
            Effect::SendFrame { connection, frame } => {
                let message =
                    Message::decode(&frame.to_vec()).expect("the engine sends valid frames");
                self.deliver(connection, message, inputs);
            }
            Effect::Close { connection, .. } => {
                if let Some(peer) = self.peer_of(connection) {
                    self.peers[peer].closed = true;
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
            Effect::Write { write, writes } => {
                if std::mem::take(&mut self.fail_next_write) {
                    if let Some(write) = write {
                        inputs.push(Input::WriteFailed {
                            write,
                            reason: "disk full".into(),
                        });
                    }
                    return;
                }
                self.apply(writes);
                if let Some(write) = write {
                    inputs.push(Input::Written { write });
                }
            }
            Effect::Compact { document_id } => {
                let prefix = storage::document_prefix(&document_id);
                let entries: Vec<(String, Vec<u8>)> = self
                    .store
                    .range(prefix.clone()..)
                    .take_while(|(key, _)| key.starts_with(&prefix))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                if let Ok(Some(stored)) = storage::assemble(&document_id, entries) {
                    let writes = storage::compaction_writes(
                        &document_id,
                        &stored.doc,
                        &stored.content_keys,
                        &format!("snap-{}", self.now),
                    );
                    self.apply(writes);
                }
            }
            Effect::DocumentChanged { .. } | Effect::Summary { .. } | Effect::EditDone { .. } => {}
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

    fn peer_of(&self, connection: ConnectionId) -> Option<usize> {
        self.peers
            .iter()
            .position(|peer| peer.connection.id == connection && !peer.closed)
    }

    /// A peer receives a message and answers as automerge-repo would.
    fn deliver(
        &mut self,
        connection: ConnectionId,
        message: Message,
        inputs: &mut Vec<Input<String>>,
    ) {
        let Some(peer) = self.peer_of(connection) else {
            return;
        };
        let Message::Sync(message) = message else {
            return;
        };
        let document = message.document_id;
        let (automerge, state) = self.doc_of(peer, document);
        let decoded =
            sync::Message::decode(&message.data).expect("the engine sends valid sync messages");
        automerge.receive_sync_message(state, decoded).unwrap();
        if let Some(reply) = automerge.generate_sync_message(state) {
            let data = reply.encode();
            inputs.push(Input::Message {
                connection: self.peers[peer].connection.clone(),
                message: DocumentMessage::Sync(self.doc_message(peer, document, data)),
            });
        }
    }

    /// An honest member's fresh document: stored, and acknowledged (the
    /// server's sync state shares the member's heads).
    fn honest_change_is_stored_and_acknowledged(&mut self) -> Result<(), TestCaseError> {
        self.fail_next_write = false;
        let honest = self.connect("honest");
        let document = doc_id(200);
        let (automerge, _) = self.doc_of(honest, document);
        let mut tx = automerge.transaction();
        tx.put(ROOT, "a", 42).unwrap();
        tx.commit_with(CommitOptions::default().with_time(0));
        let heads = automerge.get_heads();
        self.sync(honest, document);
        prop_assert!(!self.peers[honest].closed, "the honest member was closed");
        prop_assert!(
            self.store.contains_key(&storage::meta_key(&document)),
            "the honest member's document was not stored"
        );
        let (_, state) = &self.peers[honest].docs[&document];
        prop_assert_eq!(&state.shared_heads, &heads);
        Ok(())
    }
}

/// 96 cases unless `PROPTEST_CASES` asks for more (or fewer).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(96)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn hostile_message_sequences_never_stop_the_engine_serving_an_honest_member(
        steps in prop::collection::vec(arb_step(), 1..40),
    ) {
        let mut world = World::new();
        for step in steps {
            world.step(step);
        }
        world.honest_change_is_stored_and_acknowledged()?;
    }
}
