//! Identifiers on the wire: documents, peers and storages.

use std::fmt;
use std::str::FromStr;

/// An automerge-repo document id: 16 random bytes, shown as bs58check
/// (Bitcoin alphabet, 4-byte double-SHA-256 checksum), e.g.
/// `4NMNnkMhL8jXrdJ9jamS58PAVdXu`. Its URL form is `automerge:<id>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentId([u8; 16]);

/// Why a string is not a document id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an automerge document id (expected bs58check of 16 bytes)")]
pub struct InvalidDocumentId(pub String);

impl DocumentId {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// `automerge:<id>`, the form `Repo.find` takes.
    pub fn url(&self) -> String {
        format!("automerge:{self}")
    }

    /// Accepts the bare id or its `automerge:` URL (heads after `#` are ignored).
    pub fn parse_url_or_id(text: &str) -> Result<Self, InvalidDocumentId> {
        let bare = text.strip_prefix("automerge:").unwrap_or(text);
        let bare = bare.split('#').next().unwrap_or(bare);
        bare.parse()
    }
}

impl FromStr for DocumentId {
    type Err = InvalidDocumentId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidDocumentId(text.chars().take(64).collect());
        if text.len() > 40 {
            return Err(invalid());
        }
        let bytes = bs58::decode(text)
            .with_check(None)
            .into_vec()
            .map_err(|_| invalid())?;
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| invalid())?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).with_check().into_string())
    }
}

impl fmt::Debug for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocumentId({self})")
    }
}

/// A peer's id as it announces itself in `join`. Opaque text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub String);

/// A peer's storage id (`peerMetadata.storageId`): stable per device store.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageId(pub String);

macro_rules! text_id {
    ($name:ident) => {
        impl $name {
            pub fn new(text: impl Into<String>) -> Self {
                Self(text.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

text_id!(PeerId);
text_id!(StorageId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_id_from_the_js_docs_parses_and_prints_back() {
        let id: DocumentId = "4NMNnkMhL8jXrdJ9jamS58PAVdXu".parse().unwrap();
        assert_eq!(id.to_string(), "4NMNnkMhL8jXrdJ9jamS58PAVdXu");
        assert_eq!(id.url(), "automerge:4NMNnkMhL8jXrdJ9jamS58PAVdXu");
    }

    #[test]
    fn a_url_or_a_bare_id_both_parse() {
        let id = DocumentId::parse_url_or_id("automerge:4NMNnkMhL8jXrdJ9jamS58PAVdXu").unwrap();
        assert_eq!(id, "4NMNnkMhL8jXrdJ9jamS58PAVdXu".parse().unwrap());
    }

    #[test]
    fn a_bad_checksum_or_length_is_refused() {
        assert!(
            "4NMNnkMhL8jXrdJ9jamS58PAVdXv"
                .parse::<DocumentId>()
                .is_err()
        );
        assert!("".parse::<DocumentId>().is_err());
        assert!("not base58 at all!".parse::<DocumentId>().is_err());
        let short = bs58::encode([1u8; 8]).with_check().into_string();
        assert!(short.parse::<DocumentId>().is_err());
    }
}
