//! Reading document fields the way SPEC §4 says to: text typed by people is an
//! automerge `Text` in JS clients, but a plain string must read the same, and
//! any number type reads as a number. Every read can be made at given heads
//! (the state a change's author saw) or at the current state.

use automerge::{Automerge, ChangeHash, ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value};

/// A document (or a transaction on one) as of some heads (`None`: as it is
/// now).
pub struct At<'a, D: ReadDoc = Automerge> {
    pub doc: &'a D,
    pub heads: Option<&'a [ChangeHash]>,
}

impl<D: ReadDoc> Clone for At<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: ReadDoc> Copy for At<'_, D> {}

impl<'a, D: ReadDoc> At<'a, D> {
    pub fn now(doc: &'a D) -> Self {
        Self { doc, heads: None }
    }

    pub fn heads(doc: &'a D, heads: &'a [ChangeHash]) -> Self {
        Self {
            doc,
            heads: Some(heads),
        }
    }

    pub fn get(&self, obj: &ObjId, prop: impl Into<Prop>) -> Option<(Value<'a>, ObjId)> {
        let result = match self.heads {
            Some(heads) => self.doc.get_at(obj, prop, heads),
            None => self.doc.get(obj, prop),
        };
        result.ok().flatten()
    }

    pub fn contains(&self, obj: &ObjId, key: &str) -> bool {
        self.get(obj, key).is_some()
    }

    /// A `Text` object or a plain string, as a string.
    pub fn text(&self, obj: &ObjId, prop: impl Into<Prop>) -> Option<String> {
        match self.get(obj, prop)? {
            (Value::Scalar(scalar), _) => match scalar.as_ref() {
                ScalarValue::Str(text) => Some(text.to_string()),
                _ => None,
            },
            (Value::Object(ObjType::Text), id) => match self.heads {
                Some(heads) => self.doc.text_at(&id, heads).ok(),
                None => self.doc.text(&id).ok(),
            },
            (Value::Object(_), _) => None,
        }
    }

    /// Any number type, as an `f64`.
    pub fn number(&self, obj: &ObjId, prop: impl Into<Prop>) -> Option<f64> {
        match self.get(obj, prop)? {
            (Value::Scalar(scalar), _) => match scalar.as_ref() {
                ScalarValue::Int(n) => Some(*n as f64),
                ScalarValue::Uint(n) => Some(*n as f64),
                ScalarValue::F64(n) => Some(*n),
                ScalarValue::Counter(n) => Some(i64::from(n) as f64),
                ScalarValue::Timestamp(n) => Some(*n as f64),
                _ => None,
            },
            _ => None,
        }
    }

    /// A number as whole milliseconds (timestamps).
    pub fn millis(&self, obj: &ObjId, prop: impl Into<Prop>) -> Option<i64> {
        self.number(obj, prop)
            .filter(|n| n.is_finite())
            .map(|n| n as i64)
    }

    pub fn boolean(&self, obj: &ObjId, prop: impl Into<Prop>) -> Option<bool> {
        match self.get(obj, prop)? {
            (Value::Scalar(scalar), _) => match scalar.as_ref() {
                ScalarValue::Boolean(b) => Some(*b),
                _ => None,
            },
            _ => None,
        }
    }

    /// The object at `prop` if it is of type `kind`.
    pub fn object(&self, obj: &ObjId, prop: impl Into<Prop>, kind: ObjType) -> Option<ObjId> {
        match self.get(obj, prop)? {
            (Value::Object(found), id) if found == kind => Some(id),
            _ => None,
        }
    }

    pub fn length(&self, obj: &ObjId) -> usize {
        match self.heads {
            Some(heads) => self.doc.length_at(obj, heads),
            None => self.doc.length(obj),
        }
    }

    pub fn keys(&self, obj: &ObjId) -> Vec<String> {
        match self.heads {
            Some(heads) => self.doc.keys_at(obj, heads).collect(),
            None => self.doc.keys(obj).collect(),
        }
    }

    /// A list whose every element is text; `None` if it is not one.
    pub fn text_list(&self, obj: &ObjId, prop: impl Into<Prop>) -> Option<Vec<String>> {
        let list = self.object(obj, prop, ObjType::List)?;
        (0..self.length(&list))
            .map(|index| self.text(&list, index))
            .collect()
    }

    /// The maps of a list, skipping anything that is not a map.
    pub fn map_items(&self, obj: &ObjId, prop: impl Into<Prop>) -> Vec<ObjId> {
        let Some(list) = self.object(obj, prop, ObjType::List) else {
            return Vec::new();
        };
        (0..self.length(&list))
            .filter_map(|index| self.object(&list, index, ObjType::Map))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::ROOT;
    use automerge::transaction::Transactable;

    #[test]
    fn text_and_plain_strings_read_alike() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "plain", "post").unwrap();
        let text = tx.put_object(ROOT, "text", ObjType::Text).unwrap();
        tx.splice_text(&text, 0, 0, "post").unwrap();
        tx.put(ROOT, "number", 3).unwrap();
        tx.commit();
        let at = At::now(&doc);
        assert_eq!(at.text(&ROOT, "plain").as_deref(), Some("post"));
        assert_eq!(at.text(&ROOT, "text").as_deref(), Some("post"));
        assert_eq!(at.text(&ROOT, "number"), None);
        assert_eq!(at.text(&ROOT, "missing"), None);
    }

    #[test]
    fn every_number_type_reads_as_a_number() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "int", -3).unwrap();
        tx.put(ROOT, "uint", 3_u64).unwrap();
        tx.put(ROOT, "float", 1.5).unwrap();
        tx.put(ROOT, "text", "3").unwrap();
        tx.commit();
        let at = At::now(&doc);
        assert_eq!(at.number(&ROOT, "int"), Some(-3.0));
        assert_eq!(at.number(&ROOT, "uint"), Some(3.0));
        assert_eq!(at.number(&ROOT, "float"), Some(1.5));
        assert_eq!(at.number(&ROOT, "text"), None);
    }

    #[test]
    fn reads_at_heads_see_the_document_as_it_was() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "locked", false).unwrap();
        tx.commit();
        let before = doc.get_heads();
        let mut tx = doc.transaction();
        tx.put(ROOT, "locked", true).unwrap();
        tx.commit();
        assert_eq!(
            At::heads(&doc, &before).boolean(&ROOT, "locked"),
            Some(false)
        );
        assert_eq!(At::now(&doc).boolean(&ROOT, "locked"), Some(true));
    }
}
