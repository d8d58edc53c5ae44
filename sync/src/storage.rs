//! How documents lie in the key/value store, and how to rebuild one.
//!
//! ```text
//! doc/<id>/meta                 who created the document (UTF-8 user id)
//! doc/<id>/c/<change hash>      changes appended as they arrived (raw change chunks)
//! doc/<id>/s/<name>             snapshots made by compaction (`Automerge::save`)
//! doc/<id>/sync/<user>/<hex>     a device's persisted `sync::State` (shared heads),
//!                               by user and storage id (hex), after the time it was saved
//! ```
//!
//! Every chunk is loadable by `Automerge::load_incremental`, so a document is
//! the union of its snapshots and chunks in any order. Compaction writes a
//! snapshot and deletes the chunks it covers in one atomic batch, so a crash
//! at any point leaves a loadable document.

use automerge::Automerge;

use crate::ids::{DocumentId, StorageId};

/// A write the caller must apply to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageWrite {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

pub fn document_prefix(id: &DocumentId) -> String {
    format!("doc/{id}/")
}

pub fn meta_key(id: &DocumentId) -> String {
    format!("doc/{id}/meta")
}

pub fn change_chunk_key(id: &DocumentId, first_change: &automerge::ChangeHash) -> String {
    format!("doc/{id}/c/{first_change}")
}

pub fn snapshot_key(id: &DocumentId, name: &str) -> String {
    format!("doc/{id}/s/{name}")
}

/// Marks a document whose derived state (indexes, counts) may lag behind its
/// stored changes; outside `doc/`, so loads never see it.
pub const CHANGED_PREFIX: &str = "changed/";

pub fn changed_key(id: &DocumentId) -> String {
    format!("{CHANGED_PREFIX}{id}")
}

/// Where the sync state of `user`'s device store `storage_id` lies. The
/// storage id is the client's word, so it is scoped by the user it came
/// from (one user cannot read or overwrite another's state) and hex-encoded
/// (it cannot reach outside its key).
pub fn sync_state_key(id: &DocumentId, user: &str, storage_id: &StorageId) -> String {
    let mut key = format!("doc/{id}/sync/{user}/");
    for byte in storage_id.as_str().bytes() {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// The value stored under [`sync_state_key`]: when it was saved (so the
/// oldest states can be dropped first), then the encoded state.
pub fn sync_state_value(saved_at_ms: u64, state: &automerge::sync::State) -> Vec<u8> {
    let mut value = saved_at_ms.to_be_bytes().to_vec();
    value.extend(state.encode());
    value
}

/// A device's stored sync state, as [`assemble`] found it.
#[derive(Debug)]
pub struct StoredSyncState {
    pub user: String,
    pub storage_id: StorageId,
    pub saved_at_ms: u64,
    pub state: automerge::sync::State,
}

fn parse_sync_state(rest: &str, value: &[u8]) -> Option<StoredSyncState> {
    let (user, hex) = rest.rsplit_once('/')?;
    if user.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let storage_id = StorageId::new(String::from_utf8(bytes).ok()?);
    let saved_at_ms = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let state = automerge::sync::State::decode(&value[8..]).ok()?;
    Some(StoredSyncState {
        user: user.to_string(),
        storage_id,
        saved_at_ms,
        state,
    })
}

/// What the store holds for one document, rebuilt.
#[derive(Debug)]
pub struct StoredDocument {
    pub doc: Automerge,
    /// The creator's user id.
    pub creator: String,
    /// Keys of the snapshots and change chunks the document was built from.
    pub content_keys: Vec<String>,
    /// Persisted sync states by user and storage id, oldest first.
    pub sync_states: Vec<StoredSyncState>,
    /// Keys of stored sync states that no longer parse (an older layout,
    /// unscoped by user): the engine deletes them.
    pub stale_sync_keys: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("stored chunk {key} of document {document} does not load: {reason}")]
    CorruptChunk {
        document: String,
        key: String,
        reason: String,
    },
    #[error("document {0} has content but no creator record")]
    MissingMeta(String),
}

/// Rebuilds a document from every entry under its [`document_prefix`].
/// Returns `Ok(None)` when nothing is stored: the document does not exist.
/// This is the CPU-heavy part of a load; callers run it off their IO threads.
pub fn assemble(
    id: &DocumentId,
    entries: Vec<(String, Vec<u8>)>,
) -> Result<Option<StoredDocument>, LoadError> {
    let prefix = document_prefix(id);
    let mut doc = Automerge::new();
    let mut creator = None;
    let mut content_keys = Vec::new();
    let mut sync_states = Vec::new();
    let mut stale_sync_keys = Vec::new();
    // Snapshots first: loading the big compact form before the small chunks
    // is the fast path through `load_incremental`.
    let mut ordered: Vec<&(String, Vec<u8>)> = entries.iter().collect();
    ordered.sort_by_key(|(key, _)| !key[prefix.len()..].starts_with("s/"));
    for (key, value) in ordered {
        let Some(rest) = key.strip_prefix(&prefix) else {
            continue;
        };
        if rest == "meta" {
            creator = Some(String::from_utf8_lossy(value).into_owned());
        } else if rest.starts_with("c/") || rest.starts_with("s/") {
            doc.load_incremental(value)
                .map_err(|error| LoadError::CorruptChunk {
                    document: id.to_string(),
                    key: key.clone(),
                    reason: error.to_string(),
                })?;
            content_keys.push(key.clone());
        } else if let Some(rest) = rest.strip_prefix("sync/") {
            // A state that no longer decodes only costs a longer first sync.
            match parse_sync_state(rest, value) {
                Some(state) => sync_states.push(state),
                None => stale_sync_keys.push(key.clone()),
            }
        }
    }
    sync_states.sort_by_key(|state| state.saved_at_ms);
    match creator {
        Some(creator) => Ok(Some(StoredDocument {
            doc,
            creator,
            content_keys,
            sync_states,
            stale_sync_keys,
        })),
        None if content_keys.is_empty() => Ok(None),
        None => Err(LoadError::MissingMeta(id.to_string())),
    }
}

/// The writes that replace `content_keys` by one snapshot of `doc`.
pub fn compaction_writes(
    id: &DocumentId,
    doc: &Automerge,
    content_keys: &[String],
    snapshot_name: &str,
) -> Vec<StorageWrite> {
    let snapshot = snapshot_key(id, snapshot_name);
    let mut writes = vec![StorageWrite::Put {
        key: snapshot.clone(),
        value: doc.save(),
    }];
    writes.extend(
        content_keys
            .iter()
            .filter(|key| **key != snapshot)
            .map(|key| StorageWrite::Delete { key: key.clone() }),
    );
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ROOT, ReadDoc};

    fn id() -> DocumentId {
        DocumentId::from_bytes([7; 16])
    }

    fn doc_with(values: &[i64]) -> Automerge {
        let mut doc = Automerge::new();
        for value in values {
            let mut tx = doc.transaction();
            tx.put(ROOT, "n", *value).unwrap();
            tx.commit();
        }
        doc
    }

    #[test]
    fn nothing_stored_means_no_document() {
        assert!(assemble(&id(), vec![]).unwrap().is_none());
    }

    #[test]
    fn chunks_and_a_snapshot_assemble_into_the_whole_document() {
        let doc = doc_with(&[1, 2, 3]);
        let first_two = doc.get_changes(&[]).into_iter().take(2);
        let snapshot = doc
            .fork_at(&[first_two.last().unwrap().hash()])
            .unwrap()
            .save();
        let entries = vec![
            (meta_key(&id()), b"user-1".to_vec()),
            (
                change_chunk_key(&id(), &doc.get_heads()[0]),
                doc.save_after(&[]),
            ),
            (snapshot_key(&id(), "a"), snapshot),
        ];
        let stored = assemble(&id(), entries).unwrap().unwrap();
        assert_eq!(stored.creator, "user-1");
        assert_eq!(stored.doc.get_heads(), doc.get_heads());
        assert_eq!(stored.content_keys.len(), 2);
        let (value, _) = stored.doc.get(ROOT, "n").unwrap().unwrap();
        assert_eq!(value.as_i64(), Some(3));
    }

    #[test]
    fn a_corrupt_chunk_is_an_error_not_an_empty_document() {
        let entries = vec![
            (meta_key(&id()), b"user-1".to_vec()),
            (snapshot_key(&id(), "x"), b"not automerge".to_vec()),
        ];
        assert!(matches!(
            assemble(&id(), entries),
            Err(LoadError::CorruptChunk { .. })
        ));
    }

    #[test]
    fn compaction_replaces_its_inputs_with_one_snapshot_that_loads_the_same() {
        let doc = doc_with(&[1, 2]);
        let inputs = vec![snapshot_key(&id(), "old"), "doc/x/c/1".to_string()];
        let writes = compaction_writes(&id(), &doc, &inputs, "new");
        assert_eq!(writes.len(), 3);
        let StorageWrite::Put { key, value } = &writes[0] else {
            panic!("the snapshot must be written first");
        };
        assert_eq!(key, &snapshot_key(&id(), "new"));
        assert_eq!(Automerge::load(value).unwrap().get_heads(), doc.get_heads());
    }
}
