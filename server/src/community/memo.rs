//! What the rules keep of a loaded document between calls: the facts the
//! read rules need, read once per state of the document rather than once per
//! peer sent to, and the last summary.
//!
//! Summaries follow from the changes since the last one. Reading a
//! field of an automerge document costs microseconds, so reading a post
//! whole after every reply costs its length each time: at a few thousand
//! replies, a third of the server's time (docs/PERFORMANCE.md). The memo
//! keeps what was read of every item and reads again only the items whose
//! objects the new changes touched. It gives exactly what a whole reading
//! ([`super::summary::summarize`]) gives; the property tests compare the two
//! after every change.

use std::collections::{HashMap, HashSet};

use automerge::legacy::{ObjectId as ChangedObject, OpType};
use automerge::{
    ActorId, Automerge, Change, ChangeHash, ObjId, ObjType, Prop, ROOT, ReadDoc, Value, ValueRef,
};

use super::fields::At;
use super::schema::DocFacts;
use super::summary::{
    ItemSummary, Summary, first_with_excerpt, item_list, items_mut, read_excerpt, read_item,
    summarize_without_items,
};

/// What the rules remember of one loaded document (see the module).
#[derive(Default)]
pub struct DocumentMemo {
    /// The read rules' facts, and the heads they were read at.
    facts: Option<(Vec<ChangeHash>, DocFacts)>,
    kept: Option<Kept>,
}

impl DocumentMemo {
    /// The read rules' facts about `doc` as it is now.
    pub fn facts(&mut self, doc: &Automerge) -> &DocFacts {
        let heads = doc.get_heads();
        if self.facts.as_ref().is_none_or(|(at, _)| *at != heads) {
            self.facts = Some((heads, DocFacts::read(At::now(doc))));
        }
        let (_, facts) = self.facts.get_or_insert_default();
        facts
    }

    /// The summary of `doc`, which is the document of the last summary plus
    /// `changes`; read whole if this memo is new.
    pub fn summarize(&mut self, doc: &Automerge, changes: &[Change]) -> Option<Summary> {
        let at = At::now(doc);
        let mut kept = match (self.kept.take(), touches(changes)) {
            (Some(mut kept), Some(touches)) => {
                if kept.update(at, &touches) {
                    kept
                } else {
                    Kept::read(at)
                }
            }
            _ => Kept::read(at),
        };
        let summary = kept.summary(at);
        self.kept = Some(kept);
        summary
    }
}

/// An object's identity, whatever actor index a document gives it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ObjKey {
    counter: u64,
    actor: ActorId,
}

impl ObjKey {
    fn of(id: &ObjId) -> Option<Self> {
        match id {
            ObjId::Root => None,
            ObjId::Id(counter, actor, _) => Some(Self {
                counter: *counter,
                actor: actor.clone(),
            }),
        }
    }

    /// The document's id for it (automerge finds the actor's index itself).
    fn id(&self) -> ObjId {
        ObjId::Id(self.counter, self.actor.clone(), 0)
    }
}

/// The objects some changes wrote to.
#[derive(Default)]
struct Touches {
    root: bool,
    objects: HashSet<ObjKey>,
    /// Maps inserted into a list: (the list, the new map).
    inserted_maps: Vec<(ObjKey, ObjKey)>,
    /// Lists whose elements were deleted, overwritten, or joined by
    /// something other than a map.
    rearranged: HashSet<ObjKey>,
}

/// What `changes` wrote to, or `None` if one cannot be read.
fn touches(changes: &[Change]) -> Option<Touches> {
    let mut touches = Touches::default();
    for change in changes {
        let expanded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode())).ok()?;
        let actor = change.actor_id();
        let start = change.start_op().get();
        for (offset, op) in expanded.operations.iter().enumerate() {
            let ChangedObject::Id(target) = &op.obj else {
                touches.root = true;
                continue;
            };
            let target = ObjKey {
                counter: target.0,
                actor: target.1.clone(),
            };
            if op.insert && matches!(op.action, OpType::Make(ObjType::Map)) {
                let made = ObjKey {
                    counter: start + offset as u64,
                    actor: actor.clone(),
                };
                touches.inserted_maps.push((target.clone(), made));
            } else if op.insert || matches!(op.key, automerge::legacy::Key::Seq(_)) {
                touches.rearranged.insert(target.clone());
            }
            touches.objects.insert(target);
        }
    }
    Some(touches)
}

/// One reply or message as last read.
struct KeptItem {
    id: ObjId,
    /// Its summary without the excerpt.
    fields: ItemSummary,
    /// Its excerpt, when last read.
    excerpt: Option<String>,
    /// The text objects its `id`, `author` and `body` are read from.
    texts: Vec<ObjKey>,
}

/// The last summary, taken apart.
struct Kept {
    /// The summary without its items; `None`: the document has none.
    head: Option<Summary>,
    /// The list of items, its elements in order, and whether every element
    /// is a map (so an element's index is its item's position).
    list: Option<(ObjId, ObjKey)>,
    order: Vec<ObjKey>,
    dense: bool,
    items: HashMap<ObjKey, KeptItem>,
    /// The text objects items are read from, to their items.
    texts: HashMap<ObjKey, ObjKey>,
}

impl Kept {
    /// Everything read afresh.
    fn read(at: At<'_>) -> Self {
        let head = summarize_without_items(at);
        let list = head.as_ref().and_then(|head| list_of(at, head));
        let mut kept = Self {
            head,
            list,
            order: Vec::new(),
            dense: true,
            items: HashMap::new(),
            texts: HashMap::new(),
        };
        kept.read_order(at);
        kept
    }

    /// Reads what `touches` changed; false if it is simpler to read it all.
    fn update(&mut self, at: At<'_>, touches: &Touches) -> bool {
        let mut head_stale = touches.root;
        if touches.root {
            let head = summarize_without_items(at);
            let list = head.as_ref().and_then(|head| list_of(at, head));
            let same_kind = match (&head, &self.head) {
                (Some(new), Some(old)) => item_list(new) == item_list(old),
                (None, None) => true,
                _ => false,
            };
            if !same_kind || list.as_ref().map(|l| &l.1) != self.list.as_ref().map(|l| &l.1) {
                return false;
            }
            self.head = head;
            head_stale = false;
        }
        let Some(list) = self.list.as_ref().map(|list| list.1.clone()) else {
            if !touches.objects.is_empty() {
                self.head = summarize_without_items(at);
            }
            return true;
        };
        let mut fresh = HashSet::new();
        let placed = !touches.rearranged.contains(&list)
            && self.dense
            && self.insert_new_items(at, &list, touches, &mut fresh);
        if !placed {
            fresh.extend(self.read_order(at));
        }
        for object in &touches.objects {
            if *object == list {
                continue;
            }
            let item = if self.items.contains_key(object) {
                Some(object.clone())
            } else {
                self.texts.get(object).cloned()
            };
            match item {
                Some(item) => {
                    if fresh.insert(item.clone()) {
                        self.read_item(at, &item);
                    }
                }
                None => head_stale = true,
            }
        }
        if head_stale {
            self.head = summarize_without_items(at);
        }
        true
    }

    /// Puts maps appended or inserted into the list in their places, read;
    /// false if their places cannot be told that way.
    fn insert_new_items(
        &mut self,
        at: At<'_>,
        list: &ObjKey,
        touches: &Touches,
        fresh: &mut HashSet<ObjKey>,
    ) -> bool {
        let mut placed = Vec::new();
        for (into, made) in &touches.inserted_maps {
            if into != list {
                continue;
            }
            let Some(index) = index_in(at, list, made) else {
                return false;
            };
            placed.push((index, made.clone()));
        }
        // In ascending order, every item before an index is already there.
        placed.sort_by_key(|(index, _)| *index);
        for (index, made) in placed {
            if index > self.order.len() {
                return false;
            }
            self.order.insert(index, made.clone());
            self.read_item(at, &made);
            fresh.insert(made);
        }
        true
    }

    /// Reads the list's elements again; the items it did not know are read,
    /// and returned.
    fn read_order(&mut self, at: At<'_>) -> Vec<ObjKey> {
        let Some((list, _)) = self.list.clone() else {
            self.order.clear();
            self.items.clear();
            self.texts.clear();
            return Vec::new();
        };
        let mut order = Vec::new();
        let mut elements = 0;
        for element in at.doc.list_range(&list, ..) {
            elements += 1;
            if let ValueRef::Object(ObjType::Map) = element.value
                && let Some(key) = ObjKey::of(&element.id())
            {
                order.push(key);
            }
        }
        self.dense = elements == order.len();
        let present: HashSet<&ObjKey> = order.iter().collect();
        self.items.retain(|key, _| present.contains(key));
        let items = &self.items;
        self.texts.retain(|_, item| items.contains_key(item));
        let unknown: Vec<ObjKey> = order
            .iter()
            .filter(|key| !self.items.contains_key(key))
            .cloned()
            .collect();
        self.order = order;
        for key in &unknown {
            self.read_item(at, key);
        }
        unknown
    }

    fn read_item(&mut self, at: At<'_>, key: &ObjKey) {
        let id = self
            .items
            .get(key)
            .map_or_else(|| key.id(), |item| item.id.clone());
        for old in self
            .items
            .get(key)
            .map(|item| item.texts.clone())
            .unwrap_or_default()
        {
            self.texts.remove(&old);
        }
        let texts: Vec<ObjKey> = ["id", "author", "body"]
            .into_iter()
            .filter_map(|field| match at.get(&id, field) {
                Some((Value::Object(ObjType::Text), text)) => ObjKey::of(&text),
                _ => None,
            })
            .collect();
        for text in &texts {
            self.texts.insert(text.clone(), key.clone());
        }
        let fields = read_item(at, &id, false);
        self.items.insert(
            key.clone(),
            KeptItem {
                id,
                fields,
                excerpt: None,
                texts,
            },
        );
    }

    /// The summary: the head with the items in order, the newest with
    /// their excerpts (read now if not kept).
    fn summary(&mut self, at: At<'_>) -> Option<Summary> {
        let mut summary = self.head.clone()?;
        let with_excerpts = first_with_excerpt(self.order.len());
        let items = items_mut(&mut summary);
        items.reserve(self.order.len());
        for (position, key) in self.order.iter().enumerate() {
            let Some(item) = self.items.get_mut(key) else {
                continue;
            };
            let mut fields = item.fields.clone();
            if position < with_excerpts || fields.deleted {
                item.excerpt = None;
            } else {
                fields.excerpt = item
                    .excerpt
                    .get_or_insert_with(|| read_excerpt(at, &item.id))
                    .clone();
            }
            items.push(fields);
        }
        Some(summary)
    }
}

/// The list a summary's items are in, if it is one.
fn list_of(at: At<'_>, head: &Summary) -> Option<(ObjId, ObjKey)> {
    let list = at.object(&ROOT, item_list(head), ObjType::List)?;
    let key = ObjKey::of(&list)?;
    Some((list, key))
}

/// Where `item` is in `list`, if it is there now.
fn index_in(at: At<'_>, list: &ObjKey, item: &ObjKey) -> Option<usize> {
    let parent = at.doc.parents(item.id()).ok()?.next()?;
    match parent.prop {
        Prop::Seq(index) if parent.visible && ObjKey::of(&parent.obj).as_ref() == Some(list) => {
            Some(index)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;

    use super::*;
    use crate::community::schema::PostStatus;

    #[test]
    fn the_read_facts_are_read_again_once_the_document_changes() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "type", "post").unwrap();
        tx.put(ROOT, "status", "published").unwrap();
        tx.commit();
        let mut memo = DocumentMemo::default();
        assert_eq!(memo.facts(&doc).status, Some(PostStatus::Published));
        let mut tx = doc.transaction();
        tx.put(ROOT, "status", "hidden").unwrap();
        tx.commit();
        assert_eq!(memo.facts(&doc).status, Some(PostStatus::Hidden));
    }
}
