//! The write rules fed arbitrary changes: random ops at random places
//! (root fields, the replies and messages lists, their items, nested maps,
//! text, counters), deletes, wrong value types and oversized strings, by the
//! author, other members, a host and a manager, with their own actor,
//! someone else's or a fresh one, on the document as it is or as it was.
//! The documents are built the way `tests.rs` builds them, through the same
//! [`CommunityRules`] the engine calls. Whatever arrives, judging never
//! panics, a refusal names its rule, and whatever is accepted leaves the
//! document as the read side expects it: its kind and identity unchanged,
//! every existing reply or message still there under the same author, every
//! field within `schema::limits`.
//!
//! Kept to a bounded number of cases so CI runs it on every commit; set
//! `PROPTEST_CASES` for a longer run.

use std::sync::Arc;

use automerge::transaction::{Transactable, Transaction};
use automerge::{
    ActorId, Automerge, ChangeHash, ObjId, ObjType, Prop, ROOT, ReadDoc, ScalarValue, Value,
};
use backchannel_sync::{DocumentId, DocumentView, Policy, Refusal};
use proptest::prelude::*;

use super::fields::At;
use super::memo::DocumentMemo;
use super::quota::{BYTES_PER_USER, DOCUMENTS_PER_USER, Quota, Usage};
use super::read::may_read;
use super::restrictions::{Restrictions, STALE_GRACE_MILLIS};
use super::schema::{CONVERSATION_STATES, DocFacts, limits};
use super::summary::summarize;
use super::{ActorBindings, CommunityRules, SyncUser};
use crate::auth::Role;
use crate::store::{Batch, MemoryStore, Store};

/// The author, opener or owner of every document here.
const ADA: usize = 0;
/// Replied to the post; a member of the conversation.
const BOB: usize = 1;
const MANAGER: usize = 4;

fn users() -> [SyncUser; 5] {
    [
        ("ada", Role::Member),
        ("bob", Role::Member),
        ("cy", Role::Member),
        ("hal", Role::Host),
        ("meg", Role::Manager),
    ]
    .map(|(id, role)| SyncUser {
        id: id.to_string(),
        role,
        session_id: format!("session-{id}"),
    })
}

fn actor_of(user: &SyncUser) -> ActorId {
    let mut bytes = [0_u8; 16];
    for (slot, byte) in bytes.iter_mut().zip(user.id.bytes()) {
        *slot = byte;
    }
    ActorId::from(bytes)
}

/// The one place that knows how the rules are put together.
fn rules(store: Arc<MemoryStore>) -> CommunityRules {
    CommunityRules::new(
        ActorBindings::new(store.clone()),
        Quota::new(
            store.clone(),
            Usage {
                documents: DOCUMENTS_PER_USER,
                bytes: BYTES_PER_USER,
            },
        ),
        Restrictions::new(store, Arc::new(|| 1_000_000), STALE_GRACE_MILLIS),
    )
}

/// Every field name the rules know, so random ops often land on one.
const KEYS: [&str; 24] = [
    "type",
    "schema",
    "author",
    "created_at",
    "status",
    "title",
    "body",
    "locked",
    "anonymous",
    "replies",
    "kind",
    "opener",
    "members",
    "subject",
    "about",
    "messages",
    "state",
    "tags",
    "assignee",
    "publish",
    "owner",
    "items",
    "id",
    "deleted",
];

/// Lengths at and just past each limit, and some ordinary ones.
fn arb_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0..80usize,
        1 => prop::sample::select(vec![
            limits::ID_CHARS,
            limits::ID_CHARS + 1,
            limits::TAG_CHARS + 1,
            limits::TITLE_CHARS,
            limits::TITLE_CHARS + 1,
            limits::BODY_CHARS,
            limits::BODY_CHARS + 1,
        ]),
    ]
}

#[derive(Debug, Clone)]
enum Key {
    Known(&'static str),
    Other(String),
}

impl Key {
    fn as_str(&self) -> &str {
        match self {
            Key::Known(key) => key,
            Key::Other(key) => key,
        }
    }
}

fn arb_key() -> impl Strategy<Value = Key> {
    prop_oneof![
        4 => prop::sample::select(KEYS.to_vec()).prop_map(Key::Known),
        1 => "[a-z:]{0,8}".prop_map(Key::Other),
    ]
}

/// A value to put: of the right type for some field, or of none.
#[derive(Debug, Clone)]
enum Val {
    Str(String),
    /// `len` copies of `fill`, as a plain string or as `Text`.
    Long {
        fill: char,
        len: usize,
        text: bool,
    },
    Text(String),
    Int(i64),
    Uint(u64),
    F64(f64),
    Bool(bool),
    Null,
    Counter(i64),
    Timestamp(i64),
    Bytes(Vec<u8>),
    Map,
    List,
}

fn arb_val() -> impl Strategy<Value = Val> {
    let word = prop_oneof![
        prop::sample::select(vec![
            "ada",
            "bob",
            "meg",
            "post",
            "conversation",
            "drafts",
            "index",
            "draft",
            "published",
            "hidden",
            "open",
            "resolved",
            "question",
            "",
        ])
        .prop_map(String::from),
        any::<String>(),
    ];
    prop_oneof![
        2 => word.clone().prop_map(Val::Str),
        3 => word.prop_map(Val::Text),
        2 => (prop::sample::select(vec!['x', 'é', '😀']), arb_len(), any::<bool>())
            .prop_map(|(fill, len, text)| Val::Long { fill, len, text }),
        1 => any::<i64>().prop_map(Val::Int),
        1 => any::<u64>().prop_map(Val::Uint),
        1 => any::<f64>().prop_map(Val::F64),
        2 => any::<bool>().prop_map(Val::Bool),
        1 => Just(Val::Null),
        1 => any::<i64>().prop_map(Val::Counter),
        1 => any::<i64>().prop_map(Val::Timestamp),
        1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(Val::Bytes),
        1 => Just(Val::Map),
        1 => Just(Val::List),
    ]
}

/// One op, aimed at an object picked among those the document holds.
#[derive(Debug, Clone)]
enum Op {
    /// In a map: put at a key. In a list: overwrite an element. In text: splice.
    Put {
        target: prop::sample::Index,
        key: Key,
        at: prop::sample::Index,
        value: Val,
    },
    /// In a list: insert. In text: splice in without deleting.
    Insert {
        target: prop::sample::Index,
        at: prop::sample::Index,
        value: Val,
    },
    Delete {
        target: prop::sample::Index,
        key: Key,
        at: prop::sample::Index,
    },
    Increment {
        target: prop::sample::Index,
        key: Key,
        at: prop::sample::Index,
        by: i64,
    },
    /// A well-formed reply or message appended by someone, perhaps with one
    /// field too many or an oversized body: what a real client sends most.
    Append {
        author: usize,
        body: usize,
        extra: Option<Key>,
    },
}

fn arb_op() -> impl Strategy<Value = Op> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        6 => (index(), arb_key(), index(), arb_val())
            .prop_map(|(target, key, at, value)| Op::Put { target, key, at, value }),
        2 => (index(), index(), arb_val())
            .prop_map(|(target, at, value)| Op::Insert { target, at, value }),
        2 => (index(), arb_key(), index())
            .prop_map(|(target, key, at)| Op::Delete { target, key, at }),
        1 => (index(), arb_key(), index(), any::<i64>())
            .prop_map(|(target, key, at, by)| Op::Increment { target, key, at, by }),
        4 => (0..5usize, prop_oneof![4 => 0..40usize, 1 => Just(limits::BODY_CHARS + 1)],
              proptest::option::weighted(0.2, arb_key()))
            .prop_map(|(author, body, extra)| Op::Append { author, body, extra }),
    ]
}

/// Which actor signs a message.
#[derive(Debug, Clone)]
enum Signer {
    Own,
    /// Another user's actor: taken, so refused.
    Borrowed(usize),
    /// A fresh device.
    Fresh([u8; 16]),
}

/// One message: a user's change, made on the document as it is now or as it
/// was after an earlier accepted message (written offline).
#[derive(Debug, Clone)]
struct Message {
    writer: usize,
    signer: Signer,
    offline_at: Option<prop::sample::Index>,
    ops: Vec<Op>,
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        prop_oneof![2 => Just(ADA), 1 => 0..5usize],
        prop_oneof![
            6 => Just(Signer::Own),
            1 => (0..5usize).prop_map(Signer::Borrowed),
            2 => any::<[u8; 16]>().prop_map(Signer::Fresh),
        ],
        proptest::option::weighted(0.25, any::<prop::sample::Index>()),
        // Mostly one op: a message with several is refused for its worst.
        prop_oneof![
            3 => prop::collection::vec(arb_op(), 1..2),
            1 => prop::collection::vec(arb_op(), 2..5),
        ],
    )
        .prop_map(|(writer, signer, offline_at, ops)| Message {
            writer,
            signer,
            offline_at,
            ops,
        })
}

/// Every object in the document, root first, breadth first.
fn objects<R: ReadDoc>(doc: &R) -> Vec<ObjId> {
    let mut found = vec![ROOT];
    let mut next = 0;
    while next < found.len() {
        let obj = found[next].clone();
        next += 1;
        let props: Vec<Prop> = match doc.object_type(&obj) {
            Ok(ObjType::Map | ObjType::Table) => doc.keys(&obj).map(Prop::from).collect(),
            Ok(ObjType::List) => (0..doc.length(&obj)).map(Prop::from).collect(),
            _ => Vec::new(),
        };
        for prop in props {
            if let Ok(Some((Value::Object(_), id))) = doc.get(&obj, prop) {
                found.push(id);
            }
        }
    }
    found
}

fn put_value(tx: &mut Transaction<'_>, obj: &ObjId, prop: Prop, value: &Val, insert: bool) {
    let scalar = match value {
        Val::Str(text) => ScalarValue::Str(text.as_str().into()),
        Val::Long {
            fill,
            len,
            text: false,
        } => ScalarValue::Str(std::iter::repeat_n(*fill, *len).collect::<String>().into()),
        Val::Int(n) => ScalarValue::Int(*n),
        Val::Uint(n) => ScalarValue::Uint(*n),
        Val::F64(n) => ScalarValue::F64(*n),
        Val::Bool(b) => ScalarValue::Boolean(*b),
        Val::Null => ScalarValue::Null,
        Val::Counter(n) => ScalarValue::counter(*n),
        Val::Timestamp(n) => ScalarValue::Timestamp(*n),
        Val::Bytes(bytes) => ScalarValue::Bytes(bytes.clone()),
        Val::Text(_) | Val::Long { text: true, .. } | Val::Map | Val::List => {
            let kind = match value {
                Val::Map => ObjType::Map,
                Val::List => ObjType::List,
                _ => ObjType::Text,
            };
            let made = match (prop, insert) {
                (Prop::Seq(index), true) => tx.insert_object(obj, index, kind),
                (prop, _) => tx.put_object(obj, prop, kind),
            };
            let content = match value {
                Val::Text(text) => text.clone(),
                Val::Long { fill, len, .. } => std::iter::repeat_n(*fill, *len).collect(),
                _ => return,
            };
            if let Ok(made) = made {
                let _ = tx.splice_text(&made, 0, 0, &content);
            }
            return;
        }
    };
    let _ = match (prop, insert) {
        (Prop::Seq(index), true) => tx.insert(obj, index, scalar),
        (prop, _) => tx.put(obj, prop, scalar),
    };
}

/// Carries out one op; ops the library refuses (a key on a list, an index
/// past the end) are simply not made, as a client could not make them either.
fn apply(tx: &mut Transaction<'_>, op: &Op, writer: &SyncUser) {
    let all = objects(&*tx);
    let target_of = |target: &prop::sample::Index| all[target.index(all.len())].clone();
    match op {
        Op::Put {
            target,
            key,
            at,
            value,
        } => {
            let obj = target_of(target);
            match tx.object_type(&obj) {
                Ok(ObjType::List) if tx.length(&obj) > 0 => {
                    let index = at.index(tx.length(&obj));
                    put_value(tx, &obj, Prop::Seq(index), value, false);
                }
                Ok(ObjType::Text) => {
                    let len = tx.length(&obj);
                    let index = at.index(len + 1);
                    let _ = tx.splice_text(&obj, index, isize::from(index < len), key.as_str());
                }
                _ => put_value(tx, &obj, Prop::from(key.as_str()), value, false),
            }
        }
        Op::Insert { target, at, value } => {
            let obj = target_of(target);
            let index = at.index(tx.length(&obj) + 1);
            match tx.object_type(&obj) {
                Ok(ObjType::Text) => {
                    let text = match value {
                        Val::Str(text) | Val::Text(text) => text.clone(),
                        Val::Long { fill, len, .. } => std::iter::repeat_n(*fill, *len).collect(),
                        other => format!("{other:?}"),
                    };
                    let _ = tx.splice_text(&obj, index, 0, &text);
                }
                _ => put_value(tx, &obj, Prop::Seq(index), value, true),
            }
        }
        Op::Delete { target, key, at } => {
            let obj = target_of(target);
            match tx.object_type(&obj) {
                Ok(ObjType::List | ObjType::Text) if tx.length(&obj) > 0 => {
                    let index = at.index(tx.length(&obj));
                    let _ = tx.delete(&obj, index);
                }
                _ => {
                    let _ = tx.delete(&obj, key.as_str());
                }
            }
        }
        Op::Increment {
            target,
            key,
            at,
            by,
        } => {
            let obj = target_of(target);
            let _ = match tx.object_type(&obj) {
                Ok(ObjType::List) if tx.length(&obj) > 0 => {
                    let index = at.index(tx.length(&obj));
                    tx.increment(&obj, index, *by)
                }
                _ => tx.increment(&obj, key.as_str(), *by),
            };
        }
        Op::Append {
            author,
            body,
            extra,
        } => {
            let list =
                ["replies", "messages"]
                    .into_iter()
                    .find_map(|key| match tx.get(ROOT, key) {
                        Ok(Some((Value::Object(ObjType::List), id))) => Some(id),
                        _ => None,
                    });
            let Some(list) = list else { return };
            let index = tx.length(&list);
            let Ok(item) = tx.insert_object(&list, index, ObjType::Map) else {
                return;
            };
            let author = if *author == 0 {
                writer.id.clone()
            } else {
                users()[*author].id.clone()
            };
            let fields = [
                ("id", format!("item-{index}-{}", writer.id)),
                ("author", author),
                ("body", "b".repeat(*body)),
            ];
            for (key, value) in fields {
                if let Ok(text) = tx.put_object(&item, key, ObjType::Text) {
                    let _ = tx.splice_text(&text, 0, 0, &value);
                }
            }
            let _ = tx.put(&item, "created_at", 2_000);
            if let Some(extra) = extra {
                let _ = tx.put(&item, extra.as_str(), true);
            }
        }
    }
}

/// A document as the server holds it, judged by the real rules.
struct Scene {
    rules: CommunityRules,
    /// Where the verdicts' writes go, as the engine's round would put them.
    store: Arc<MemoryStore>,
    id: DocumentId,
    doc: Automerge,
    creator: String,
    /// Heads after each accepted message, for changes written offline.
    history: Vec<Vec<ChangeHash>>,
    /// Summaries as the engine makes them: from the changes since the last.
    memo: DocumentMemo,
}

/// What must survive any accepted message.
#[derive(Debug, PartialEq)]
struct Identity {
    type_name: Option<String>,
    /// `schema`, `author`, `opener`, `created_at`, `kind`, `owner` as read.
    root: Vec<Option<String>>,
    /// Each reply's or message's object, `id` and `author`.
    items: Vec<(ObjId, Option<String>, Option<String>)>,
    status: Option<String>,
}

fn read_field(at: At<'_>, obj: &ObjId, key: &str) -> Option<String> {
    at.text(obj, key)
        .or_else(|| at.number(obj, key).map(|n| n.to_string()))
        .or_else(|| at.get(obj, key).map(|(value, _)| format!("{value:?}")))
}

fn items(at: At<'_>) -> Vec<ObjId> {
    let mut items = at.map_items(&ROOT, "replies");
    items.extend(at.map_items(&ROOT, "messages"));
    items
}

impl Identity {
    fn of(doc: &Automerge) -> Self {
        let at = At::now(doc);
        Self {
            type_name: at.text(&ROOT, "type"),
            root: ["schema", "author", "opener", "created_at", "kind", "owner"]
                .into_iter()
                .map(|key| read_field(at, &ROOT, key))
                .collect(),
            items: items(at)
                .into_iter()
                .map(|item| {
                    let id = at.text(&item, "id");
                    let author = at.text(&item, "author");
                    (item, id, author)
                })
                .collect(),
            status: at.text(&ROOT, "status"),
        }
    }
}

fn within(at: At<'_>, obj: &ObjId, key: &str, max: usize) -> Result<(), TestCaseError> {
    if let Some(text) = at.text(obj, key) {
        prop_assert!(
            text.chars().count() <= max,
            "`{}` holds {} characters, over {}",
            key,
            text.chars().count(),
            max
        );
    }
    Ok(())
}

/// The read side's expectations of a document the rules let through.
fn still_valid(doc: &Automerge, before: &Identity, writer: &SyncUser) -> Result<(), TestCaseError> {
    let now = Identity::of(doc);
    prop_assert_eq!(&now.type_name, &before.type_name, "`type` changed");
    prop_assert_eq!(&now.root, &before.root, "an identity field changed");
    // A draft is its author's to rewrite, replies included (only theirs).
    let draft = before.status.as_deref() == Some("draft");
    for item in before.items.iter().filter(|_| !draft) {
        prop_assert!(
            now.items.contains(item),
            "an item was removed or its `id` or `author` changed: {:?}",
            item
        );
    }
    let at = At::now(doc);
    if let Some(status) = &now.status {
        prop_assert!(["draft", "published", "hidden"].contains(&status.as_str()));
        if before.status.as_deref() == Some("hidden") && writer.role != Role::Manager {
            prop_assert_eq!(status.as_str(), "hidden", "only a manager unhides");
        }
    }
    if let Some(state) = at.text(&ROOT, "state") {
        prop_assert!(CONVERSATION_STATES.contains(&state.as_str()));
    }
    // A drafts document is its owner's scratch space: no limits but identity.
    if now.type_name.as_deref() == Some("drafts") {
        return read_side_copes(at);
    }
    for key in ["title", "subject"] {
        within(at, &ROOT, key, limits::TITLE_CHARS)?;
    }
    within(at, &ROOT, "body", limits::BODY_CHARS)?;
    for key in ["author", "opener", "assignee"] {
        within(at, &ROOT, key, limits::ID_CHARS)?;
    }
    for item in items(at) {
        within(at, &item, "id", limits::ID_CHARS)?;
        within(at, &item, "author", limits::ID_CHARS)?;
        within(at, &item, "body", limits::BODY_CHARS)?;
    }
    for (key, count, chars) in [
        ("tags", limits::TAGS, limits::TAG_CHARS),
        ("members", limits::MEMBERS, limits::ID_CHARS),
    ] {
        if let Some(list) = at.text_list(&ROOT, key) {
            prop_assert!(list.len() <= count, "{} `{}`", list.len(), key);
            for entry in &list {
                prop_assert!(entry.chars().count() <= chars, "a `{}` entry too long", key);
            }
        }
    }
    read_side_copes(at)
}

/// The read side takes whatever is there without panicking.
fn read_side_copes(at: At<'_>) -> Result<(), TestCaseError> {
    let facts = DocFacts::read(at);
    for user in users() {
        may_read(&user, &facts, "ada");
    }
    summarize(at);
    Ok(())
}

impl Scene {
    fn new() -> Self {
        let store = Arc::new(MemoryStore::default());
        Self {
            rules: rules(store.clone()),
            store,
            id: DocumentId::from_bytes([7; 16]),
            doc: Automerge::new(),
            creator: users()[ADA].id.clone(),
            history: Vec::new(),
            memo: DocumentMemo::default(),
        }
    }

    /// `change` made by a device with `actor` on the document as of
    /// `heads`: the changes it has that the document lacks.
    fn made(
        &self,
        heads: &[ChangeHash],
        actor: ActorId,
        change: impl FnOnce(&mut Transaction<'_>),
    ) -> Option<Vec<automerge::Change>> {
        let mut device = self.doc.fork_at(heads).ok()?.with_actor(actor);
        let mut tx = device.transaction();
        change(&mut tx);
        tx.commit();
        let new: Vec<_> = device
            .get_changes(heads)
            .into_iter()
            .filter(|change| self.doc.get_change_by_hash(&change.hash()).is_none())
            .collect();
        (!new.is_empty()).then_some(new)
    }

    /// The summary made from the changes since the last one is the summary
    /// read whole.
    fn summaries_agree(&mut self, new: &[automerge::Change]) -> Result<(), TestCaseError> {
        let followed = self.memo.summarize(&self.doc, new);
        prop_assert_eq!(
            followed,
            summarize(At::now(&self.doc)),
            "the summary made from the changes is not the one read whole"
        );
        Ok(())
    }

    /// Applies a message's changes as they are, with no rules: the memo
    /// must follow whatever a document goes through.
    fn force(&mut self, message: &Message) -> Result<(), TestCaseError> {
        let users = users();
        let writer = &users[message.writer];
        let heads = match &message.offline_at {
            Some(at) if !self.history.is_empty() => {
                self.history[at.index(self.history.len())].clone()
            }
            _ => self.doc.get_heads(),
        };
        let actor = ActorId::from(message.writer.to_le_bytes().repeat(2));
        let Some(new) = self.made(&heads, actor, |tx| {
            for op in &message.ops {
                apply(tx, op, writer);
            }
        }) else {
            return Ok(());
        };
        let saved = self.doc.clone();
        if self.doc.apply_changes(new.clone()).is_err() {
            self.doc = saved;
            return Ok(());
        }
        self.history.push(self.doc.get_heads());
        self.summaries_agree(&new)
    }

    /// Sends `who`'s change made on `heads` with `actor`; a refused change
    /// is dropped, as the server drops it.
    fn send(
        &mut self,
        who: &SyncUser,
        heads: &[ChangeHash],
        actor: ActorId,
        change: impl FnOnce(&mut Transaction<'_>),
    ) -> Option<Result<(), Refusal>> {
        let new = self.made(heads, actor, change)?;
        let before = self.doc.get_heads();
        let saved = self.doc.clone();
        if self.doc.apply_changes(new.clone()).is_err() {
            // A change automerge will not take (a device that reused its
            // actor's sequence numbers) never reaches the rules.
            self.doc = saved;
            return None;
        }
        let creating = before.is_empty();
        let view = DocumentView {
            id: &self.id,
            doc: &self.doc,
            creator: &self.creator,
            previous: None,
        };
        let verdict = self
            .rules
            .check_changes(who, view, &before, &new, creating)
            .map(|writes| {
                self.store
                    .apply(Batch::of(writes))
                    .expect("a memory store takes every batch");
            });
        match verdict {
            Ok(()) => {
                self.history.push(self.doc.get_heads());
                if let Err(disagreement) = self.summaries_agree(&new) {
                    panic!("{disagreement}");
                }
            }
            Err(_) => self.doc = saved,
        }
        Some(verdict)
    }

    /// A setup step the rules must accept.
    fn setup(&mut self, who: usize, change: impl FnOnce(&mut Transaction<'_>)) {
        let who = &users()[who];
        let heads = self.doc.get_heads();
        let verdict = self.send(who, &heads, actor_of(who), change);
        assert_eq!(verdict, Some(Ok(())), "a setup step was refused");
    }

    fn list(&self, key: &str) -> ObjId {
        At::now(&self.doc)
            .object(&ROOT, key, ObjType::List)
            .unwrap()
    }

    fn fuzz(&mut self, messages: Vec<Message>) -> Result<(), TestCaseError> {
        let users = users();
        for message in messages {
            let writer = &users[message.writer];
            let actor = match message.signer {
                Signer::Own => actor_of(writer),
                Signer::Borrowed(other) => actor_of(&users[other]),
                Signer::Fresh(bytes) => ActorId::from(bytes),
            };
            let heads = match &message.offline_at {
                Some(at) => self.history[at.index(self.history.len())].clone(),
                None => self.doc.get_heads(),
            };
            let before = Identity::of(&self.doc);
            let verdict = self.send(writer, &heads, actor, |tx| {
                for op in &message.ops {
                    apply(tx, op, writer);
                }
            });
            match verdict {
                None => {}
                Some(Ok(())) => still_valid(&self.doc, &before, writer)?,
                Some(Err(refusal)) => {
                    prop_assert!(
                        refusal.rule.starts_with("rule ") && refusal.rule.len() > "rule ".len(),
                        "a refusal that names no rule: {:?}",
                        refusal.rule
                    );
                    prop_assert_eq!(Identity::of(&self.doc), before, "a refusal left a trace");
                }
            }
        }
        Ok(())
    }
}

fn text(tx: &mut Transaction<'_>, obj: &ObjId, key: &str, value: &str) {
    let id = tx.put_object(obj, key, ObjType::Text).unwrap();
    tx.splice_text(&id, 0, 0, value).unwrap();
}

fn new_post(tx: &mut Transaction<'_>, status: &str) {
    tx.put(ROOT, "type", "post").unwrap();
    tx.put(ROOT, "schema", 1).unwrap();
    text(tx, &ROOT, "author", "ada");
    tx.put(ROOT, "created_at", 1_000).unwrap();
    text(tx, &ROOT, "status", status);
    text(tx, &ROOT, "title", "Where is the meetup?");
    text(tx, &ROOT, "body", "I could not find it.");
    tx.put_object(ROOT, "replies", ObjType::List).unwrap();
}

fn append_item(list: ObjId, author: &'static str) -> impl FnOnce(&mut Transaction<'_>) {
    move |tx| {
        let index = tx.length(&list);
        let item = tx.insert_object(&list, index, ObjType::Map).unwrap();
        text(tx, &item, "id", &format!("item-{index}"));
        text(tx, &item, "author", author);
        tx.put(&item, "created_at", 2_000).unwrap();
        text(tx, &item, "body", "It is in the library.");
    }
}

/// Ada's published post with a reply by Bob.
fn published_post() -> Scene {
    let mut scene = Scene::new();
    scene.setup(ADA, |tx| new_post(tx, "published"));
    let replies = scene.list("replies");
    scene.setup(BOB, append_item(replies, "bob"));
    scene
}

fn draft_post() -> Scene {
    let mut scene = Scene::new();
    scene.setup(ADA, |tx| new_post(tx, "draft"));
    scene
}

/// Ada's question, with Bob added by a manager and a message from each.
fn conversation() -> Scene {
    let mut scene = Scene::new();
    scene.setup(ADA, |tx| {
        tx.put(ROOT, "type", "conversation").unwrap();
        tx.put(ROOT, "schema", 1).unwrap();
        text(tx, &ROOT, "kind", "question");
        text(tx, &ROOT, "opener", "ada");
        let members = tx.put_object(ROOT, "members", ObjType::List).unwrap();
        let ada = tx.insert_object(&members, 0, ObjType::Text).unwrap();
        tx.splice_text(&ada, 0, 0, "ada").unwrap();
        text(tx, &ROOT, "subject", "A stupid question");
        tx.put(ROOT, "created_at", 1_000).unwrap();
        tx.put_object(ROOT, "messages", ObjType::List).unwrap();
        text(tx, &ROOT, "state", "open");
        tx.put_object(ROOT, "tags", ObjType::List).unwrap();
    });
    let members = scene.list("members");
    scene.setup(MANAGER, move |tx| {
        let bob = tx.insert_object(&members, 1, ObjType::Text).unwrap();
        tx.splice_text(&bob, 0, 0, "bob").unwrap();
    });
    let messages = scene.list("messages");
    scene.setup(ADA, append_item(messages.clone(), "ada"));
    scene.setup(BOB, append_item(messages, "bob"));
    scene
}

/// Ada's drafts, with one half-written reply.
fn drafts() -> Scene {
    let mut scene = Scene::new();
    scene.setup(ADA, |tx| {
        tx.put(ROOT, "type", "drafts").unwrap();
        tx.put(ROOT, "schema", 1).unwrap();
        text(tx, &ROOT, "owner", "ada");
        let items = tx.put_object(ROOT, "items", ObjType::Map).unwrap();
        tx.put_object(ROOT, "mine", ObjType::Map).unwrap();
        let item = tx.put_object(&items, "reply:x", ObjType::Map).unwrap();
        text(tx, &item, "body", "half a thought");
    });
    scene
}

/// 48 cases a document kind unless `PROPTEST_CASES` asks for more (or fewer).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn whatever_the_rules_accept_on_a_published_post_leaves_it_valid(
        messages in prop::collection::vec(arb_message(), 1..8),
    ) {
        published_post().fuzz(messages)?;
    }

    #[test]
    fn whatever_the_rules_accept_on_a_draft_post_leaves_it_valid(
        messages in prop::collection::vec(arb_message(), 1..8),
    ) {
        draft_post().fuzz(messages)?;
    }

    #[test]
    fn whatever_the_rules_accept_on_a_conversation_leaves_it_valid(
        messages in prop::collection::vec(arb_message(), 1..8),
    ) {
        conversation().fuzz(messages)?;
    }

    #[test]
    fn the_summary_of_a_post_follows_any_change_as_a_whole_reading_would(
        messages in prop::collection::vec(arb_message(), 1..12),
    ) {
        let mut scene = published_post();
        for message in &messages {
            scene.force(message)?;
        }
    }

    #[test]
    fn the_summary_of_a_conversation_follows_any_change_as_a_whole_reading_would(
        messages in prop::collection::vec(arb_message(), 1..12),
    ) {
        let mut scene = conversation();
        for message in &messages {
            scene.force(message)?;
        }
    }

    #[test]
    fn whatever_the_rules_accept_on_a_drafts_document_leaves_it_valid(
        messages in prop::collection::vec(arb_message(), 1..8),
    ) {
        drafts().fuzz(messages)?;
    }
}

#[test]
fn a_change_that_edits_inside_a_reply_and_deletes_it_is_judged_without_a_panic() {
    let mut scene = published_post();
    let replies = scene.list("replies");
    let reply = At::now(&scene.doc).map_items(&ROOT, "replies")[0].clone();
    let body = At::now(&scene.doc)
        .object(&reply, "body", ObjType::Text)
        .unwrap();
    let bob = &users()[BOB];
    let heads = scene.doc.get_heads();
    let verdict = scene.send(bob, &heads, actor_of(bob), move |tx| {
        tx.splice_text(&body, 0, 0, "x").unwrap();
        tx.delete(&replies, 0).unwrap();
    });
    assert!(matches!(verdict, Some(Err(_))), "{verdict:?}");
}
