//! The `join` → `peer` handshake of the automerge-repo WebSocket adapter.

use crate::PROTOCOL_VERSION;
use crate::ids::{PeerId, StorageId};
use crate::messages::{ErrorMessage, Join, Message, Peer, PeerMetadata};

/// How the server introduces itself in `peer`.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    pub peer_id: PeerId,
    /// Stable for the life of the data folder, so clients can tell when their
    /// changes are stored here (automerge-repo's `getSyncInfo`).
    pub storage_id: StorageId,
}

/// The longest `peerMetadata.storageId` a `join` may carry (the stock
/// client's is a 36-character UUID); it names stored sync states.
pub const MAX_STORAGE_ID_BYTES: usize = 64;

/// The longest `senderId` a `join` may carry. The server names the peer in
/// every message it sends it, so an unbounded id would grow every reply;
/// stock clients use a dozen or so characters.
pub const MAX_PEER_ID_BYTES: usize = 128;

/// The `peer` reply to an acceptable `join`, or the `error` to send before closing.
pub fn answer_join(join: &Join, server: &ServerIdentity) -> Result<Message, Message> {
    if join.sender_id.as_str().len() > MAX_PEER_ID_BYTES {
        // Not echoed back: the id is what is wrong.
        return Err(error(
            server,
            None,
            format!("peerId too long: the limit is {MAX_PEER_ID_BYTES} bytes"),
        ));
    }
    let storage_id = join
        .peer_metadata
        .as_ref()
        .and_then(|meta| meta.storage_id.as_ref());
    if storage_id.is_some_and(|id| id.as_str().len() > MAX_STORAGE_ID_BYTES) {
        return Err(error(
            server,
            Some(join.sender_id.clone()),
            format!("storageId too long: the limit is {MAX_STORAGE_ID_BYTES} bytes"),
        ));
    }
    // A client that lists no versions predates the list and speaks "1".
    let speaks_ours = join
        .supported_protocol_versions
        .as_ref()
        .is_none_or(|versions| versions.iter().any(|version| version == PROTOCOL_VERSION));
    if !speaks_ours {
        return Err(error(
            server,
            Some(join.sender_id.clone()),
            format!("unsupported protocol version: this server speaks {PROTOCOL_VERSION:?}"),
        ));
    }
    Ok(Message::Peer(Peer {
        sender_id: server.peer_id.clone(),
        target_id: join.sender_id.clone(),
        peer_metadata: PeerMetadata {
            storage_id: Some(server.storage_id.clone()),
            is_ephemeral: Some(false),
        },
        selected_protocol_version: PROTOCOL_VERSION.to_string(),
    }))
}

/// An `error` message from the server.
pub fn error(server: &ServerIdentity, target: Option<PeerId>, text: impl Into<String>) -> Message {
    Message::Error(ErrorMessage {
        sender_id: Some(server.peer_id.clone()),
        target_id: target,
        message: text.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerIdentity {
        ServerIdentity {
            peer_id: PeerId::new("backchannel-server"),
            storage_id: StorageId::new("storage-1"),
        }
    }

    fn join(versions: Option<Vec<&str>>) -> Join {
        Join {
            sender_id: PeerId::new("peer-a"),
            peer_metadata: None,
            supported_protocol_versions: versions
                .map(|versions| versions.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn a_join_speaking_version_1_gets_a_peer_with_our_stable_storage_id() {
        let Ok(Message::Peer(peer)) = answer_join(&join(Some(vec!["1"])), &server()) else {
            panic!("expected a peer message");
        };
        assert_eq!(peer.target_id, PeerId::new("peer-a"));
        assert_eq!(peer.sender_id, PeerId::new("backchannel-server"));
        assert_eq!(peer.selected_protocol_version, "1");
        assert_eq!(
            peer.peer_metadata.storage_id,
            Some(StorageId::new("storage-1"))
        );
        assert_eq!(peer.peer_metadata.is_ephemeral, Some(false));
    }

    #[test]
    fn a_join_without_versions_is_taken_as_version_1() {
        assert!(answer_join(&join(None), &server()).is_ok());
    }

    #[test]
    fn a_join_with_a_storage_id_over_the_limit_gets_an_error() {
        let mut long = join(Some(vec!["1"]));
        long.peer_metadata = Some(PeerMetadata {
            storage_id: Some(StorageId::new("x".repeat(MAX_STORAGE_ID_BYTES + 1))),
            is_ephemeral: Some(false),
        });
        let Err(Message::Error(error)) = answer_join(&long, &server()) else {
            panic!("expected an error message");
        };
        assert!(error.message.contains("storageId too long"));
        long.peer_metadata = Some(PeerMetadata {
            storage_id: Some(StorageId::new("x".repeat(MAX_STORAGE_ID_BYTES))),
            is_ephemeral: Some(false),
        });
        assert!(answer_join(&long, &server()).is_ok());
    }

    #[test]
    fn a_join_with_a_peer_id_over_the_limit_gets_an_error_that_does_not_echo_it() {
        let mut long = join(Some(vec!["1"]));
        long.sender_id = PeerId::new("p".repeat(MAX_PEER_ID_BYTES + 1));
        let Err(Message::Error(error)) = answer_join(&long, &server()) else {
            panic!("expected an error message");
        };
        assert!(error.message.contains("peerId too long"));
        assert_eq!(error.target_id, None);
        long.sender_id = PeerId::new("p".repeat(MAX_PEER_ID_BYTES));
        assert!(answer_join(&long, &server()).is_ok());
    }

    #[test]
    fn a_join_without_version_1_gets_an_error() {
        let Err(Message::Error(error)) = answer_join(&join(Some(vec!["2"])), &server()) else {
            panic!("expected an error message");
        };
        assert!(error.message.contains("unsupported protocol version"));
    }
}
