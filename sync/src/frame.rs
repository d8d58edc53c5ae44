//! Outgoing WebSocket binary messages whose bulk can be shared.
//!
//! An ephemeral relayed to many readers differs per reader only in its
//! `targetId`, so it is encoded once (every field but the target, which the
//! encoding puts last) and each reader's frame is that shared body plus a
//! short tail of its own. The shared body is reference-counted: queued for
//! thirty readers, a payload is held once, not thirty times.

use bytes::Bytes;

use crate::ids::PeerId;
use crate::messages::{Ephemeral, Message};

/// One WebSocket binary message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    shared: Bytes,
    own: Vec<u8>,
}

impl Frame {
    /// The frame's length on the wire.
    pub fn len(&self) -> usize {
        self.shared.len() + self.own.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame as one buffer (copies the shared part, if any).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.len());
        bytes.extend_from_slice(&self.shared);
        bytes.extend_from_slice(&self.own);
        bytes
    }

    /// Whether two frames hold the same shared body (not a copy of it).
    pub fn shares_body_with(&self, other: &Frame) -> bool {
        !self.shared.is_empty() && self.shared.as_ptr() == other.shared.as_ptr()
    }
}

impl From<Vec<u8>> for Frame {
    fn from(own: Vec<u8>) -> Self {
        Self {
            shared: Bytes::new(),
            own,
        }
    }
}

impl From<Frame> for Bytes {
    /// A frame of its own bytes moves without copying; a frame with a shared
    /// body is joined into one buffer only now, as it is written.
    fn from(frame: Frame) -> Bytes {
        if frame.shared.is_empty() {
            Bytes::from(frame.own)
        } else {
            Bytes::from(frame.to_vec())
        }
    }
}

/// An ephemeral encoded once for every reader it is relayed to.
#[derive(Debug, Clone)]
pub struct SharedEphemeral {
    body: Bytes,
}

impl SharedEphemeral {
    pub fn new(message: &Ephemeral) -> Self {
        Self {
            body: Bytes::from(crate::wire::encode_ephemeral_without_target(message)),
        }
    }

    /// The frame for one reader: the shared body, then its `targetId`.
    pub fn for_target(&self, target: &PeerId) -> Frame {
        Frame {
            shared: self.body.clone(),
            own: crate::wire::encode_target_tail(target),
        }
    }
}

impl From<Message> for Frame {
    fn from(message: Message) -> Self {
        message.encode().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DocumentId;

    #[test]
    fn a_shared_ephemeral_decodes_as_the_message_for_each_reader() {
        let message = Ephemeral {
            sender_id: PeerId::new("peer-a"),
            target_id: PeerId::new("server"),
            document_id: DocumentId::from_bytes([3; 16]),
            data: vec![0xa1, 0x61, 0x78, 0x01],
            count: 7,
            session_id: "s1".into(),
        };
        let shared = SharedEphemeral::new(&message);
        let one = shared.for_target(&PeerId::new("peer-b"));
        let two = shared.for_target(&PeerId::new("peer-c"));
        assert!(one.shares_body_with(&two));
        let Ok(Message::Ephemeral(decoded)) = Message::decode(&one.to_vec()) else {
            panic!("expected an ephemeral");
        };
        assert_eq!(
            decoded,
            Ephemeral {
                target_id: PeerId::new("peer-b"),
                ..message
            }
        );
    }
}
