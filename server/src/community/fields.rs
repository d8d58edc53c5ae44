//! Reading document fields the way SPEC §4 says to: text typed by people is an
//! automerge `Text` in JS clients, but a plain string must read the same.

use automerge::{Automerge, ObjType, ROOT, ReadDoc, ScalarValue, Value};

/// The root field `key` as text, whether stored as `Text` or as a string.
pub fn root_text(doc: &Automerge, key: &str) -> Option<String> {
    match doc.get(ROOT, key).ok()?? {
        (Value::Scalar(scalar), _) => match scalar.as_ref() {
            ScalarValue::Str(text) => Some(text.to_string()),
            _ => None,
        },
        (Value::Object(ObjType::Text), id) => doc.text(&id).ok(),
        (Value::Object(_), _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(root_text(&doc, "plain").as_deref(), Some("post"));
        assert_eq!(root_text(&doc, "text").as_deref(), Some("post"));
        assert_eq!(root_text(&doc, "number"), None);
        assert_eq!(root_text(&doc, "missing"), None);
    }
}
