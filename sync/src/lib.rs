//! The sans-IO sync core of Backchannel.
//!
//! This crate holds the automerge-repo wire messages, the handshake and the
//! sync engine. It never touches sockets, threads or the clock: callers pass in
//! connection events, incoming bytes, storage results and the current time, and
//! get back the bytes to send and the storage writes to perform. That keeps the
//! protocol testable as deterministic multi-peer stories.
//!
//! Messages round-trip through their CBOR wire form:
//!
//! ```
//! use backchannel_sync::{Message, PeerId};
//!
//! let leave = Message::Leave { sender_id: PeerId::new("peer-1") };
//! let bytes = leave.encode();
//! assert_eq!(Message::decode(&bytes).unwrap(), leave);
//! assert_eq!(backchannel_sync::PROTOCOL_VERSION, "1");
//! ```

pub mod engine;
pub mod frame;
pub mod handshake;
pub mod ids;
pub mod messages;
pub mod storage;
pub mod wire;

pub use engine::{
    Connection, ConnectionId, DocumentMessage, DocumentView, EditFn, Effect, Engine, EngineConfig,
    Input, LocalEdit, Policy, Refusal, SERVER_USER, WriteId,
};
pub use frame::{Frame, SharedEphemeral};
pub use ids::{DocumentId, InvalidDocumentId, PeerId, StorageId};
pub use messages::*;
pub use wire::DecodeError;

/// The automerge-repo network protocol version spoken on `/sync`.
pub const PROTOCOL_VERSION: &str = "1";
