//! The CBOR wire form of [`Message`], compatible with the cbor-x encoder the
//! JS `@automerge/automerge-repo` client uses (see docs/SYNC_PROTOCOL.md §1).
//!
//! Decoding is lenient about encoding choices the JS side makes (non-minimal
//! map headers, `undefined` values, floats for integers, unknown keys) and
//! strict about structure (missing fields, wrong types, trailing bytes).
//! Every input is untrusted: decoding never panics, never allocates more than
//! the input actually contains, and bounds nesting depth.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use crate::ids::{DocumentId, PeerId, StorageId};
use crate::messages::{
    DocMessage, DocUnavailable, Ephemeral, ErrorMessage, Join, Message, Peer, PeerMetadata,
    RemoteHeads, RemoteHeadsChanged, RemoteSubscriptionChange,
};

/// Deepest nesting accepted anywhere in a message. Real messages need 4
/// (`newHeads` → entry → `heads` → hash); the limit keeps the recursive value
/// skipper far from the stack's end whatever the input.
const MAX_DEPTH: usize = 32;

/// Longest piece of client input quoted back in an error (in chars): errors
/// are sent to clients and logged, so they must stay small.
const MAX_QUOTED_CHARS: usize = 48;

/// Why bytes are not a valid message. The `Display` text is meant to be sent
/// back to the peer in an `error` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is truncated: the input ends in the middle of a CBOR value")]
    Truncated,
    #[error("message is not valid CBOR: {0}")]
    NotCbor(String),
    #[error("message is not a CBOR map")]
    NotAMap,
    #[error("message has extra bytes after its CBOR map")]
    TrailingBytes,
    #[error("message is nested more than {MAX_DEPTH} levels deep")]
    TooDeep,
    #[error("message has no `{0}` field")]
    MissingField(&'static str),
    #[error("message has the field `{0}` more than once")]
    DuplicateField(&'static str),
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field `documentId` is {0}, not an automerge document id (bs58check of 16 bytes)")]
    InvalidDocumentId(String),
}

impl From<minicbor::decode::Error> for DecodeError {
    fn from(error: minicbor::decode::Error) -> Self {
        if error.is_end_of_input() {
            DecodeError::Truncated
        } else {
            DecodeError::NotCbor(truncate(&error.to_string(), 160))
        }
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(max_chars).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

impl Message {
    /// The CBOR bytes of this message, as one WebSocket binary frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        // A Vec writer's error type is `Infallible` and the plain encoder calls
        // used here never produce message errors, so this cannot fail.
        write_message(&mut e, self).expect("encoding into a Vec<u8> cannot fail");
        e.into_writer()
    }

    /// Parses one message (one WebSocket binary frame).
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let mut d = Decoder::new(bytes);
        let fields = Fields::read(&mut d)?;
        if d.position() != bytes.len() {
            return Err(DecodeError::TrailingBytes);
        }
        fields.into_message()
    }
}

/// An ephemeral's map with every entry but `targetId`, whose key comes last:
/// append [`encode_target_tail`] for a whole message (see `frame.rs`).
pub(crate) fn encode_ephemeral_without_target(m: &Ephemeral) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    let written: EncResult = (|| {
        e.map(7)?;
        e.str("type")?.str("ephemeral")?;
        e.str("senderId")?.str(m.sender_id.as_str())?;
        write_document_id(&mut e, &m.document_id)?;
        e.str("data")?.bytes(&m.data)?;
        e.str("count")?.u64(m.count)?;
        e.str("sessionId")?.str(&m.session_id)?;
        e.str("targetId")?;
        Ok(())
    })();
    written.expect("encoding into a Vec<u8> cannot fail");
    e.into_writer()
}

/// The value of the `targetId` entry that ends a shared ephemeral.
pub(crate) fn encode_target_tail(target: &PeerId) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.str(target.as_str())
        .expect("encoding into a Vec<u8> cannot fail");
    e.into_writer()
}

// ---------------------------------------------------------------------------
// Encoding

type Enc = Encoder<Vec<u8>>;
type EncResult = Result<(), minicbor::encode::Error<Infallible>>;

fn write_message(e: &mut Enc, message: &Message) -> EncResult {
    // Map headers must state the exact entry count, so every optional field
    // adds `u64::from(is_some())`.
    match message {
        Message::Join(m) => {
            let n = 2
                + u64::from(m.peer_metadata.is_some())
                + u64::from(m.supported_protocol_versions.is_some());
            e.map(n)?;
            write_type(e, message)?;
            e.str("senderId")?.str(m.sender_id.as_str())?;
            if let Some(meta) = &m.peer_metadata {
                e.str("peerMetadata")?;
                write_peer_metadata(e, meta)?;
            }
            if let Some(versions) = &m.supported_protocol_versions {
                e.str("supportedProtocolVersions")?;
                write_text_array(e, versions.iter().map(String::as_str))?;
            }
        }
        Message::Peer(m) => {
            e.map(5)?;
            write_type(e, message)?;
            e.str("senderId")?.str(m.sender_id.as_str())?;
            e.str("targetId")?.str(m.target_id.as_str())?;
            e.str("peerMetadata")?;
            write_peer_metadata(e, &m.peer_metadata)?;
            e.str("selectedProtocolVersion")?
                .str(&m.selected_protocol_version)?;
        }
        Message::Leave { sender_id } => {
            e.map(2)?;
            write_type(e, message)?;
            e.str("senderId")?.str(sender_id.as_str())?;
        }
        Message::Error(m) => {
            let n = 2 + u64::from(m.sender_id.is_some()) + u64::from(m.target_id.is_some());
            e.map(n)?;
            write_type(e, message)?;
            if let Some(sender) = &m.sender_id {
                e.str("senderId")?.str(sender.as_str())?;
            }
            if let Some(target) = &m.target_id {
                e.str("targetId")?.str(target.as_str())?;
            }
            e.str("message")?.str(&m.message)?;
        }
        Message::Request(m) | Message::Sync(m) => {
            e.map(5)?;
            write_type(e, message)?;
            e.str("senderId")?.str(m.sender_id.as_str())?;
            e.str("targetId")?.str(m.target_id.as_str())?;
            write_document_id(e, &m.document_id)?;
            // `.bytes()` writes major type 2 without tag 64, which is what the
            // JS decoder turns into the Uint8Array automerge expects.
            e.str("data")?.bytes(&m.data)?;
        }
        Message::DocUnavailable(m) => {
            e.map(4)?;
            write_type(e, message)?;
            e.str("senderId")?.str(m.sender_id.as_str())?;
            e.str("targetId")?.str(m.target_id.as_str())?;
            write_document_id(e, &m.document_id)?;
        }
        Message::Ephemeral(m) => {
            e.map(7)?;
            write_type(e, message)?;
            e.str("senderId")?.str(m.sender_id.as_str())?;
            e.str("targetId")?.str(m.target_id.as_str())?;
            write_document_id(e, &m.document_id)?;
            e.str("data")?.bytes(&m.data)?;
            e.str("count")?.u64(m.count)?;
            e.str("sessionId")?.str(&m.session_id)?;
        }
        Message::RemoteSubscriptionChange(m) => {
            let n = 3 + u64::from(m.add.is_some()) + u64::from(m.remove.is_some());
            e.map(n)?;
            write_type(e, message)?;
            e.str("senderId")?.str(m.sender_id.as_str())?;
            e.str("targetId")?.str(m.target_id.as_str())?;
            if let Some(add) = &m.add {
                e.str("add")?;
                write_text_array(e, add.iter().map(StorageId::as_str))?;
            }
            if let Some(remove) = &m.remove {
                e.str("remove")?;
                write_text_array(e, remove.iter().map(StorageId::as_str))?;
            }
        }
        Message::RemoteHeadsChanged(m) => {
            e.map(5)?;
            write_type(e, message)?;
            e.str("senderId")?.str(m.sender_id.as_str())?;
            e.str("targetId")?.str(m.target_id.as_str())?;
            write_document_id(e, &m.document_id)?;
            e.str("newHeads")?.map(len_u64(m.new_heads.len()))?;
            for (storage_id, heads) in &m.new_heads {
                e.str(storage_id.as_str())?.map(2)?;
                e.str("heads")?;
                write_text_array(e, heads.heads.iter().map(String::as_str))?;
                // Always float64: cbor-x turns a 64-bit uint into a BigInt,
                // which JS then fails to compare with `Date.now()` numbers.
                e.str("timestamp")?.f64(heads.timestamp)?;
            }
        }
        Message::Unknown { .. } => {
            e.map(1)?;
            write_type(e, message)?;
        }
    }
    Ok(())
}

fn write_type(e: &mut Enc, message: &Message) -> EncResult {
    e.str("type")?.str(message.message_type())?;
    Ok(())
}

fn write_document_id(e: &mut Enc, id: &DocumentId) -> EncResult {
    // The JS client compares ids as strings, so never send the 16-byte form.
    e.str("documentId")?.str(&id.to_string())?;
    Ok(())
}

fn write_peer_metadata(e: &mut Enc, meta: &PeerMetadata) -> EncResult {
    e.map(u64::from(meta.storage_id.is_some()) + u64::from(meta.is_ephemeral.is_some()))?;
    if let Some(storage_id) = &meta.storage_id {
        e.str("storageId")?.str(storage_id.as_str())?;
    }
    if let Some(is_ephemeral) = meta.is_ephemeral {
        e.str("isEphemeral")?.bool(is_ephemeral)?;
    }
    Ok(())
}

fn write_text_array<'a>(e: &mut Enc, items: impl ExactSizeIterator<Item = &'a str>) -> EncResult {
    e.array(len_u64(items.len()))?;
    for item in items {
        e.str(item)?;
    }
    Ok(())
}

fn len_u64(len: usize) -> u64 {
    // usize is at most 64 bits on every supported target.
    u64::try_from(len).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Decoding: first pass
//
// The top-level map is read once to check it is well-formed and to note where
// each known field's value lies; values are only interpreted once `type` is
// known. That way a message of an unknown type decodes to `Unknown` even if
// it reuses a known key with another meaning, and each type only validates
// the fields it uses.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Type,
    SenderId,
    TargetId,
    DocumentId,
    Data,
    PeerMetadata,
    /// The README's name for `peerMetadata`; samod accepts it, so do we.
    Metadata,
    SupportedProtocolVersions,
    SelectedProtocolVersion,
    Message,
    Count,
    SessionId,
    Add,
    Remove,
    NewHeads,
}

impl Field {
    const ALL: [Field; 15] = [
        Field::Type,
        Field::SenderId,
        Field::TargetId,
        Field::DocumentId,
        Field::Data,
        Field::PeerMetadata,
        Field::Metadata,
        Field::SupportedProtocolVersions,
        Field::SelectedProtocolVersion,
        Field::Message,
        Field::Count,
        Field::SessionId,
        Field::Add,
        Field::Remove,
        Field::NewHeads,
    ];

    fn key(self) -> &'static str {
        match self {
            Field::Type => "type",
            Field::SenderId => "senderId",
            Field::TargetId => "targetId",
            Field::DocumentId => "documentId",
            Field::Data => "data",
            Field::PeerMetadata => "peerMetadata",
            Field::Metadata => "metadata",
            Field::SupportedProtocolVersions => "supportedProtocolVersions",
            Field::SelectedProtocolVersion => "selectedProtocolVersion",
            Field::Message => "message",
            Field::Count => "count",
            Field::SessionId => "sessionId",
            Field::Add => "add",
            Field::Remove => "remove",
            Field::NewHeads => "newHeads",
        }
    }

    fn from_key(key: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|field| field.key() == key)
    }
}

/// The encoded value of each known field present in a message. `undefined`
/// and `null` values count as absent, because cbor-x writes `undefined` for
/// every optional field the JS object left unset.
struct Fields<'b> {
    values: [Option<&'b [u8]>; Field::ALL.len()],
    seen: [bool; Field::ALL.len()],
}

impl<'b> Fields<'b> {
    fn read(d: &mut Decoder<'b>) -> Result<Self, DecodeError> {
        let mut fields = Fields {
            values: [None; Field::ALL.len()],
            seen: [false; Field::ALL.len()],
        };
        skip_tags(d)?;
        let mut entries = match d.datatype()? {
            Type::Map | Type::MapIndef => Items(d.map()?),
            _ => return Err(DecodeError::NotAMap),
        };
        while entries.next(d)? {
            let key = read_key(d, 1)?;
            let start = d.position();
            skip_value(d, 1)?;
            let Some(field) = key.as_deref().and_then(Field::from_key) else {
                continue;
            };
            let value = d
                .input()
                .get(start..d.position())
                .ok_or(DecodeError::Truncated)?;
            fields.set(field, value)?;
        }
        Ok(fields)
    }

    fn set(&mut self, field: Field, value: &'b [u8]) -> Result<(), DecodeError> {
        // Duplicates are refused rather than resolved: two `senderId`s could
        // make a relay and the server disagree about who sent a message.
        let index = field as usize;
        if std::mem::replace(&mut self.seen[index], true) {
            return Err(DecodeError::DuplicateField(field.key()));
        }
        if !is_absent(value)? {
            self.values[index] = Some(value);
        }
        Ok(())
    }

    fn optional<T>(
        &self,
        field: Field,
        read: impl FnOnce(&mut Decoder<'b>, &'static str) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.values[field as usize] {
            Some(value) => read(&mut Decoder::new(value), field.key()).map(Some),
            None => Ok(None),
        }
    }

    fn required<T>(
        &self,
        field: Field,
        read: impl FnOnce(&mut Decoder<'b>, &'static str) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        self.optional(field, read)?
            .ok_or(DecodeError::MissingField(field.key()))
    }

    fn peer_metadata(&self) -> Result<Option<PeerMetadata>, DecodeError> {
        match self.optional(Field::PeerMetadata, read_peer_metadata)? {
            Some(meta) => Ok(Some(meta)),
            None => self.optional(Field::Metadata, read_peer_metadata),
        }
    }

    fn into_message(self) -> Result<Message, DecodeError> {
        let message_type = self.required(Field::Type, read_text)?;
        let sender = || self.required(Field::SenderId, read_peer_id);
        let target = || self.required(Field::TargetId, read_peer_id);
        let document = || self.required(Field::DocumentId, read_document_id);
        let data = || self.required(Field::Data, read_bytes);
        let message = match message_type.as_str() {
            "join" => Message::Join(Join {
                sender_id: sender()?,
                peer_metadata: self.peer_metadata()?,
                supported_protocol_versions: self
                    .optional(Field::SupportedProtocolVersions, read_text_array)?,
            }),
            "peer" => Message::Peer(Peer {
                sender_id: sender()?,
                target_id: target()?,
                peer_metadata: self.peer_metadata()?.unwrap_or_default(),
                selected_protocol_version: self
                    .required(Field::SelectedProtocolVersion, read_text)?,
            }),
            "leave" => Message::Leave {
                sender_id: sender()?,
            },
            "error" => Message::Error(ErrorMessage {
                sender_id: self.optional(Field::SenderId, read_peer_id)?,
                target_id: self.optional(Field::TargetId, read_peer_id)?,
                message: self.required(Field::Message, read_text)?,
            }),
            "request" | "sync" => {
                let doc = DocMessage {
                    sender_id: sender()?,
                    target_id: target()?,
                    document_id: document()?,
                    data: data()?,
                };
                if message_type == "request" {
                    Message::Request(doc)
                } else {
                    Message::Sync(doc)
                }
            }
            "doc-unavailable" => Message::DocUnavailable(DocUnavailable {
                sender_id: sender()?,
                target_id: target()?,
                document_id: document()?,
            }),
            "ephemeral" => Message::Ephemeral(Ephemeral {
                sender_id: sender()?,
                target_id: target()?,
                document_id: document()?,
                data: data()?,
                count: self.required(Field::Count, read_count)?,
                session_id: self.required(Field::SessionId, read_text)?,
            }),
            "remote-subscription-change" => {
                Message::RemoteSubscriptionChange(RemoteSubscriptionChange {
                    sender_id: sender()?,
                    target_id: target()?,
                    add: self.optional(Field::Add, read_storage_ids)?,
                    remove: self.optional(Field::Remove, read_storage_ids)?,
                })
            }
            "remote-heads-changed" => Message::RemoteHeadsChanged(RemoteHeadsChanged {
                sender_id: sender()?,
                target_id: target()?,
                document_id: document()?,
                new_heads: self.required(Field::NewHeads, read_new_heads)?,
            }),
            _ => Message::Unknown { message_type },
        };
        Ok(message)
    }
}

/// Items left in an array or map being read: a count for definite lengths,
/// `None` for indefinite ones, which end at a break byte.
struct Items(Option<u64>);

impl Items {
    fn next(&mut self, d: &mut Decoder<'_>) -> Result<bool, DecodeError> {
        match &mut self.0 {
            Some(0) => Ok(false),
            Some(left) => {
                *left -= 1;
                Ok(true)
            }
            None if d.datatype()? == Type::Break => {
                d.set_position(d.position() + 1);
                Ok(false)
            }
            None => Ok(true),
        }
    }
}

/// Reads a map key: `Some` for a text key, `None` (after skipping it) for any
/// other kind, which no known field uses.
fn read_key<'b>(d: &mut Decoder<'b>, depth: usize) -> Result<Option<Cow<'b, str>>, DecodeError> {
    match d.datatype()? {
        Type::String => Ok(Some(Cow::Borrowed(d.str()?))),
        Type::StringIndef => Ok(Some(Cow::Owned(concat_text(d)?))),
        _ => {
            skip_value(d, depth)?;
            Ok(None)
        }
    }
}

/// Tags carry no meaning in this protocol; some encoders add them (tag 64
/// around byte strings), so they are dropped wherever a value is read.
fn skip_tags(d: &mut Decoder<'_>) -> Result<(), DecodeError> {
    while d.datatype()? == Type::Tag {
        d.tag()?;
    }
    Ok(())
}

fn is_absent(value: &[u8]) -> Result<bool, DecodeError> {
    let mut d = Decoder::new(value);
    skip_tags(&mut d)?;
    Ok(matches!(d.datatype()?, Type::Null | Type::Undefined))
}

/// Consumes `null`/`undefined` (treated as an absent value) and reports
/// whether it found one.
fn take_absent(d: &mut Decoder<'_>) -> Result<bool, DecodeError> {
    skip_tags(d)?;
    if matches!(d.datatype()?, Type::Null | Type::Undefined) {
        d.set_position(d.position() + 1);
        return Ok(true);
    }
    Ok(false)
}

/// Skips one well-formed value of any type. Recursion is bounded by
/// `MAX_DEPTH`; tags are looped over, so long tag chains cost no stack.
fn skip_value(d: &mut Decoder<'_>, depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    skip_tags(d)?;
    match d.datatype()? {
        Type::Bool => {
            d.bool()?;
        }
        Type::Null => d.null()?,
        Type::Undefined => d.undefined()?,
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => {
            d.u64()?;
        }
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            d.int()?;
        }
        Type::F16 => {
            read_f16(d)?;
        }
        Type::F32 => {
            d.f32()?;
        }
        Type::F64 => {
            d.f64()?;
        }
        Type::Simple => {
            d.simple()?;
        }
        Type::Bytes | Type::BytesIndef => {
            for chunk in d.bytes_iter()? {
                chunk?;
            }
        }
        Type::String | Type::StringIndef => {
            for chunk in d.str_iter()? {
                chunk?;
            }
        }
        Type::Array | Type::ArrayIndef => {
            let mut items = Items(d.array()?);
            while items.next(d)? {
                skip_value(d, depth + 1)?;
            }
        }
        Type::Map | Type::MapIndef => {
            let mut entries = Items(d.map()?);
            while entries.next(d)? {
                skip_value(d, depth + 1)?;
                skip_value(d, depth + 1)?;
            }
        }
        Type::Break => return Err(DecodeError::NotCbor("unexpected break byte".into())),
        Type::Tag | Type::Unknown(_) => {
            return Err(DecodeError::NotCbor(format!(
                "reserved or unknown initial byte at position {}",
                d.position()
            )));
        }
    }
    Ok(())
}

/// minicbor only decodes half floats with its `half` feature, which this
/// crate does not enable; the format is simple enough to do by hand.
fn read_f16(d: &mut Decoder<'_>) -> Result<f64, DecodeError> {
    let position = d.position();
    let [_, high, low] = d
        .input()
        .get(position..position + 3)
        .and_then(|b| <[u8; 3]>::try_from(b).ok())
        .ok_or(DecodeError::Truncated)?;
    d.set_position(position + 3);
    let bits = u16::from_be_bytes([high, low]);
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    let magnitude = match exponent {
        0 => fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + fraction / 1024.0) * 2f64.powi(exponent - 15),
    };
    Ok(if bits & 0x8000 != 0 {
        -magnitude
    } else {
        magnitude
    })
}

// ---------------------------------------------------------------------------
// Decoding: field values

fn concat_text(d: &mut Decoder<'_>) -> Result<String, DecodeError> {
    let mut text = String::new();
    for chunk in d.str_iter()? {
        text.push_str(chunk?);
    }
    Ok(text)
}

fn read_text(d: &mut Decoder<'_>, field: &'static str) -> Result<String, DecodeError> {
    skip_tags(d)?;
    match d.datatype()? {
        Type::String => Ok(d.str()?.to_owned()),
        Type::StringIndef => concat_text(d),
        _ => Err(DecodeError::WrongType {
            field,
            expected: "a text string",
        }),
    }
}

fn read_peer_id(d: &mut Decoder<'_>, field: &'static str) -> Result<PeerId, DecodeError> {
    read_text(d, field).map(PeerId)
}

fn read_bytes(d: &mut Decoder<'_>, field: &'static str) -> Result<Vec<u8>, DecodeError> {
    skip_tags(d)?;
    match d.datatype()? {
        Type::Bytes => Ok(d.bytes()?.to_vec()),
        Type::BytesIndef => {
            let mut bytes = Vec::new();
            for chunk in d.bytes_iter()? {
                bytes.extend_from_slice(chunk?);
            }
            Ok(bytes)
        }
        _ => Err(DecodeError::WrongType {
            field,
            expected: "a byte string",
        }),
    }
}

fn read_bool(d: &mut Decoder<'_>, field: &'static str) -> Result<bool, DecodeError> {
    skip_tags(d)?;
    match d.datatype()? {
        Type::Bool => Ok(d.bool()?),
        _ => Err(DecodeError::WrongType {
            field,
            expected: "a boolean",
        }),
    }
}

/// Any float width is accepted because cbor-x writes non-integers and large
/// integers as float64 and other encoders may shrink them.
fn read_float(d: &mut Decoder<'_>) -> Result<Option<f64>, DecodeError> {
    match d.datatype()? {
        Type::F16 => read_f16(d).map(Some),
        Type::F32 => Ok(Some(f64::from(d.f32()?))),
        Type::F64 => Ok(Some(d.f64()?)),
        _ => Ok(None),
    }
}

fn read_count(d: &mut Decoder<'_>, field: &'static str) -> Result<u64, DecodeError> {
    let wrong = DecodeError::WrongType {
        field,
        expected: "a non-negative integer",
    };
    skip_tags(d)?;
    if matches!(d.datatype()?, Type::U8 | Type::U16 | Type::U32 | Type::U64) {
        return Ok(d.u64()?);
    }
    match read_float(d)? {
        // 2^64 is exactly representable; anything below it that is integral
        // converts without loss.
        Some(x) if (0.0..18_446_744_073_709_551_616.0).contains(&x) && x.fract() == 0.0 => {
            Ok(x as u64)
        }
        _ => Err(wrong),
    }
}

fn read_number(d: &mut Decoder<'_>, field: &'static str) -> Result<f64, DecodeError> {
    let wrong = DecodeError::WrongType {
        field,
        expected: "a finite number",
    };
    skip_tags(d)?;
    let value = match d.datatype()? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => d.u64()? as f64,
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => i128::from(d.int()?) as f64,
        _ => read_float(d)?.ok_or(wrong.clone())?,
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(wrong)
    }
}

fn read_text_array(d: &mut Decoder<'_>, field: &'static str) -> Result<Vec<String>, DecodeError> {
    skip_tags(d)?;
    let mut items = match d.datatype()? {
        Type::Array | Type::ArrayIndef => Items(d.array()?),
        _ => {
            return Err(DecodeError::WrongType {
                field,
                expected: "an array of text strings",
            });
        }
    };
    // Grown item by item: a declared length is not evidence the items exist.
    let mut texts = Vec::new();
    while items.next(d)? {
        texts.push(read_text(d, field)?);
    }
    Ok(texts)
}

fn read_storage_ids(
    d: &mut Decoder<'_>,
    field: &'static str,
) -> Result<Vec<StorageId>, DecodeError> {
    Ok(read_text_array(d, field)?
        .into_iter()
        .map(StorageId)
        .collect())
}

fn read_document_id(d: &mut Decoder<'_>, field: &'static str) -> Result<DocumentId, DecodeError> {
    skip_tags(d)?;
    match d.datatype()? {
        Type::String | Type::StringIndef => {
            let text = read_text(d, field)?;
            text.parse().map_err(|_| {
                DecodeError::InvalidDocumentId(format!("{:?}", truncate(&text, MAX_QUOTED_CHARS)))
            })
        }
        // samod sends the raw 16 bytes instead of the bs58check string.
        Type::Bytes | Type::BytesIndef => {
            let bytes = read_bytes(d, field)?;
            let len = bytes.len();
            <[u8; 16]>::try_from(bytes)
                .map(DocumentId::from_bytes)
                .map_err(|_| {
                    DecodeError::InvalidDocumentId(format!("a byte string of {len} bytes"))
                })
        }
        _ => Err(DecodeError::WrongType {
            field,
            expected: "a text string (bs58check document id)",
        }),
    }
}

fn read_map_entries<'b>(
    d: &mut Decoder<'b>,
    field: &'static str,
    mut entry: impl FnMut(&mut Decoder<'b>, Option<Cow<'b, str>>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    skip_tags(d)?;
    let mut entries = match d.datatype()? {
        Type::Map | Type::MapIndef => Items(d.map()?),
        _ => {
            return Err(DecodeError::WrongType {
                field,
                expected: "a map",
            });
        }
    };
    while entries.next(d)? {
        let key = read_key(d, 2)?;
        entry(d, key)?;
    }
    Ok(())
}

fn read_peer_metadata(
    d: &mut Decoder<'_>,
    field: &'static str,
) -> Result<PeerMetadata, DecodeError> {
    let mut meta = PeerMetadata::default();
    read_map_entries(d, field, |d, key| {
        match key.as_deref() {
            Some("storageId") if !take_absent(d)? => {
                meta.storage_id = Some(StorageId(read_text(d, "peerMetadata.storageId")?));
            }
            Some("isEphemeral") if !take_absent(d)? => {
                meta.is_ephemeral = Some(read_bool(d, "peerMetadata.isEphemeral")?);
            }
            Some("storageId" | "isEphemeral") => {}
            _ => skip_value(d, 2)?,
        }
        Ok(())
    })?;
    Ok(meta)
}

fn read_new_heads(
    d: &mut Decoder<'_>,
    field: &'static str,
) -> Result<BTreeMap<StorageId, RemoteHeads>, DecodeError> {
    let mut new_heads = BTreeMap::new();
    read_map_entries(d, field, |d, key| {
        let Some(storage_id) = key else {
            return Err(DecodeError::WrongType {
                field,
                expected: "a map keyed by storage id strings",
            });
        };
        let mut heads = None;
        let mut timestamp = None;
        read_map_entries(d, "newHeads.*", |d, key| {
            match key.as_deref() {
                Some("heads") if !take_absent(d)? => {
                    heads = Some(read_text_array(d, "newHeads.*.heads")?);
                }
                Some("timestamp") if !take_absent(d)? => {
                    timestamp = Some(read_number(d, "newHeads.*.timestamp")?);
                }
                Some("heads" | "timestamp") => {}
                _ => skip_value(d, 3)?,
            }
            Ok(())
        })?;
        let entry = RemoteHeads {
            heads: heads.ok_or(DecodeError::MissingField("newHeads.*.heads"))?,
            timestamp: timestamp.ok_or(DecodeError::MissingField("newHeads.*.timestamp"))?,
        };
        new_heads.insert(StorageId(storage_id.into_owned()), entry);
        Ok(())
    })?;
    Ok(new_heads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DOC: &str = "4NMNnkMhL8jXrdJ9jamS58PAVdXu";

    // --- hand-built CBOR, written the way cbor-x writes it ----------------

    /// A minimal major-type header, as cbor-x writes for strings and arrays.
    fn head(major: u8, len: usize) -> Vec<u8> {
        let major = major << 5;
        match len {
            0..=23 => vec![major | len as u8],
            24..=0xff => vec![major | 24, len as u8],
            0x100..=0xffff => {
                let mut out = vec![major | 25];
                out.extend_from_slice(&(len as u16).to_be_bytes());
                out
            }
            _ => {
                let mut out = vec![major | 26];
                out.extend_from_slice(&(len as u32).to_be_bytes());
                out
            }
        }
    }

    fn t(text: &str) -> Vec<u8> {
        let mut out = head(3, text.len());
        out.extend_from_slice(text.as_bytes());
        out
    }

    fn b(bytes: &[u8]) -> Vec<u8> {
        let mut out = head(2, bytes.len());
        out.extend_from_slice(bytes);
        out
    }

    /// cbor-x's map header: always 0xb9 and a 16-bit count.
    fn js_map(entries: u16) -> Vec<u8> {
        let mut out = vec![0xb9];
        out.extend_from_slice(&entries.to_be_bytes());
        out
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn f64_bytes(x: f64) -> Vec<u8> {
        let mut out = vec![0xfb];
        out.extend_from_slice(&x.to_be_bytes());
        out
    }

    fn doc_id() -> DocumentId {
        DOC.parse().unwrap()
    }

    /// The value bytes following `key` in an encoded message.
    fn after_key<'a>(bytes: &'a [u8], key: &str) -> &'a [u8] {
        let key = t(key);
        let at = bytes
            .windows(key.len())
            .position(|w| w == key.as_slice())
            .unwrap();
        &bytes[at + key.len()..]
    }

    #[test]
    fn a_js_join_with_wide_map_header_undefined_storage_id_and_unknown_nested_key_decodes() {
        let bytes = cat(&[
            &js_map(5),
            &t("type"),
            &t("join"),
            &t("senderId"),
            &t("peer-k3j4h5"),
            &t("peerMetadata"),
            &js_map(2),
            &t("storageId"),
            &[0xf7],
            &t("isEphemeral"),
            &[0xf5],
            &t("futureFeature"),
            &[0xa2],
            &t("list"),
            &[0x83, 0x01, 0x9f, 0xf6, 0xff],
            &f64_bytes(1.5),
            &t("nested"),
            &[0xbf],
            &t("x"),
            &[0xf4, 0xff],
            &t("supportedProtocolVersions"),
            &[0x81],
            &t("1"),
        ]);
        assert_eq!(
            Message::decode(&bytes).unwrap(),
            Message::Join(Join {
                sender_id: PeerId::new("peer-k3j4h5"),
                peer_metadata: Some(PeerMetadata {
                    storage_id: None,
                    is_ephemeral: Some(true),
                }),
                supported_protocol_versions: Some(vec!["1".into()]),
            })
        );
    }

    #[test]
    fn a_join_without_metadata_or_versions_decodes_with_them_absent() {
        let bytes = cat(&[
            &js_map(4),
            &t("type"),
            &t("join"),
            &t("senderId"),
            &t("p"),
            &t("peerMetadata"),
            &[0xf6],
            &t("supportedProtocolVersions"),
            &[0xf7],
        ]);
        assert_eq!(
            Message::decode(&bytes).unwrap(),
            Message::Join(Join {
                sender_id: PeerId::new("p"),
                peer_metadata: None,
                supported_protocol_versions: None,
            })
        );
    }

    #[test]
    fn a_js_sync_in_js_key_order_with_an_unknown_float_field_decodes() {
        let bytes = cat(&[
            &js_map(6),
            &t("type"),
            &t("sync"),
            &t("targetId"),
            &t("server"),
            &t("data"),
            &b(&[0x42, 0x01, 0x02, 0x03]),
            &t("documentId"),
            &t(DOC),
            &t("lastSeen"),
            &f64_bytes(1_712_345_678_901.0),
            &t("senderId"),
            &t("peer-1"),
        ]);
        assert_eq!(
            Message::decode(&bytes).unwrap(),
            Message::Sync(DocMessage {
                sender_id: PeerId::new("peer-1"),
                target_id: PeerId::new("server"),
                document_id: doc_id(),
                data: vec![0x42, 0x01, 0x02, 0x03],
            })
        );
    }

    fn ephemeral_with_count(count: &[u8]) -> Vec<u8> {
        cat(&[
            &js_map(7),
            &t("type"),
            &t("ephemeral"),
            &t("senderId"),
            &t("a"),
            &t("targetId"),
            &t("b"),
            &t("documentId"),
            &t(DOC),
            &t("data"),
            &b(&[0xa0]),
            &t("count"),
            count,
            &t("sessionId"),
            &t("s"),
        ])
    }

    fn count_of(message: Result<Message, DecodeError>) -> Result<u64, DecodeError> {
        match message? {
            Message::Ephemeral(e) => Ok(e.count),
            other => panic!("not an ephemeral: {other:?}"),
        }
    }

    #[test]
    fn an_ephemeral_count_may_be_any_integer_width_or_an_integral_float() {
        let decode = |count: &[u8]| count_of(Message::decode(&ephemeral_with_count(count)));
        assert_eq!(decode(&f64_bytes(3.0)), Ok(3));
        assert_eq!(decode(&[0xfa, 0x40, 0x40, 0x00, 0x00]), Ok(3));
        assert_eq!(decode(&[0xf9, 0x42, 0x00]), Ok(3));
        assert_eq!(decode(&[0x03]), Ok(3));
        assert_eq!(decode(&[0x1b, 0, 0, 0, 0, 0, 0, 0, 3]), Ok(3));
        assert_eq!(decode(&f64_bytes(1e15)), Ok(1_000_000_000_000_000));
    }

    #[test]
    fn an_ephemeral_count_that_is_negative_fractional_or_not_a_number_is_refused() {
        let wrong = Err(DecodeError::WrongType {
            field: "count",
            expected: "a non-negative integer",
        });
        let decode = |count: &[u8]| count_of(Message::decode(&ephemeral_with_count(count)));
        assert_eq!(decode(&f64_bytes(3.5)), wrong);
        assert_eq!(decode(&f64_bytes(-1.0)), wrong);
        assert_eq!(decode(&f64_bytes(f64::NAN)), wrong);
        assert_eq!(decode(&f64_bytes(f64::INFINITY)), wrong);
        assert_eq!(decode(&f64_bytes(1.8446744073709552e19)), wrong);
        assert_eq!(decode(&[0x20]), wrong);
        assert_eq!(decode(&t("3")), wrong);
    }

    #[test]
    fn an_indefinite_length_map_with_indefinite_strings_decodes() {
        let bytes = cat(&[
            &[0xbf],
            &t("type"),
            &t("doc-unavailable"),
            &t("senderId"),
            &[0x7f],
            &t("ser"),
            &t("ver"),
            &[0xff],
            &t("targetId"),
            &t("p"),
            &t("documentId"),
            &t(DOC),
            &[0xff],
        ]);
        assert_eq!(
            Message::decode(&bytes).unwrap(),
            Message::DocUnavailable(DocUnavailable {
                sender_id: PeerId::new("server"),
                target_id: PeerId::new("p"),
                document_id: doc_id(),
            })
        );
    }

    #[test]
    fn indefinite_and_tagged_data_byte_strings_are_accepted() {
        let request = |data: &[u8]| {
            cat(&[
                &js_map(5),
                &t("type"),
                &t("request"),
                &t("senderId"),
                &t("a"),
                &t("targetId"),
                &t("b"),
                &t("documentId"),
                &t(DOC),
                &t("data"),
                data,
            ])
        };
        let expected = Message::Request(DocMessage {
            sender_id: PeerId::new("a"),
            target_id: PeerId::new("b"),
            document_id: doc_id(),
            data: vec![1, 2, 3, 4],
        });
        let indefinite = cat(&[&[0x5f], &b(&[1, 2]), &b(&[]), &b(&[3, 4]), &[0xff]]);
        assert_eq!(Message::decode(&request(&indefinite)).unwrap(), expected);
        let tagged = cat(&[&[0xd8, 0x40], &b(&[1, 2, 3, 4])]);
        assert_eq!(Message::decode(&request(&tagged)).unwrap(), expected);
        assert_eq!(
            Message::decode(&request(&[0x84, 1, 2, 3, 4])),
            Err(DecodeError::WrongType {
                field: "data",
                expected: "a byte string"
            })
        );
    }

    #[test]
    fn a_document_id_may_be_sixteen_raw_bytes_as_samod_sends_it() {
        let bytes = cat(&[
            &js_map(4),
            &t("type"),
            &t("doc-unavailable"),
            &t("senderId"),
            &t("a"),
            &t("targetId"),
            &t("b"),
            &t("documentId"),
            &b(doc_id().as_bytes()),
        ]);
        assert!(matches!(
            Message::decode(&bytes).unwrap(),
            Message::DocUnavailable(DocUnavailable { document_id, .. }) if document_id == doc_id()
        ));
    }

    fn doc_unavailable_with_id(id: &[u8]) -> Vec<u8> {
        cat(&[
            &js_map(4),
            &t("type"),
            &t("doc-unavailable"),
            &t("senderId"),
            &t("a"),
            &t("targetId"),
            &t("b"),
            &t("documentId"),
            id,
        ])
    }

    #[test]
    fn a_document_id_that_is_not_bs58check_of_sixteen_bytes_is_invalid() {
        for id in [
            t("4NMNnkMhL8jXrdJ9jamS58PAVdXv"),
            t("not-an-id"),
            t(""),
            b(&[1, 2, 3]),
        ] {
            assert!(matches!(
                Message::decode(&doc_unavailable_with_id(&id)),
                Err(DecodeError::InvalidDocumentId(_))
            ));
        }
    }

    #[test]
    fn errors_quote_at_most_a_short_prefix_of_the_input() {
        let huge = "x".repeat(1 << 20);
        let error = Message::decode(&doc_unavailable_with_id(&t(&huge))).unwrap_err();
        assert!(matches!(error, DecodeError::InvalidDocumentId(_)));
        assert!(error.to_string().len() < 200, "{error}");
    }

    #[test]
    fn an_unknown_type_decodes_to_unknown_whatever_its_other_fields() {
        let bytes = cat(&[
            &js_map(3),
            &t("type"),
            &t("foo"),
            &t("documentId"),
            &[0x05],
            &t("data"),
            &t("text, not bytes"),
        ]);
        assert_eq!(
            Message::decode(&bytes).unwrap(),
            Message::Unknown {
                message_type: "foo".into()
            }
        );
    }

    #[test]
    fn a_missing_sender_id_is_a_missing_field() {
        let bytes = cat(&[&js_map(1), &t("type"), &t("leave")]);
        assert_eq!(
            Message::decode(&bytes),
            Err(DecodeError::MissingField("senderId"))
        );
        let undefined = cat(&[&js_map(2), &t("type"), &t("leave"), &t("senderId"), &[0xf7]]);
        assert_eq!(
            Message::decode(&undefined),
            Err(DecodeError::MissingField("senderId"))
        );
    }

    #[test]
    fn a_missing_type_is_a_missing_field() {
        let bytes = cat(&[&js_map(1), &t("senderId"), &t("a")]);
        assert_eq!(
            Message::decode(&bytes),
            Err(DecodeError::MissingField("type"))
        );
    }

    #[test]
    fn a_type_that_is_not_text_is_a_wrong_type() {
        let bytes = cat(&[&js_map(1), &t("type"), &[0x01]]);
        assert_eq!(
            Message::decode(&bytes),
            Err(DecodeError::WrongType {
                field: "type",
                expected: "a text string"
            })
        );
    }

    #[test]
    fn an_error_message_needs_only_its_text() {
        let bytes = cat(&[&js_map(2), &t("type"), &t("error"), &t("message"), &t("no")]);
        assert_eq!(
            Message::decode(&bytes).unwrap(),
            Message::Error(ErrorMessage {
                sender_id: None,
                target_id: None,
                message: "no".into(),
            })
        );
    }

    #[test]
    fn a_peer_without_metadata_gets_default_metadata_and_legacy_metadata_key_is_read() {
        let peer = |extra: &[u8], entries: u16| {
            cat(&[
                &js_map(entries),
                &t("type"),
                &t("peer"),
                &t("senderId"),
                &t("server"),
                &t("targetId"),
                &t("p"),
                &t("selectedProtocolVersion"),
                &t("1"),
                extra,
            ])
        };
        let expected = |peer_metadata| {
            Message::Peer(Peer {
                sender_id: PeerId::new("server"),
                target_id: PeerId::new("p"),
                peer_metadata,
                selected_protocol_version: "1".into(),
            })
        };
        assert_eq!(
            Message::decode(&peer(&[], 4)).unwrap(),
            expected(PeerMetadata::default())
        );
        let legacy = cat(&[&t("metadata"), &[0xa1], &t("storageId"), &t("s-1")]);
        assert_eq!(
            Message::decode(&peer(&legacy, 5)).unwrap(),
            expected(PeerMetadata {
                storage_id: Some(StorageId::new("s-1")),
                is_ephemeral: None,
            })
        );
    }

    #[test]
    fn a_duplicated_field_is_refused() {
        let bytes = cat(&[
            &js_map(3),
            &t("type"),
            &t("leave"),
            &t("senderId"),
            &t("a"),
            &t("senderId"),
            &t("b"),
        ]);
        assert_eq!(
            Message::decode(&bytes),
            Err(DecodeError::DuplicateField("senderId"))
        );
    }

    #[test]
    fn remote_heads_from_js_with_float_timestamps_decode() {
        let bytes = cat(&[
            &js_map(5),
            &t("type"),
            &t("remote-heads-changed"),
            &t("senderId"),
            &t("a"),
            &t("targetId"),
            &t("b"),
            &t("documentId"),
            &t(DOC),
            &t("newHeads"),
            &js_map(1),
            &t("storage-1"),
            &js_map(2),
            &t("heads"),
            &[0x81],
            &t("h1"),
            &t("timestamp"),
            &f64_bytes(1_712_345_678_901.0),
        ]);
        let Message::RemoteHeadsChanged(m) = Message::decode(&bytes).unwrap() else {
            panic!("wrong variant");
        };
        assert_eq!(
            m.new_heads[&StorageId::new("storage-1")],
            RemoteHeads {
                heads: vec!["h1".into()],
                timestamp: 1_712_345_678_901.0,
            }
        );
    }

    #[test]
    fn trailing_bytes_after_the_map_are_refused() {
        let mut bytes = Message::Leave {
            sender_id: PeerId::new("a"),
        }
        .encode();
        bytes.push(0x00);
        assert_eq!(Message::decode(&bytes), Err(DecodeError::TrailingBytes));
    }

    #[test]
    fn empty_input_and_non_maps_are_refused() {
        assert_eq!(Message::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(Message::decode(&[0x80]), Err(DecodeError::NotAMap));
        assert_eq!(Message::decode(&t("join")), Err(DecodeError::NotAMap));
        assert!(matches!(
            Message::decode(&[0xff]),
            Err(DecodeError::NotAMap)
        ));
    }

    #[test]
    fn a_deeply_nested_unknown_value_is_an_error_not_a_stack_overflow() {
        let prefix = cat(&[
            &js_map(3),
            &t("type"),
            &t("leave"),
            &t("senderId"),
            &t("a"),
            &t("x"),
        ]);
        for (open, close) in [(0x81u8, None), (0x9f, Some(0xffu8)), (0xa1, None)] {
            let mut bytes = prefix.clone();
            for _ in 0..10_000 {
                bytes.push(open);
                if open == 0xa1 {
                    bytes.extend_from_slice(&t("k"));
                }
            }
            bytes.push(0x00);
            if let Some(close) = close {
                bytes.extend(std::iter::repeat_n(close, 10_000));
            }
            assert_eq!(Message::decode(&bytes), Err(DecodeError::TooDeep));
        }
        // Tags are not nesting, but a long chain must not recurse either.
        let mut tags = prefix.clone();
        tags.extend(std::iter::repeat_n(0xc0, 100_000));
        tags.push(0x00);
        assert!(Message::decode(&tags).is_ok());
    }

    #[test]
    fn a_huge_declared_length_without_data_is_truncated_not_allocated() {
        let array = cat(&[
            &js_map(2),
            &t("type"),
            &t("join"),
            &t("supportedProtocolVersions"),
        ]);
        let mut bytes = array;
        bytes.extend_from_slice(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(Message::decode(&bytes), Err(DecodeError::Truncated));
        let data = cat(&[
            &[0xbb, 0, 0, 0, 0, 0, 0, 0, 2],
            &t("type"),
            &t("sync"),
            &t("data"),
        ]);
        let mut bytes = data;
        bytes.extend_from_slice(&[0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(Message::decode(&bytes), Err(DecodeError::Truncated));
    }

    #[test]
    fn an_encoded_peer_is_exactly_a_definite_map_without_undefined_values() {
        let peer = Message::Peer(Peer {
            sender_id: PeerId::new("server"),
            target_id: PeerId::new("peer-1"),
            peer_metadata: PeerMetadata {
                storage_id: Some(StorageId::new("s1")),
                is_ephemeral: Some(false),
            },
            selected_protocol_version: "1".into(),
        });
        let expected = cat(&[
            &[0xa5],
            &t("type"),
            &t("peer"),
            &t("senderId"),
            &t("server"),
            &t("targetId"),
            &t("peer-1"),
            &t("peerMetadata"),
            &[0xa2],
            &t("storageId"),
            &t("s1"),
            &t("isEphemeral"),
            &[0xf4],
            &t("selectedProtocolVersion"),
            &t("1"),
        ]);
        assert_eq!(peer.encode(), expected);

        let no_storage = Message::Peer(Peer {
            sender_id: PeerId::new("server"),
            target_id: PeerId::new("peer-1"),
            peer_metadata: PeerMetadata {
                storage_id: None,
                is_ephemeral: Some(true),
            },
            selected_protocol_version: "1".into(),
        });
        let bytes = no_storage.encode();
        assert!(!bytes.contains(&0xf7), "no undefined may be written");
        assert_eq!(
            after_key(&bytes, "peerMetadata")[..1 + t("isEphemeral").len() + 1],
            cat(&[&[0xa1], &t("isEphemeral"), &[0xf5]])
        );
    }

    #[test]
    fn data_is_encoded_as_an_untagged_definite_byte_string() {
        let data: Vec<u8> = (0..200).map(|i| i as u8).collect();
        let sync = Message::Sync(DocMessage {
            sender_id: PeerId::new("server"),
            target_id: PeerId::new("p"),
            document_id: doc_id(),
            data: data.clone(),
        });
        let bytes = sync.encode();
        let value = after_key(&bytes, "data");
        // 0x58: major type 2 (byte string), one-byte length follows.
        assert_eq!(value[0], 0x58);
        assert_eq!(value[0] >> 5, 2);
        assert_eq!(value[1], 200);
        assert_eq!(&value[2..202], data.as_slice());
        assert_eq!(bytes[0], 0xa5);
        assert_eq!(after_key(&bytes, "documentId")[..t(DOC).len()], t(DOC));
    }

    #[test]
    fn timestamps_are_encoded_as_float64_and_counts_as_unsigned_integers() {
        let heads = Message::RemoteHeadsChanged(RemoteHeadsChanged {
            sender_id: PeerId::new("a"),
            target_id: PeerId::new("b"),
            document_id: doc_id(),
            new_heads: BTreeMap::from([(
                StorageId::new("s"),
                RemoteHeads {
                    heads: vec![],
                    timestamp: 1_700_000_000_000.0,
                },
            )]),
        });
        assert_eq!(
            after_key(&heads.encode(), "timestamp"),
            f64_bytes(1_700_000_000_000.0)
        );
        let ephemeral = Message::Ephemeral(Ephemeral {
            sender_id: PeerId::new("a"),
            target_id: PeerId::new("b"),
            document_id: doc_id(),
            data: vec![0xa0],
            count: 300,
            session_id: "s".into(),
        });
        assert_eq!(
            after_key(&ephemeral.encode(), "count")[..3],
            [0x19, 0x01, 0x2c]
        );
    }

    #[test]
    fn unknown_encodes_as_a_map_with_only_its_type() {
        let unknown = Message::Unknown {
            message_type: "foo".into(),
        };
        assert_eq!(unknown.encode(), cat(&[&[0xa1], &t("type"), &t("foo")]));
    }

    // --- property tests ----------------------------------------------------

    fn arb_peer_id() -> impl Strategy<Value = PeerId> {
        any::<String>().prop_map(PeerId)
    }

    fn arb_storage_id() -> impl Strategy<Value = StorageId> {
        any::<String>().prop_map(StorageId)
    }

    fn arb_document_id() -> impl Strategy<Value = DocumentId> {
        any::<[u8; 16]>().prop_map(DocumentId::from_bytes)
    }

    fn arb_data() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..4096)
    }

    fn arb_texts() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(any::<String>(), 0..5)
    }

    fn arb_peer_metadata() -> impl Strategy<Value = PeerMetadata> {
        (
            proptest::option::of(arb_storage_id()),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(|(storage_id, is_ephemeral)| PeerMetadata {
                storage_id,
                is_ephemeral,
            })
    }

    fn arb_doc_message() -> impl Strategy<Value = DocMessage> {
        (arb_peer_id(), arb_peer_id(), arb_document_id(), arb_data()).prop_map(
            |(sender_id, target_id, document_id, data)| DocMessage {
                sender_id,
                target_id,
                document_id,
                data,
            },
        )
    }

    fn arb_join() -> impl Strategy<Value = Message> {
        (
            arb_peer_id(),
            proptest::option::of(arb_peer_metadata()),
            proptest::option::of(arb_texts()),
        )
            .prop_map(|(sender_id, peer_metadata, supported_protocol_versions)| {
                Message::Join(Join {
                    sender_id,
                    peer_metadata,
                    supported_protocol_versions,
                })
            })
    }

    fn arb_peer() -> impl Strategy<Value = Message> {
        (
            arb_peer_id(),
            arb_peer_id(),
            arb_peer_metadata(),
            any::<String>(),
        )
            .prop_map(
                |(sender_id, target_id, peer_metadata, selected_protocol_version)| {
                    Message::Peer(Peer {
                        sender_id,
                        target_id,
                        peer_metadata,
                        selected_protocol_version,
                    })
                },
            )
    }

    fn arb_leave() -> impl Strategy<Value = Message> {
        arb_peer_id().prop_map(|sender_id| Message::Leave { sender_id })
    }

    fn arb_error() -> impl Strategy<Value = Message> {
        (
            proptest::option::of(arb_peer_id()),
            proptest::option::of(arb_peer_id()),
            any::<String>(),
        )
            .prop_map(|(sender_id, target_id, message)| {
                Message::Error(ErrorMessage {
                    sender_id,
                    target_id,
                    message,
                })
            })
    }

    fn arb_request() -> impl Strategy<Value = Message> {
        arb_doc_message().prop_map(Message::Request)
    }

    fn arb_sync() -> impl Strategy<Value = Message> {
        arb_doc_message().prop_map(Message::Sync)
    }

    fn arb_doc_unavailable() -> impl Strategy<Value = Message> {
        (arb_peer_id(), arb_peer_id(), arb_document_id()).prop_map(
            |(sender_id, target_id, document_id)| {
                Message::DocUnavailable(DocUnavailable {
                    sender_id,
                    target_id,
                    document_id,
                })
            },
        )
    }

    fn arb_ephemeral() -> impl Strategy<Value = Message> {
        (arb_doc_message(), any::<u64>(), any::<String>()).prop_map(|(doc, count, session_id)| {
            Message::Ephemeral(Ephemeral {
                sender_id: doc.sender_id,
                target_id: doc.target_id,
                document_id: doc.document_id,
                data: doc.data,
                count,
                session_id,
            })
        })
    }

    fn arb_remote_subscription_change() -> impl Strategy<Value = Message> {
        let ids = || proptest::option::of(prop::collection::vec(arb_storage_id(), 0..5));
        (arb_peer_id(), arb_peer_id(), ids(), ids()).prop_map(
            |(sender_id, target_id, add, remove)| {
                Message::RemoteSubscriptionChange(RemoteSubscriptionChange {
                    sender_id,
                    target_id,
                    add,
                    remove,
                })
            },
        )
    }

    fn arb_remote_heads_changed() -> impl Strategy<Value = Message> {
        let heads = (arb_texts(), 0.0..2e12f64)
            .prop_map(|(heads, timestamp)| RemoteHeads { heads, timestamp });
        (
            arb_peer_id(),
            arb_peer_id(),
            arb_document_id(),
            prop::collection::btree_map(arb_storage_id(), heads, 0..4),
        )
            .prop_map(|(sender_id, target_id, document_id, new_heads)| {
                Message::RemoteHeadsChanged(RemoteHeadsChanged {
                    sender_id,
                    target_id,
                    document_id,
                    new_heads,
                })
            })
    }

    fn arb_unknown() -> impl Strategy<Value = Message> {
        const KNOWN: [&str; 10] = [
            "join",
            "peer",
            "leave",
            "error",
            "request",
            "sync",
            "doc-unavailable",
            "ephemeral",
            "remote-subscription-change",
            "remote-heads-changed",
        ];
        any::<String>()
            .prop_filter("a known type", |t| !KNOWN.contains(&t.as_str()))
            .prop_map(|message_type| Message::Unknown { message_type })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            arb_join(),
            arb_peer(),
            arb_leave(),
            arb_error(),
            arb_request(),
            arb_sync(),
            arb_doc_unavailable(),
            arb_ephemeral(),
            arb_remote_subscription_change(),
            arb_remote_heads_changed(),
            arb_unknown(),
        ]
    }

    fn round_trips(message: &Message) -> Result<(), TestCaseError> {
        prop_assert_eq!(&Message::decode(&message.encode()), &Ok(message.clone()));
        Ok(())
    }

    proptest! {
        #[test]
        fn join_round_trips(m in arb_join()) { round_trips(&m)?; }

        #[test]
        fn peer_round_trips(m in arb_peer()) { round_trips(&m)?; }

        #[test]
        fn leave_round_trips(m in arb_leave()) { round_trips(&m)?; }

        #[test]
        fn error_round_trips(m in arb_error()) { round_trips(&m)?; }

        #[test]
        fn request_round_trips(m in arb_request()) { round_trips(&m)?; }

        #[test]
        fn sync_round_trips(m in arb_sync()) { round_trips(&m)?; }

        #[test]
        fn doc_unavailable_round_trips(m in arb_doc_unavailable()) { round_trips(&m)?; }

        #[test]
        fn ephemeral_round_trips(m in arb_ephemeral()) { round_trips(&m)?; }

        #[test]
        fn remote_subscription_change_round_trips(m in arb_remote_subscription_change()) {
            round_trips(&m)?;
        }

        #[test]
        fn remote_heads_changed_round_trips(m in arb_remote_heads_changed()) {
            round_trips(&m)?;
        }

        #[test]
        fn unknown_round_trips(m in arb_unknown()) { round_trips(&m)?; }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn decoding_a_corrupted_message_never_panics(
            m in arb_message(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = m.encode();
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn every_strict_prefix_of_a_message_is_an_error(m in arb_message()) {
            let bytes = m.encode();
            for end in 0..bytes.len() {
                prop_assert!(Message::decode(&bytes[..end]).is_err(), "prefix of {} bytes decoded", end);
            }
        }

        #[test]
        fn any_byte_after_a_message_is_trailing(m in arb_message(), extra in any::<u8>()) {
            let mut bytes = m.encode();
            bytes.push(extra);
            prop_assert_eq!(Message::decode(&bytes), Err(DecodeError::TrailingBytes));
        }
    }
}
