//! The handshake fed what a hostile client may send as its first frame:
//! arbitrary bytes, and `join` maps garbled every way the wire allows (huge
//! peer and storage ids, wrong types, missing and duplicated fields, deeply
//! nested values, indefinite lengths, truncation, overwritten bytes). The
//! frame goes through the same two steps as on `/sync`: `Message::decode`,
//! then `handshake::answer_join` if it is a `join`. Whatever comes in, nothing
//! panics, and the outcome is a short decode error, a `peer` naming a peer id
//! within the limits, or a short `error` message.
//!
//! The CBOR is built by hand here rather than with the strategies in
//! `wire.rs`, which are private to its unit tests and only make valid
//! messages.
//!
//! Kept to a bounded number of cases so CI runs it on every commit; set
//! `PROPTEST_CASES` for a longer run.

use backchannel_sync::handshake::{self, MAX_PEER_ID_BYTES, MAX_STORAGE_ID_BYTES, ServerIdentity};
use backchannel_sync::{Message, PROTOCOL_VERSION, PeerId, StorageId};
use proptest::prelude::*;

fn server() -> ServerIdentity {
    ServerIdentity {
        peer_id: PeerId::new("backchannel-server"),
        storage_id: StorageId::new("6c2f4b0e-0000-4000-8000-000000000000"),
    }
}

/// Decode errors are sent to the client and logged, so they quote little.
const MAX_ERROR_CHARS: usize = 256;

/// Every reply the handshake makes names at most one client peer id (itself
/// bounded) besides the server's own ids and a fixed sentence.
const MAX_REPLY_BYTES: usize = 512;

/// A CBOR data item, with the encoding choices a decoder must cope with.
#[derive(Debug, Clone)]
enum Cbor {
    Unsigned(u64),
    Negative(u64),
    Bytes(Vec<u8>),
    Text(String),
    /// `len` characters of `fill`: cheap to build at a megabyte.
    LongText {
        fill: char,
        len: usize,
    },
    Array {
        items: Vec<Cbor>,
        indefinite: bool,
    },
    Map {
        entries: Vec<(Cbor, Cbor)>,
        indefinite: bool,
    },
    Tag(u64, Box<Cbor>),
    Simple(u8),
    Float(f64),
    /// `depth` arrays (or maps) one inside the other around `inner`.
    Nested {
        depth: usize,
        maps: bool,
        inner: Box<Cbor>,
    },
}

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let major = major << 5;
    match n {
        0..=23 => out.push(major | n as u8),
        24..=0xff => out.extend([major | 24, n as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend((n as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend(n.to_be_bytes());
        }
    }
}

impl Cbor {
    fn text(text: &str) -> Self {
        Self::Text(text.to_string())
    }

    fn map(entries: Vec<(Cbor, Cbor)>) -> Self {
        Self::Map {
            entries,
            indefinite: false,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Unsigned(n) => head(out, 0, *n),
            Self::Negative(n) => head(out, 1, *n),
            Self::Bytes(bytes) => {
                head(out, 2, bytes.len() as u64);
                out.extend(bytes);
            }
            Self::Text(text) => {
                head(out, 3, text.len() as u64);
                out.extend(text.as_bytes());
            }
            Self::LongText { fill, len } => {
                let mut buffer = [0; 4];
                let fill = fill.encode_utf8(&mut buffer).as_bytes();
                head(out, 3, (fill.len() * len) as u64);
                for _ in 0..*len {
                    out.extend(fill);
                }
            }
            Self::Array { items, indefinite } => {
                if *indefinite {
                    out.push(0x9f);
                } else {
                    head(out, 4, items.len() as u64);
                }
                for item in items {
                    item.write(out);
                }
                if *indefinite {
                    out.push(0xff);
                }
            }
            Self::Map {
                entries,
                indefinite,
            } => {
                if *indefinite {
                    out.push(0xbf);
                } else {
                    head(out, 5, entries.len() as u64);
                }
                for (key, value) in entries {
                    key.write(out);
                    value.write(out);
                }
                if *indefinite {
                    out.push(0xff);
                }
            }
            Self::Tag(tag, inner) => {
                head(out, 6, *tag);
                inner.write(out);
            }
            // 24..=31 are reserved or break codes: garbage a decoder must refuse.
            Self::Simple(n) => out.push(0xe0 | (n & 0x1f)),
            Self::Float(x) => {
                out.push(0xfb);
                out.extend(x.to_be_bytes());
            }
            Self::Nested { depth, maps, inner } => {
                for _ in 0..*depth {
                    if *maps {
                        out.push(0xa1);
                        Self::text("k").write(out);
                    } else {
                        out.push(0x81);
                    }
                }
                inner.write(out);
            }
        }
    }
}

fn arb_leaf() -> impl Strategy<Value = Cbor> {
    prop_oneof![
        any::<u64>().prop_map(Cbor::Unsigned),
        any::<u64>().prop_map(Cbor::Negative),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(Cbor::Bytes),
        any::<String>().prop_map(Cbor::Text),
        Just(Cbor::text("join")),
        Just(Cbor::text(PROTOCOL_VERSION)),
        any::<u8>().prop_map(Cbor::Simple),
        any::<f64>().prop_map(Cbor::Float),
    ]
}

/// Any CBOR value, a few levels deep, sometimes wrapped far deeper.
fn arb_value() -> impl Strategy<Value = Cbor> {
    let tree = arb_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..6), any::<bool>())
                .prop_map(|(items, indefinite)| Cbor::Array { items, indefinite }),
            (
                prop::collection::vec((inner.clone(), inner.clone()), 0..4),
                any::<bool>()
            )
                .prop_map(|(entries, indefinite)| Cbor::Map {
                    entries,
                    indefinite
                }),
            (any::<u64>(), inner).prop_map(|(tag, inner)| Cbor::Tag(tag, Box::new(inner))),
        ]
    });
    prop_oneof![
        6 => tree,
        1 => (0..100usize, any::<bool>(), arb_leaf()).prop_map(|(depth, maps, inner)| {
            Cbor::Nested { depth, maps, inner: Box::new(inner) }
        }),
    ]
}

/// Lengths that matter for ids: short, at each limit, and far beyond it.
fn arb_id_len(limit: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0..32usize,
        4 => (limit - 1)..=(limit + 1),
        2 => 0..(4 * limit),
        1 => (64 * 1024usize)..=(1024 * 1024),
    ]
}

fn arb_id(limit: usize) -> impl Strategy<Value = Cbor> {
    (
        arb_id_len(limit),
        prop::sample::select(vec!['p', 'é', '€', '😀']),
    )
        .prop_map(|(len, fill)| Cbor::LongText { fill, len })
}

/// A field's value: well typed most of the time, else anything.
fn arb_field(good: impl Strategy<Value = Cbor> + 'static) -> impl Strategy<Value = Option<Cbor>> {
    prop_oneof![
        10 => good.prop_map(Some),
        2 => arb_value().prop_map(Some),
        1 => Just(Some(Cbor::Simple(22))), // null
        1 => Just(Some(Cbor::Simple(23))), // undefined
        1 => Just(None),
    ]
}

fn arb_versions() -> impl Strategy<Value = Cbor> {
    let version = prop_oneof![
        4 => Just(Cbor::text(PROTOCOL_VERSION)),
        2 => any::<String>().prop_map(Cbor::Text),
        1 => arb_leaf(),
    ];
    (
        prop::collection::vec(version, 0..5),
        any::<bool>(),
        prop_oneof![9 => Just(0usize), 1 => 1_000..20_000usize],
    )
        .prop_map(|(mut items, indefinite, padding)| {
            // A long list whose only acceptable entry comes last.
            items.splice(0..0, (0..padding).map(|_| Cbor::text("0")));
            Cbor::Array { items, indefinite }
        })
}

fn arb_peer_metadata() -> impl Strategy<Value = Cbor> {
    (
        arb_field(arb_id(MAX_STORAGE_ID_BYTES)),
        arb_field(any::<bool>().prop_map(|b| Cbor::Simple(if b { 21 } else { 20 }))),
        any::<bool>(),
    )
        .prop_map(|(storage_id, is_ephemeral, indefinite)| {
            let entries = [("storageId", storage_id), ("isEphemeral", is_ephemeral)]
                .into_iter()
                .filter_map(|(key, value)| Some((Cbor::text(key), value?)))
                .collect();
            Cbor::Map {
                entries,
                indefinite,
            }
        })
}

/// How the encoded frame is damaged before it is sent.
#[derive(Debug, Clone)]
enum Damage {
    None,
    /// Only the first `at` of the bytes arrive.
    Truncated(prop::sample::Index),
    Overwritten(Vec<(prop::sample::Index, u8)>),
    /// Something follows the map.
    Trailing(Vec<u8>),
}

fn arb_damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        10 => Just(Damage::None),
        2 => any::<prop::sample::Index>().prop_map(Damage::Truncated),
        2 => prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
            .prop_map(Damage::Overwritten),
        1 => prop::collection::vec(any::<u8>(), 1..8).prop_map(Damage::Trailing),
    ]
}

/// A `join` frame with each field present, missing, duplicated or mistyped,
/// unknown fields among them, then perhaps damaged.
fn arb_garbled_join() -> impl Strategy<Value = Vec<u8>> {
    let fields = (
        arb_field(Just(Cbor::text("join"))),
        arb_field(arb_id(MAX_PEER_ID_BYTES)),
        arb_field(arb_peer_metadata()),
        arb_field(arb_versions()),
        prop::collection::vec((any::<String>().prop_map(Cbor::Text), arb_value()), 0..3),
        any::<bool>(),
    );
    (
        fields,
        prop_oneof![8 => Just(None), 1 => (0..4usize).prop_map(Some)],
        any::<bool>(),
        arb_damage(),
    )
        .prop_map(
            |(
                (kind, sender, metadata, versions, unknown, indefinite),
                duplicated,
                unknown_first,
                damage,
            )| {
                let mut entries: Vec<(Cbor, Cbor)> = [
                    ("type", kind),
                    ("senderId", sender),
                    ("peerMetadata", metadata),
                    ("supportedProtocolVersions", versions),
                ]
                .into_iter()
                .filter_map(|(key, value)| Some((Cbor::text(key), value?)))
                .collect();
                if let Some(entry) = duplicated.and_then(|index| entries.get(index).cloned()) {
                    entries.push(entry);
                }
                if unknown_first {
                    entries.splice(0..0, unknown);
                } else {
                    entries.extend(unknown);
                }
                let mut bytes = Cbor::Map {
                    entries,
                    indefinite,
                }
                .encode();
                match damage {
                    Damage::None => {}
                    Damage::Truncated(at) => bytes.truncate(at.index(bytes.len().max(1))),
                    Damage::Overwritten(edits) => {
                        for (at, byte) in edits {
                            let at = at.index(bytes.len());
                            bytes[at] = byte;
                        }
                    }
                    Damage::Trailing(extra) => bytes.extend(extra),
                }
                bytes
            },
        )
}

/// A `join` the wire decoder must accept, with the facts that decide its answer.
#[derive(Debug, Clone)]
struct WellFormedJoin {
    sender_len: usize,
    storage_len: Option<usize>,
    versions: Option<Vec<String>>,
}

fn arb_well_formed_join() -> impl Strategy<Value = WellFormedJoin> {
    let version = prop_oneof![Just(PROTOCOL_VERSION.to_string()), "[0-9]{1,3}"];
    (
        arb_id_len(MAX_PEER_ID_BYTES),
        proptest::option::of(arb_id_len(MAX_STORAGE_ID_BYTES)),
        proptest::option::of(prop::collection::vec(version, 0..4)),
    )
        .prop_map(|(sender_len, storage_len, versions)| WellFormedJoin {
            sender_len,
            storage_len,
            versions,
        })
}

impl WellFormedJoin {
    fn encode(&self) -> Vec<u8> {
        let mut entries = vec![
            (Cbor::text("type"), Cbor::text("join")),
            (
                Cbor::text("senderId"),
                Cbor::text(&"p".repeat(self.sender_len)),
            ),
        ];
        if let Some(len) = self.storage_len {
            entries.push((
                Cbor::text("peerMetadata"),
                Cbor::map(vec![
                    (Cbor::text("storageId"), Cbor::text(&"s".repeat(len))),
                    (Cbor::text("isEphemeral"), Cbor::Simple(20)),
                ]),
            ));
        }
        if let Some(versions) = &self.versions {
            entries.push((
                Cbor::text("supportedProtocolVersions"),
                Cbor::Array {
                    items: versions.iter().map(|v| Cbor::text(v)).collect(),
                    indefinite: false,
                },
            ));
        }
        Cbor::map(entries).encode()
    }

    fn acceptable(&self) -> bool {
        self.sender_len <= MAX_PEER_ID_BYTES
            && self
                .storage_len
                .is_none_or(|len| len <= MAX_STORAGE_ID_BYTES)
            && self
                .versions
                .as_ref()
                .is_none_or(|versions| versions.iter().any(|v| v == PROTOCOL_VERSION))
    }
}

/// What the server does with a first frame.
#[derive(Debug)]
enum Outcome {
    /// Not a message: the connection is closed with this decode error.
    Malformed,
    /// A message other than `join`; `/sync` ignores it before the handshake.
    NotAJoin,
    Accepted,
    Refused,
}

/// Runs `bytes` through decode and handshake, checking that every outcome
/// is bounded and clear.
fn first_frame(bytes: &[u8]) -> Result<Outcome, TestCaseError> {
    let join = match Message::decode(bytes) {
        Err(error) => {
            let text = error.to_string();
            prop_assert!(!text.is_empty(), "a decode error without a text");
            prop_assert!(
                text.chars().count() <= MAX_ERROR_CHARS,
                "a decode error of {} chars",
                text.chars().count()
            );
            return Ok(Outcome::Malformed);
        }
        Ok(Message::Join(join)) => join,
        Ok(_) => return Ok(Outcome::NotAJoin),
    };
    let server = server();
    let (reply, outcome) = match handshake::answer_join(&join, &server) {
        Ok(reply) => {
            let Message::Peer(peer) = &reply else {
                return Err(TestCaseError::fail(format!(
                    "accepted with {reply:?}, not a peer"
                )));
            };
            prop_assert!(join.sender_id.as_str().len() <= MAX_PEER_ID_BYTES);
            prop_assert_eq!(&peer.target_id, &join.sender_id);
            prop_assert_eq!(&peer.sender_id, &server.peer_id);
            prop_assert_eq!(peer.selected_protocol_version.as_str(), PROTOCOL_VERSION);
            let storage_id = join
                .peer_metadata
                .as_ref()
                .and_then(|meta| meta.storage_id.as_ref());
            prop_assert!(storage_id.is_none_or(|id| id.as_str().len() <= MAX_STORAGE_ID_BYTES));
            (reply, Outcome::Accepted)
        }
        Err(reply) => {
            let Message::Error(error) = &reply else {
                return Err(TestCaseError::fail(format!(
                    "refused with {reply:?}, not an error"
                )));
            };
            prop_assert!(!error.message.is_empty(), "an error without a text");
            prop_assert_eq!(error.sender_id.as_ref(), Some(&server.peer_id));
            if let Some(target) = &error.target_id {
                prop_assert!(target.as_str().len() <= MAX_PEER_ID_BYTES);
            }
            (reply, Outcome::Refused)
        }
    };
    let encoded = reply.encode();
    prop_assert!(
        encoded.len() <= MAX_REPLY_BYTES,
        "a reply of {} bytes",
        encoded.len()
    );
    prop_assert_eq!(Message::decode(&encoded), Ok(reply));
    Ok(outcome)
}

/// 256 cases unless `PROPTEST_CASES` asks for more (or fewer).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_as_a_first_frame_get_a_clear_outcome(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        first_frame(&bytes)?;
    }

    #[test]
    fn a_garbled_join_gets_a_clear_outcome(bytes in arb_garbled_join()) {
        first_frame(&bytes)?;
    }

    #[test]
    fn any_cbor_value_as_a_first_frame_gets_a_clear_outcome(value in arb_value()) {
        first_frame(&value.encode())?;
    }

    #[test]
    fn a_well_formed_join_is_accepted_exactly_when_its_fields_are_within_the_limits(
        join in arb_well_formed_join(),
    ) {
        let outcome = first_frame(&join.encode())?;
        prop_assert!(
            matches!(
                (join.acceptable(), &outcome),
                (true, Outcome::Accepted) | (false, Outcome::Refused)
            ),
            "{:?} for a join that is {}acceptable",
            outcome,
            if join.acceptable() { "" } else { "not " }
        );
    }
}
