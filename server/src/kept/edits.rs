//! The server's own edits to the documents it keeps (SPEC §4): each writes
//! only what differs, so an update that changes nothing adds no change, and
//! each touches one entry, so its cost does not grow with the community.

use automerge::transaction::{Transactable, Transaction};
use automerge::{AutomergeError, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};

/// A field value the server writes. Text is written as automerge `Text`, the
/// way the JS client writes strings, so JS readers see a plain string.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Text(String),
    Int(i64),
}

/// Sets `obj[key]` to `value` unless it already holds it.
pub fn put_field(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    key: &str,
    value: &Field,
) -> Result<(), AutomergeError> {
    match value {
        Field::Int(n) => {
            let wanted = ScalarValue::Int(*n);
            let same = matches!(
                tx.get(obj, key)?,
                Some((Value::Scalar(current), _)) if *current == wanted
            );
            if !same {
                tx.put(obj, key, wanted)?;
            }
        }
        Field::Text(wanted) => match tx.get(obj, key)? {
            Some((Value::Object(ObjType::Text), text)) => {
                if tx.text(&text)? != *wanted {
                    tx.update_text(&text, wanted)?;
                }
            }
            _ => put_text(tx, obj, key, wanted)?,
        },
    }
    Ok(())
}

fn map_at(tx: &mut Transaction<'_>, obj: &ObjId, key: &str) -> Result<ObjId, AutomergeError> {
    match tx.get(obj, key)? {
        Some((Value::Object(ObjType::Map), id)) => Ok(id),
        _ => tx.put_object(obj, key, ObjType::Map),
    }
}

/// Gives the document its `type`, `schema` and root fields if it lacks them,
/// and returns the map named `collection`.
pub fn ensure_base(
    tx: &mut Transaction<'_>,
    doc_type: &str,
    root_fields: &[(&str, Field)],
    collection: &str,
) -> Result<ObjId, AutomergeError> {
    put_field(tx, &ROOT, "type", &Field::Text(doc_type.to_string()))?;
    put_field(tx, &ROOT, "schema", &Field::Int(1))?;
    for (key, value) in root_fields {
        put_field(tx, &ROOT, key, value)?;
    }
    map_at(tx, &ROOT, collection)
}

/// Sets `collection[key]` to a map with exactly `fields` (changing only what
/// differs).
pub fn put_entry(
    tx: &mut Transaction<'_>,
    collection: &ObjId,
    key: &str,
    fields: &[(&str, Field)],
) -> Result<(), AutomergeError> {
    let entry = map_at(tx, collection, key)?;
    for (field, value) in fields {
        put_field(tx, &entry, field, value)?;
    }
    let stale: Vec<String> = tx
        .keys(&entry)
        .filter(|existing| !fields.iter().any(|(field, _)| field == existing))
        .collect();
    for field in stale {
        tx.delete(&entry, field.as_str())?;
    }
    Ok(())
}

pub fn remove_entry(
    tx: &mut Transaction<'_>,
    collection: &ObjId,
    key: &str,
) -> Result<(), AutomergeError> {
    if tx.get(collection, key)?.is_some() {
        tx.delete(collection, key)?;
    }
    Ok(())
}

/// A `Text` field, as the JS client writes typed text (so people can edit it).
pub fn put_text(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    key: &str,
    text: &str,
) -> Result<(), AutomergeError> {
    let id = tx.put_object(obj, key, ObjType::Text)?;
    tx.splice_text(&id, 0, 0, text)
}

/// An empty map at the root `key` unless one is there.
pub fn ensure_map(tx: &mut Transaction<'_>, key: &str) -> Result<(), AutomergeError> {
    map_at(tx, &ROOT, key).map(drop)
}

/// Takes a kept document's `type` away, so that nobody but the server reads
/// it any more (see `community::read`).
pub fn retire(tx: &mut Transaction<'_>) -> Result<(), AutomergeError> {
    if tx.get(ROOT, "type")?.is_some() {
        tx.delete(ROOT, "type")?;
    }
    Ok(())
}
