//! The automerge-repo network messages, as `@automerge/automerge-repo`
//! 2.x and its WebSocket adapter exchange them (see docs/SYNC_PROTOCOL.md).
//! Encoding and decoding live in `wire.rs`.

use std::collections::BTreeMap;

use crate::ids::{DocumentId, PeerId, StorageId};

/// One message: one binary WebSocket frame holding one CBOR map.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Join(Join),
    Peer(Peer),
    Leave {
        sender_id: PeerId,
    },
    Error(ErrorMessage),
    /// Asks for a document the sender does not have (`data`: an automerge sync message).
    Request(DocMessage),
    /// An automerge sync message for a document (`data`).
    Sync(DocMessage),
    DocUnavailable(DocUnavailable),
    Ephemeral(Ephemeral),
    RemoteSubscriptionChange(RemoteSubscriptionChange),
    RemoteHeadsChanged(RemoteHeadsChanged),
    /// A message type this version does not know; ignored, as the JS client does.
    Unknown {
        message_type: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    pub storage_id: Option<StorageId>,
    pub is_ephemeral: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub sender_id: PeerId,
    pub peer_metadata: Option<PeerMetadata>,
    /// Absent in very old clients; treated as `["1"]`.
    pub supported_protocol_versions: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub sender_id: PeerId,
    pub target_id: PeerId,
    pub peer_metadata: PeerMetadata,
    pub selected_protocol_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMessage {
    pub sender_id: Option<PeerId>,
    pub target_id: Option<PeerId>,
    pub message: String,
}

/// `request` and `sync` share this shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMessage {
    pub sender_id: PeerId,
    pub target_id: PeerId,
    pub document_id: DocumentId,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocUnavailable {
    pub sender_id: PeerId,
    pub target_id: PeerId,
    pub document_id: DocumentId,
}

/// Application data relayed to a document's other readers (presence, cursors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ephemeral {
    pub sender_id: PeerId,
    pub target_id: PeerId,
    pub document_id: DocumentId,
    /// Opaque to us (CBOR to the JS client); relayed byte for byte.
    pub data: Vec<u8>,
    pub count: u64,
    pub session_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSubscriptionChange {
    pub sender_id: PeerId,
    pub target_id: PeerId,
    pub add: Option<Vec<StorageId>>,
    pub remove: Option<Vec<StorageId>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RemoteHeadsChanged {
    pub sender_id: PeerId,
    pub target_id: PeerId,
    pub document_id: DocumentId,
    pub new_heads: BTreeMap<StorageId, RemoteHeads>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RemoteHeads {
    /// bs58check-encoded change hashes.
    pub heads: Vec<String>,
    /// Milliseconds since the epoch; JS sends a float64.
    pub timestamp: f64,
}

impl Message {
    /// The `type` string on the wire.
    pub fn message_type(&self) -> &str {
        match self {
            Message::Join(_) => "join",
            Message::Peer(_) => "peer",
            Message::Leave { .. } => "leave",
            Message::Error(_) => "error",
            Message::Request(_) => "request",
            Message::Sync(_) => "sync",
            Message::DocUnavailable(_) => "doc-unavailable",
            Message::Ephemeral(_) => "ephemeral",
            Message::RemoteSubscriptionChange(_) => "remote-subscription-change",
            Message::RemoteHeadsChanged(_) => "remote-heads-changed",
            Message::Unknown { message_type } => message_type,
        }
    }
}
