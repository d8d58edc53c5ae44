//! The sans-IO sync core of Backchannel.
//!
//! This crate will hold the automerge-repo wire messages, the handshake and the
//! sync engine. It never touches sockets, threads or the clock: callers pass in
//! connection events, incoming bytes, storage results and the current time, and
//! get back the bytes to send and the storage writes to perform. That keeps the
//! protocol testable as deterministic multi-peer stories.
//!
//! The protocol version this crate speaks, as announced in the `join`/`peer`
//! handshake of automerge-repo's WebSocket adapter:
//!
//! ```
//! assert_eq!(backchannel_sync::PROTOCOL_VERSION, "1");
//! ```

/// The automerge-repo network protocol version spoken on `/sync`.
pub const PROTOCOL_VERSION: &str = "1";
