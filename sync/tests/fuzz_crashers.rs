//! Replays every file in `tests/fuzz-crashers/` (inputs that once broke
//! something, or edge cases worth keeping) the way `/sync` would meet them:
//! as a frame through the wire decoder, through the handshake if it is a
//! `join`, and through one engine round if it is a document message from a
//! joined connection; then as the `data` of a `sync` and of a `request`,
//! which is where an automerge sync message reaches the engine. Nothing may
//! panic, and every refusal must say what was wrong. See the folder's
//! README.md to add a file.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use automerge::{ActorId, Change, ChangeHash};
use backchannel_sync::handshake::{self, ServerIdentity};
use backchannel_sync::storage::StorageWrite;
use backchannel_sync::{
    Connection, ConnectionId, DocMessage, DocumentId, DocumentMessage, DocumentView, Effect,
    Engine, EngineConfig, Input, Message, PeerId, Policy, Refusal, StorageId,
};

/// Everyone reads and writes everything: the replay is about input the
/// engine cannot make sense of, not about rules.
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
        _document: DocumentView<'_>,
        _before: &[ChangeHash],
        _changes: &[Change],
        _creating: bool,
    ) -> Result<Vec<StorageWrite>, Refusal> {
        Ok(Vec::new())
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

const SERVER: &str = "backchannel-server";

fn crashers() -> Vec<PathBuf> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-crashers");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().is_some_and(|name| name != "README.md"))
        .collect();
    files.sort();
    files
}

fn server() -> ServerIdentity {
    ServerIdentity {
        peer_id: PeerId::new(SERVER),
        storage_id: StorageId::new("storage-1"),
    }
}

/// A joined connection speaking as `peer_id`, as `/sync` hands the engine
/// only messages whose `senderId` is the peer the connection joined as.
fn connection(peer_id: PeerId) -> Arc<Connection<String>> {
    Arc::new(Connection {
        id: ConnectionId(1),
        peer_id,
        user: "someone".to_string(),
        storage_id: Some(StorageId::new("storage-of-someone")),
        is_ephemeral: false,
    })
}

/// Feeds one message to a fresh engine with nothing stored and carries out
/// what it asks until it is quiet. Returns the reasons it closed the
/// connection with.
fn engine_round(message: DocumentMessage) -> Vec<String> {
    let mut engine = Engine::new(
        EngineConfig::new(PeerId::new(SERVER), ActorId::from([0xee; 16])),
        OpenPolicy,
    );
    let mut inputs = vec![Input::Message {
        connection: connection(message.sender_id().clone()),
        message,
    }];
    let mut closes = Vec::new();
    while let Some(input) = inputs.pop() {
        for effect in engine.handle(input, 0) {
            match effect {
                Effect::Load { document_id } => inputs.push(Input::Loaded {
                    document_id,
                    result: Ok(None),
                }),
                Effect::Write {
                    write: Some(write), ..
                } => inputs.push(Input::Written { write }),
                Effect::Close { reason, .. } => closes.push(reason),
                Effect::Send { message, .. } => {
                    // What the engine sends must itself decode.
                    assert_eq!(Message::decode(&message.encode()), Ok(message));
                }
                _ => {}
            }
        }
    }
    closes
}

fn doc_message(data: Vec<u8>) -> DocMessage {
    DocMessage {
        sender_id: PeerId::new("peer-a"),
        target_id: PeerId::new(SERVER),
        document_id: DocumentId::from_bytes([7; 16]),
        data,
    }
}

/// What happened to one file, for the failure message.
fn replay(bytes: &[u8]) -> String {
    let mut story = Vec::new();
    match Message::decode(bytes) {
        Err(error) => {
            let text = error.to_string();
            assert!(!text.is_empty(), "a decode error without a text");
            story.push(format!("frame: malformed ({text})"));
        }
        Ok(Message::Join(join)) => match handshake::answer_join(&join, &server()) {
            Ok(Message::Peer(_)) => story.push("frame: join accepted".into()),
            Err(Message::Error(error)) => {
                assert!(!error.message.is_empty(), "a refused join without a text");
                story.push(format!("frame: join refused ({})", error.message));
            }
            other => panic!("the handshake answered {other:?}"),
        },
        Ok(message) => {
            // Unknown types are unbounded text; the story needs only a glimpse.
            let kind: String = message.message_type().chars().take(40).collect();
            match DocumentMessage::from_message(message) {
                Some(message) => {
                    let closes = engine_round(message);
                    story.push(format!(
                        "frame: {kind} to the engine, closed for {closes:?}"
                    ));
                }
                None => story.push(format!("frame: {kind}, ignored")),
            }
        }
    }
    for (kind, message) in [
        ("sync", DocumentMessage::Sync(doc_message(bytes.to_vec()))),
        (
            "request",
            DocumentMessage::Request(doc_message(bytes.to_vec())),
        ),
    ] {
        let closes = engine_round(message);
        assert!(
            closes.iter().all(|reason| !reason.is_empty()),
            "a close without a reason"
        );
        story.push(format!("as {kind} data: closed for {closes:?}"));
    }
    story.join("; ")
}

/// Files that still panic, each with a comment naming the issue that tracks
/// it: skipped by the test that must pass, replayed by the ignored one.
const KNOWN_PANICS: &[&str] = &[];

fn name_of(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn replay_all(paths: impl Iterator<Item = PathBuf>) {
    for path in paths {
        let bytes = std::fs::read(&path).unwrap();
        let name = name_of(&path);
        match std::panic::catch_unwind(|| replay(&bytes)) {
            Ok(story) => eprintln!("{name}: {story}"),
            Err(_) => panic!("{name} panicked (see above)"),
        }
    }
}

#[test]
fn every_checked_in_crasher_gets_a_clear_outcome_without_a_panic() {
    let files = crashers();
    assert!(
        files.len() > KNOWN_PANICS.len(),
        "the crashers folder is empty"
    );
    replay_all(
        files
            .into_iter()
            .filter(|path| !KNOWN_PANICS.contains(&name_of(path).as_str())),
    );
}

#[test]
#[ignore = "replays the crashers that still panic"]
fn known_panics_no_longer_panic() {
    replay_all(
        crashers()
            .into_iter()
            .filter(|path| KNOWN_PANICS.contains(&name_of(path).as_str())),
    );
}
