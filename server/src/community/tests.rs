//! The rules of SPEC §5, one behaviour each, on documents built with the
//! automerge library the way clients build them (strings as `Text`). The
//! same rules are driven end to end through real sync connections in
//! `tests/node/rules/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use automerge::transaction::{Transactable, Transaction};
use automerge::{ActorId, Automerge, ChangeHash, ObjId, ObjType, ROOT, ReadDoc};
use backchannel_sync::Refusal;

use super::SyncUser;
use super::actors::ActorBindings;
use super::fields::At;
use super::read::may_read;
use super::restrictions::{Restrictions, STALE_GRACE_MILLIS};
use super::schema::{DocFacts, limits};
use super::write::WriteCheck;
use crate::auth::Role;
use crate::store::{Batch, MemoryStore, Store};

fn user(id: &str, role: Role) -> SyncUser {
    SyncUser {
        id: id.to_string(),
        role,
        session_id: format!("session-{id}"),
    }
}

fn ada() -> SyncUser {
    user("ada", Role::Member)
}
fn bob() -> SyncUser {
    user("bob", Role::Member)
}
fn hal() -> SyncUser {
    user("hal", Role::Host)
}
fn meg() -> SyncUser {
    user("meg", Role::Manager)
}

/// A document as the server holds it, and the actors that wrote it.
struct Scene {
    doc: Automerge,
    creator: String,
    actors: ActorBindings,
    restrictions: Restrictions,
    /// The server's clock, in milliseconds.
    now: Arc<AtomicU64>,
    store: Arc<MemoryStore>,
}

fn text(tx: &mut Transaction<'_>, obj: &ObjId, key: &str, value: &str) {
    let id = tx.put_object(obj, key, ObjType::Text).unwrap();
    tx.splice_text(&id, 0, 0, value).unwrap();
}

fn text_in_list(tx: &mut Transaction<'_>, list: &ObjId, index: usize, value: &str) {
    let id = tx.insert_object(list, index, ObjType::Text).unwrap();
    tx.splice_text(&id, 0, 0, value).unwrap();
}

fn actor_of(user: &SyncUser) -> ActorId {
    let mut bytes = [0_u8; 16];
    for (slot, byte) in bytes.iter_mut().zip(user.id.bytes()) {
        *slot = byte;
    }
    ActorId::from(bytes)
}

impl Scene {
    fn new(creator: &SyncUser) -> Self {
        let store = Arc::new(MemoryStore::default());
        let now = Arc::new(AtomicU64::new(1_000_000));
        let clock = now.clone();
        Self {
            doc: Automerge::new(),
            creator: creator.id.clone(),
            actors: ActorBindings::new(store.clone()),
            restrictions: Restrictions::new(
                store.clone(),
                Arc::new(move || clock.load(Ordering::SeqCst)),
                STALE_GRACE_MILLIS,
            ),
            now,
            store,
        }
    }

    fn wait(&self, millis: u64) {
        self.now.fetch_add(millis, Ordering::SeqCst);
    }

    /// The server's verdict on `changes`, already applied to `doc`; what an
    /// accepted message needs stored is stored, as the round's write would.
    fn verdict(
        &self,
        doc: &Automerge,
        previous: &Automerge,
        who: &SyncUser,
        before: &[ChangeHash],
        changes: &[automerge::Change],
    ) -> Result<(), Refusal> {
        let writes = WriteCheck {
            document: "the-document",
            doc,
            previous: Some(previous),
            user: who,
            creator: &self.creator,
            actors: &self.actors,
            restrictions: &self.restrictions,
        }
        .check(before, changes)?;
        self.store.apply(Batch::of(writes)).unwrap();
        Ok(())
    }

    /// `who` makes a change on the document as it is now, with their own actor.
    fn write(
        &mut self,
        who: &SyncUser,
        change: impl FnOnce(&mut Transaction<'_>),
    ) -> Result<(), Refusal> {
        let heads = self.doc.get_heads();
        self.write_at(who, &heads, actor_of(who), change)
    }

    /// `who` makes a change on the document as it was at `heads` (offline),
    /// with `actor`; the server receives it now.
    fn write_at(
        &mut self,
        who: &SyncUser,
        heads: &[ChangeHash],
        actor: ActorId,
        change: impl FnOnce(&mut Transaction<'_>),
    ) -> Result<(), Refusal> {
        let mut device = self.doc.fork_at(heads).unwrap().with_actor(actor);
        let mut tx = device.transaction();
        change(&mut tx);
        tx.commit();
        let new: Vec<_> = device
            .get_changes(heads)
            .into_iter()
            .filter(|change| self.doc.get_change_by_hash(&change.hash()).is_none())
            .collect();
        let before = self.doc.get_heads();
        let previous = self.doc.clone();
        self.doc.apply_changes(new.clone()).unwrap();
        let verdict = self.verdict(&self.doc, &previous, who, &before, &new);
        if verdict.is_err() {
            self.doc = previous;
        }
        verdict
    }

    fn facts(&self) -> DocFacts {
        DocFacts::read(At::now(&self.doc))
    }

    fn can_read(&self, who: &SyncUser) -> bool {
        may_read(who, &self.facts(), &self.creator)
    }

    fn list(&self, key: &str) -> ObjId {
        At::now(&self.doc)
            .object(&ROOT, key, ObjType::List)
            .unwrap()
    }

    fn item(&self, key: &str, index: usize) -> ObjId {
        At::now(&self.doc).map_items(&ROOT, key)[index].clone()
    }

    fn text_of(&self, obj: &ObjId, key: &str) -> Option<String> {
        At::now(&self.doc).text(obj, key)
    }
}

fn assert_refused(result: Result<(), Refusal>, rule: &str) {
    match result {
        Ok(()) => panic!("expected a refusal by rule {rule}, but the change was accepted"),
        Err(refusal) => assert!(
            refusal.rule.contains(&format!("rule {rule}:")),
            "expected rule {rule}, got {refusal}"
        ),
    }
}

fn new_post(tx: &mut Transaction<'_>, author: &str, status: &str) {
    tx.put(ROOT, "type", "post").unwrap();
    tx.put(ROOT, "schema", 1).unwrap();
    text(tx, &ROOT, "author", author);
    tx.put(ROOT, "created_at", 1_000).unwrap();
    text(tx, &ROOT, "status", status);
    text(tx, &ROOT, "title", "Where is the meetup?");
    text(tx, &ROOT, "body", "I could not find it.");
    tx.put_object(ROOT, "replies", ObjType::List).unwrap();
}

fn published_post_by(author: &SyncUser) -> Scene {
    let mut scene = Scene::new(author);
    scene
        .write(author, |tx| new_post(tx, &author.id, "published"))
        .unwrap();
    scene
}

fn reply(scene: &Scene, author: &str) -> impl FnOnce(&mut Transaction<'_>) + use<> {
    let replies = scene.list("replies");
    let author = author.to_string();
    move |tx| {
        let index = tx.length(&replies);
        let item = tx.insert_object(&replies, index, ObjType::Map).unwrap();
        text(tx, &item, "id", &format!("reply-{index}"));
        text(tx, &item, "author", &author);
        tx.put(&item, "created_at", 2_000).unwrap();
        text(tx, &item, "body", "It is in the library.");
    }
}

fn set_text(
    obj: ObjId,
    key: &'static str,
    value: &'static str,
) -> impl FnOnce(&mut Transaction<'_>) + use<> {
    move |tx| text(tx, &obj, key, value)
}

fn new_conversation(tx: &mut Transaction<'_>, opener: &str, members: &[&str]) {
    tx.put(ROOT, "type", "conversation").unwrap();
    tx.put(ROOT, "schema", 1).unwrap();
    text(tx, &ROOT, "kind", "question");
    text(tx, &ROOT, "opener", opener);
    let list = tx.put_object(ROOT, "members", ObjType::List).unwrap();
    for (index, member) in members.iter().enumerate() {
        text_in_list(tx, &list, index, member);
    }
    text(tx, &ROOT, "subject", "A stupid question");
    tx.put(ROOT, "created_at", 1_000).unwrap();
    let messages = tx.put_object(ROOT, "messages", ObjType::List).unwrap();
    let first = tx.insert_object(&messages, 0, ObjType::Map).unwrap();
    text(tx, &first, "id", "m0");
    text(tx, &first, "author", opener);
    tx.put(&first, "created_at", 1_000).unwrap();
    text(tx, &first, "body", "How do I change my name?");
    text(tx, &ROOT, "state", "open");
    tx.put_object(ROOT, "tags", ObjType::List).unwrap();
}

fn conversation_opened_by(opener: &SyncUser) -> Scene {
    let mut scene = Scene::new(opener);
    scene
        .write(opener, |tx| new_conversation(tx, &opener.id, &[&opener.id]))
        .unwrap();
    scene
}

fn message(scene: &Scene, author: &str) -> impl FnOnce(&mut Transaction<'_>) + use<> {
    let messages = scene.list("messages");
    let author = author.to_string();
    move |tx| {
        let index = tx.length(&messages);
        let item = tx.insert_object(&messages, index, ObjType::Map).unwrap();
        text(tx, &item, "id", &format!("m{index}"));
        text(tx, &item, "author", &author);
        tx.put(&item, "created_at", 3_000).unwrap();
        text(tx, &item, "body", "Here is how.");
    }
}

fn add_member(scene: &Scene, member: &'static str) -> impl FnOnce(&mut Transaction<'_>) + use<> {
    let members = scene.list("members");
    move |tx| {
        let index = tx.length(&members);
        text_in_list(tx, &members, index, member);
    }
}

// ---- documents without a type -------------------------------------------

#[test]
fn a_document_without_a_type_is_read_and_written_by_its_creator_only() {
    let mut scene = Scene::new(&ada());
    scene
        .write(&ada(), |tx| tx.put(ROOT, "anything", 1).unwrap())
        .unwrap();
    assert!(scene.can_read(&ada()));
    assert!(!scene.can_read(&meg()));
    assert_refused(
        scene.write(&bob(), |tx| tx.put(ROOT, "x", 1).unwrap()),
        "creator-only",
    );
}

#[test]
fn a_client_cannot_create_an_index_or_an_unknown_type() {
    let mut scene = Scene::new(&ada());
    assert_refused(
        scene.write(&ada(), |tx| {
            tx.put(ROOT, "type", "index").unwrap();
            tx.put(ROOT, "schema", 1).unwrap();
        }),
        "server-only",
    );
    assert_refused(
        scene.write(&ada(), |tx| tx.put(ROOT, "type", "poll").unwrap()),
        "unknown-type",
    );
}

// ---- posts ---------------------------------------------------------------

#[test]
fn a_new_post_must_name_its_creator_as_author() {
    let mut scene = Scene::new(&ada());
    assert_refused(
        scene.write(&ada(), |tx| new_post(tx, "bob", "published")),
        "invalid-value",
    );
}

#[test]
fn a_draft_post_is_read_and_written_by_its_author_only() {
    let mut scene = Scene::new(&ada());
    scene
        .write(&ada(), |tx| new_post(tx, "ada", "draft"))
        .unwrap();
    assert!(scene.can_read(&ada()));
    assert!(!scene.can_read(&bob()));
    assert!(!scene.can_read(&meg()));
    scene
        .write(&ada(), set_text(ROOT, "title", "A better title"))
        .unwrap();
    scene
        .write(&ada(), |tx| tx.put(ROOT, "anonymous", true).unwrap())
        .unwrap();
    scene
        .write(&ada(), set_text(ROOT, "status", "published"))
        .unwrap();
    assert!(scene.can_read(&bob()));
}

#[test]
fn a_published_post_is_read_by_everyone_signed_in() {
    let scene = published_post_by(&ada());
    for reader in [ada(), bob(), hal(), meg()] {
        assert!(scene.can_read(&reader));
    }
}

#[test]
fn anyone_signed_in_appends_a_reply_as_themselves() {
    let mut scene = published_post_by(&ada());
    scene.write(&bob(), reply(&scene, "bob")).unwrap();
    scene.write(&hal(), reply(&scene, "hal")).unwrap();
    assert_eq!(At::now(&scene.doc).map_items(&ROOT, "replies").len(), 2);
}

#[test]
fn a_reply_whose_author_is_someone_else_is_refused() {
    let mut scene = published_post_by(&ada());
    assert_refused(scene.write(&bob(), reply(&scene, "ada")), "own-name-only");
}

#[test]
fn a_reply_with_an_unknown_field_is_refused() {
    let mut scene = published_post_by(&ada());
    let replies = scene.list("replies");
    assert_refused(
        scene.write(&bob(), move |tx| {
            let item = tx.insert_object(&replies, 0, ObjType::Map).unwrap();
            text(tx, &item, "id", "r1");
            text(tx, &item, "author", "bob");
            tx.put(&item, "created_at", 1).unwrap();
            text(tx, &item, "body", "hi");
            tx.put(&item, "pinned", true).unwrap();
        }),
        "unknown-field",
    );
}

#[test]
fn only_the_author_edits_a_published_posts_title_and_body() {
    let mut scene = published_post_by(&ada());
    scene
        .write(&ada(), set_text(ROOT, "body", "Found it."))
        .unwrap();
    assert_refused(
        scene.write(&bob(), set_text(ROOT, "title", "Mine now")),
        "author-only",
    );
    assert_refused(
        scene.write(&meg(), set_text(ROOT, "body", "Edited by staff")),
        "author-only",
    );
}

#[test]
fn nobody_edits_another_persons_reply() {
    let mut scene = published_post_by(&ada());
    scene.write(&bob(), reply(&scene, "bob")).unwrap();
    let item = scene.item("replies", 0);
    let body = At::now(&scene.doc)
        .object(&item, "body", ObjType::Text)
        .unwrap();
    assert_refused(
        scene.write(&ada(), move |tx| tx.splice_text(&body, 0, 5, "").unwrap()),
        "reply-author-only",
    );
    assert_refused(
        scene.write(&meg(), set_text(item.clone(), "body", "moderated")),
        "reply-author-only",
    );
    scene
        .write(
            &bob(),
            set_text(item.clone(), "body", "It moved to the café."),
        )
        .unwrap();
    assert_eq!(
        scene.text_of(&item, "body").as_deref(),
        Some("It moved to the café.")
    );
}

#[test]
fn a_replys_body_stays_text() {
    let mut scene = published_post_by(&ada());
    scene.write(&bob(), reply(&scene, "bob")).unwrap();
    let item = scene.item("replies", 0);
    assert_refused(
        scene.write(&bob(), move |tx| {
            let map = tx.put_object(&item, "body", ObjType::Map).unwrap();
            tx.put(&map, "html", "<b>hi</b>").unwrap();
        }),
        "invalid-value",
    );
}

#[test]
fn a_replys_author_or_a_manager_marks_it_deleted_but_no_one_else() {
    let mut scene = published_post_by(&ada());
    scene.write(&bob(), reply(&scene, "bob")).unwrap();
    scene.write(&bob(), reply(&scene, "bob")).unwrap();
    let first = scene.item("replies", 0);
    let second = scene.item("replies", 1);
    let (a, b, c) = (first.clone(), second.clone(), first.clone());
    scene
        .write(&bob(), move |tx| tx.put(&a, "deleted", true).unwrap())
        .unwrap();
    scene
        .write(&meg(), move |tx| tx.put(&b, "deleted", true).unwrap())
        .unwrap();
    assert_refused(
        scene.write(&ada(), move |tx| tx.put(&c, "deleted", false).unwrap()),
        "reply-author-only",
    );
}

#[test]
fn a_manager_who_deletes_a_reply_may_clear_its_words() {
    let mut scene = published_post_by(&ada());
    scene.write(&bob(), reply(&scene, "bob")).unwrap();
    let item = scene.item("replies", 0);
    let target = item.clone();
    scene
        .write(&meg(), move |tx| {
            tx.put(&target, "deleted", true).unwrap();
            text(tx, &target, "body", "");
        })
        .unwrap();
    assert_eq!(scene.text_of(&item, "body").as_deref(), Some(""));
}

#[test]
fn a_manager_may_not_put_words_in_someones_reply_nor_clear_one_left_standing() {
    let mut scene = published_post_by(&ada());
    scene.write(&bob(), reply(&scene, "bob")).unwrap();
    let item = scene.item("replies", 0);
    let (a, b) = (item.clone(), item.clone());
    assert_refused(
        scene.write(&meg(), move |tx| {
            tx.put(&a, "deleted", true).unwrap();
            text(tx, &a, "body", "I take it back.");
        }),
        "reply-author-only",
    );
    assert_refused(
        scene.write(&meg(), move |tx| text(tx, &b, "body", "")),
        "reply-author-only",
    );
}

#[test]
fn a_replys_author_deletes_and_restores_it_but_not_after_a_manager_deleted_it() {
    let mut scene = published_post_by(&ada());
    scene.write(&bob(), reply(&scene, "bob")).unwrap();
    let reply_ = scene.item("replies", 0);
    let (a, b, c, d) = (
        reply_.clone(),
        reply_.clone(),
        reply_.clone(),
        reply_.clone(),
    );
    scene
        .write(&bob(), move |tx| tx.put(&a, "deleted", true).unwrap())
        .unwrap();
    scene
        .write(&bob(), move |tx| tx.put(&b, "deleted", false).unwrap())
        .unwrap();
    scene
        .write(&meg(), move |tx| tx.put(&c, "deleted", true).unwrap())
        .unwrap();
    assert_refused(
        scene.write(&bob(), move |tx| tx.put(&d, "deleted", false).unwrap()),
        "team-deleted",
    );
    let restore = reply_.clone();
    scene
        .write(&meg(), move |tx| {
            tx.put(&restore, "deleted", false).unwrap()
        })
        .unwrap();
}

#[test]
fn a_restore_made_without_seeing_a_managers_deletion_does_not_win_over_it() {
    let mut scene = published_post_by(&ada());
    scene.write(&bob(), reply(&scene, "bob")).unwrap();
    let reply_ = scene.item("replies", 0);
    let before_deletion = scene.doc.get_heads();
    let deleted = reply_.clone();
    scene
        .write(&meg(), move |tx| tx.put(&deleted, "deleted", true).unwrap())
        .unwrap();
    // The highest actor id wins a conflict between ops of the same counter.
    let winning_actor = ActorId::from([0xff_u8; 16]);
    let restore = reply_.clone();
    assert_refused(
        scene.write_at(&bob(), &before_deletion, winning_actor, move |tx| {
            tx.put(&restore, "deleted", false).unwrap()
        }),
        "team-deleted",
    );
    assert_eq!(At::now(&scene.doc).boolean(&reply_, "deleted"), Some(true));
}

#[test]
fn replies_are_never_deleted_from_the_list() {
    let mut scene = published_post_by(&ada());
    scene.write(&bob(), reply(&scene, "bob")).unwrap();
    let replies = scene.list("replies");
    assert_refused(
        scene.write(&bob(), move |tx| tx.delete(&replies, 0).unwrap()),
        "append-only",
    );
    assert_refused(
        scene.write(&ada(), |tx| {
            tx.put_object(ROOT, "replies", ObjType::List).unwrap();
        }),
        "append-only",
    );
}

#[test]
fn identity_fields_never_change() {
    let mut scene = published_post_by(&ada());
    assert_refused(
        scene.write(&ada(), |tx| tx.put(ROOT, "type", "conversation").unwrap()),
        "immutable-field",
    );
    assert_refused(
        scene.write(&ada(), |tx| tx.put(ROOT, "created_at", 5).unwrap()),
        "immutable-field",
    );
    assert_refused(
        scene.write(&ada(), set_text(ROOT, "author", "bob")),
        "immutable-field",
    );
    scene.write(&bob(), reply(&scene, "bob")).unwrap();
    let item = scene.item("replies", 0);
    assert_refused(
        scene.write(&bob(), move |tx| tx.put(&item, "created_at", 1).unwrap()),
        "immutable-field",
    );
}

#[test]
fn the_author_hides_a_published_post_but_cannot_make_it_a_draft_again() {
    let mut scene = published_post_by(&ada());
    assert_refused(
        scene.write(&ada(), set_text(ROOT, "status", "draft")),
        "status-move",
    );
    scene
        .write(&ada(), set_text(ROOT, "status", "hidden"))
        .unwrap();
    assert!(!scene.can_read(&bob()));
    assert!(scene.can_read(&ada()));
    assert!(scene.can_read(&meg()));
}

#[test]
fn managers_hide_lock_and_unhide_members_do_not() {
    let mut scene = published_post_by(&ada());
    assert_refused(
        scene.write(&bob(), |tx| tx.put(ROOT, "locked", true).unwrap()),
        "managers-only",
    );
    assert_refused(
        scene.write(&bob(), set_text(ROOT, "status", "hidden")),
        "managers-only",
    );
    assert_refused(
        scene.write(&hal(), |tx| tx.put(ROOT, "locked", true).unwrap()),
        "managers-only",
    );
    scene
        .write(&meg(), |tx| tx.put(ROOT, "locked", true).unwrap())
        .unwrap();
    scene
        .write(&meg(), set_text(ROOT, "status", "hidden"))
        .unwrap();
    assert_refused(
        scene.write(&ada(), set_text(ROOT, "title", "while hidden")),
        "hidden-post",
    );
    assert_refused(
        scene.write(&ada(), set_text(ROOT, "status", "published")),
        "hidden-post",
    );
    scene
        .write(&meg(), set_text(ROOT, "status", "published"))
        .unwrap();
    assert!(scene.can_read(&bob()));
}

#[test]
fn a_status_that_is_not_one_of_the_three_is_refused() {
    let mut scene = published_post_by(&ada());
    assert_refused(
        scene.write(&meg(), set_text(ROOT, "status", "archived")),
        "invalid-value",
    );
}

#[test]
fn no_reply_is_appended_to_a_locked_post() {
    let mut scene = published_post_by(&ada());
    scene
        .write(&meg(), |tx| tx.put(ROOT, "locked", true).unwrap())
        .unwrap();
    assert_refused(scene.write(&bob(), reply(&scene, "bob")), "locked");
}

#[test]
fn a_reply_written_offline_before_the_lock_lands_and_one_after_seeing_it_does_not() {
    let mut scene = published_post_by(&ada());
    let before_lock = scene.doc.get_heads();
    scene
        .write(&meg(), |tx| tx.put(ROOT, "locked", true).unwrap())
        .unwrap();
    let offline_reply = reply(&scene, "bob");
    scene
        .write_at(&bob(), &before_lock, actor_of(&bob()), offline_reply)
        .unwrap();
    let after_lock = scene.doc.get_heads();
    let late = reply(&scene, "bob");
    assert_refused(
        scene.write_at(&bob(), &after_lock, ActorId::random(), late),
        "locked",
    );
}

#[test]
fn a_reply_written_before_the_lock_is_refused_once_the_lock_is_older_than_the_grace_time() {
    let mut scene = published_post_by(&ada());
    let before_lock = scene.doc.get_heads();
    scene
        .write(&meg(), |tx| tx.put(ROOT, "locked", true).unwrap())
        .unwrap();
    scene.wait(STALE_GRACE_MILLIS + 1);
    let stale = reply(&scene, "bob");
    assert_refused(
        scene.write_at(&bob(), &before_lock, actor_of(&bob()), stale),
        "locked",
    );
}

#[test]
fn a_manager_who_unlocks_and_replies_in_one_message_is_not_held_to_the_old_lock() {
    let mut scene = published_post_by(&ada());
    scene
        .write(&meg(), |tx| tx.put(ROOT, "locked", true).unwrap())
        .unwrap();
    scene.wait(STALE_GRACE_MILLIS + 1);
    let replies = scene.list("replies");
    let mut device = scene.doc.fork().with_actor(actor_of(&meg()));
    let mut unlock = device.transaction();
    unlock.put(ROOT, "locked", false).unwrap();
    unlock.commit();
    let mut answer = device.transaction();
    let item = answer.insert_object(&replies, 0, ObjType::Map).unwrap();
    text(&mut answer, &item, "id", "reply-0");
    text(&mut answer, &item, "author", "meg");
    answer.put(&item, "created_at", 2_000).unwrap();
    text(&mut answer, &item, "body", "Open again.");
    answer.commit();
    scene.write_message(&meg(), vec![device]).unwrap();
}

#[test]
fn an_unknown_post_field_is_refused() {
    let mut scene = published_post_by(&ada());
    assert_refused(
        scene.write(&ada(), |tx| tx.put(ROOT, "pinned", true).unwrap()),
        "unknown-field",
    );
}

// ---- conversations ---------------------------------------------------------

#[test]
fn a_conversation_is_read_by_its_members_and_managers_only() {
    let scene = conversation_opened_by(&ada());
    assert!(scene.can_read(&ada()));
    assert!(scene.can_read(&meg()));
    assert!(!scene.can_read(&bob()));
    assert!(!scene.can_read(&hal()));
}

#[test]
fn a_members_new_conversation_has_only_its_opener_as_member() {
    let mut scene = Scene::new(&ada());
    assert_refused(
        scene.write(&ada(), |tx| new_conversation(tx, "ada", &["ada", "bob"])),
        "invalid-value",
    );
    let mut scene = Scene::new(&meg());
    scene
        .write(&meg(), |tx| new_conversation(tx, "meg", &["meg", "bob"]))
        .unwrap();
    assert!(scene.can_read(&bob()));
}

#[test]
fn the_opener_must_be_the_creator() {
    let mut scene = Scene::new(&ada());
    assert_refused(
        scene.write(&ada(), |tx| new_conversation(tx, "bob", &["bob"])),
        "invalid-value",
    );
}

#[test]
fn readers_append_messages_as_themselves() {
    let mut scene = conversation_opened_by(&ada());
    scene.write(&ada(), message(&scene, "ada")).unwrap();
    scene.write(&meg(), message(&scene, "meg")).unwrap();
    assert_refused(scene.write(&ada(), message(&scene, "meg")), "own-name-only");
}

#[test]
fn someone_outside_the_conversation_cannot_write_to_it() {
    let mut scene = conversation_opened_by(&ada());
    assert_refused(scene.write(&bob(), message(&scene, "bob")), "members-only");
    assert_refused(scene.write(&hal(), message(&scene, "hal")), "members-only");
}

#[test]
fn messages_are_never_deleted_or_edited() {
    let mut scene = conversation_opened_by(&ada());
    let messages = scene.list("messages");
    assert_refused(
        scene.write(&meg(), move |tx| tx.delete(&messages, 0).unwrap()),
        "append-only",
    );
    let first = scene.item("messages", 0);
    assert_refused(
        scene.write(&ada(), set_text(first, "body", "rewritten")),
        "append-only",
    );
}

#[test]
fn only_managers_set_state_tags_assignee_and_members() {
    let mut scene = conversation_opened_by(&ada());
    assert_refused(
        scene.write(&ada(), add_member(&scene, "bob")),
        "managers-only",
    );
    assert_refused(
        scene.write(&ada(), set_text(ROOT, "state", "resolved")),
        "managers-only",
    );
    let tags = scene.list("tags");
    assert_refused(
        scene.write(&ada(), move |tx| text_in_list(tx, &tags, 0, "urgent")),
        "managers-only",
    );
    scene.write(&meg(), add_member(&scene, "bob")).unwrap();
    scene
        .write(&meg(), set_text(ROOT, "state", "resolved"))
        .unwrap();
    let tags = scene.list("tags");
    scene
        .write(&meg(), move |tx| text_in_list(tx, &tags, 0, "account"))
        .unwrap();
    scene
        .write(&meg(), set_text(ROOT, "assignee", "meg"))
        .unwrap();
    assert!(scene.can_read(&bob()));
}

#[test]
fn a_conversation_state_is_open_or_resolved() {
    let mut scene = conversation_opened_by(&ada());
    assert_refused(
        scene.write(&meg(), set_text(ROOT, "state", "snoozed")),
        "invalid-value",
    );
}

#[test]
fn only_the_opener_sets_publish_and_subject() {
    let mut scene = conversation_opened_by(&ada());
    scene
        .write(&ada(), |tx| {
            let publish = tx.put_object(ROOT, "publish", ObjType::Map).unwrap();
            tx.put(&publish, "consent", true).unwrap();
            tx.put(&publish, "anonymous", true).unwrap();
        })
        .unwrap();
    scene
        .write(&ada(), set_text(ROOT, "subject", "Renaming"))
        .unwrap();
    assert_refused(
        scene.write(&meg(), |tx| {
            tx.put_object(ROOT, "publish", ObjType::Map).unwrap();
        }),
        "opener-only",
    );
    assert_refused(
        scene.write(&meg(), set_text(ROOT, "subject", "Renamed by staff")),
        "opener-only",
    );
}

#[test]
fn a_removed_members_offline_message_lands_and_one_written_after_seeing_the_removal_does_not() {
    let mut scene = Scene::new(&meg());
    scene
        .write(&meg(), |tx| new_conversation(tx, "meg", &["meg", "bob"]))
        .unwrap();
    let before_removal = scene.doc.get_heads();
    let members = scene.list("members");
    scene
        .write(&meg(), move |tx| tx.delete(&members, 1).unwrap())
        .unwrap();
    assert!(!scene.can_read(&bob()));
    let offline = message(&scene, "bob");
    scene
        .write_at(&bob(), &before_removal, actor_of(&bob()), offline)
        .unwrap();
    let after = scene.doc.get_heads();
    let late = message(&scene, "bob");
    assert_refused(
        scene.write_at(&bob(), &after, actor_of(&bob()), late),
        "members-only",
    );
}

#[test]
fn a_removed_members_message_written_before_the_removal_is_refused_after_the_grace_time() {
    let mut scene = Scene::new(&meg());
    scene
        .write(&meg(), |tx| new_conversation(tx, "meg", &["meg", "bob"]))
        .unwrap();
    let before_removal = scene.doc.get_heads();
    let members = scene.list("members");
    scene
        .write(&meg(), move |tx| tx.delete(&members, 1).unwrap())
        .unwrap();
    scene.wait(STALE_GRACE_MILLIS + 1);
    let stale = message(&scene, "bob");
    assert_refused(
        scene.write_at(&bob(), &before_removal, actor_of(&bob()), stale),
        "members-only",
    );
}

// ---- actors, drafts, server-kept documents ----------------------------------

#[test]
fn a_change_by_another_users_actor_is_refused() {
    let mut scene = published_post_by(&ada());
    let heads = scene.doc.get_heads();
    let replay = reply(&scene, "bob");
    assert_refused(
        scene.write_at(&bob(), &heads, actor_of(&ada()), replay),
        "actor-binding",
    );
}

#[test]
fn a_refused_change_binds_none_of_the_new_actors_it_carried() {
    let mut scene = published_post_by(&ada());
    let fresh = ActorId::from([0x42_u8; 16]);
    let heads = scene.doc.get_heads();
    assert_refused(
        scene.write_at(
            &bob(),
            &heads,
            fresh.clone(),
            set_text(ROOT, "title", "Mine now"),
        ),
        "author-only",
    );
    assert_eq!(scene.actors.owner(&fresh).unwrap(), None);
    // The actor is still free: its real owner's first change lands.
    let heads = scene.doc.get_heads();
    let reply = reply(&scene, "ada");
    scene
        .write_at(&ada(), &heads, fresh.clone(), reply)
        .unwrap();
    assert_eq!(scene.actors.owner(&fresh).unwrap().as_deref(), Some("ada"));
}

#[test]
fn one_message_binds_at_most_a_bounded_number_of_new_actors() {
    let scene = published_post_by(&ada());
    let before = scene.doc.get_heads();
    let mut device = scene.doc.fork();
    for n in 0..=limits::NEW_ACTORS_PER_MESSAGE {
        let mut actor = [0_u8; 16];
        actor[..8].copy_from_slice(&(n as u64 + 1).to_be_bytes());
        device.set_actor(ActorId::from(actor));
        let mut tx = device.transaction();
        tx.put(ROOT, "locked", n % 2 == 0).unwrap();
        tx.commit();
    }
    let changes: Vec<_> = device.get_changes(&before);
    let mut doc = scene.doc.clone();
    doc.apply_changes(changes.clone()).unwrap();
    let verdict = scene.verdict(&doc, &scene.doc, &meg(), &before, &changes);
    assert_refused(verdict, "too-many");
    assert_eq!(scene.actors.owner(changes[0].actor_id()).unwrap(), None);
}

#[test]
fn a_drafts_document_is_its_owners_alone() {
    let mut scene = Scene::new(&ada());
    scene
        .write(&ada(), |tx| {
            tx.put(ROOT, "type", "drafts").unwrap();
            tx.put(ROOT, "schema", 1).unwrap();
            text(tx, &ROOT, "owner", "ada");
            tx.put_object(ROOT, "items", ObjType::Map).unwrap();
            tx.put_object(ROOT, "mine", ObjType::Map).unwrap();
        })
        .unwrap();
    let items = At::now(&scene.doc)
        .object(&ROOT, "items", ObjType::Map)
        .unwrap();
    let for_ada = items.clone();
    scene
        .write(&ada(), move |tx| {
            let item = tx.put_object(&for_ada, "reply:x", ObjType::Map).unwrap();
            text(tx, &item, "body", "half a thought");
        })
        .unwrap();
    assert!(!scene.can_read(&bob()));
    assert!(!scene.can_read(&meg()));
    assert_refused(
        scene.write(&bob(), move |tx| tx.delete(&items, "reply:x").unwrap()),
        "owner-only",
    );
    assert_refused(
        scene.write(&ada(), set_text(ROOT, "owner", "bob")),
        "immutable-field",
    );
}

#[test]
fn nobody_writes_to_the_index() {
    let server = user(crate::community::SERVER_OWNER, Role::Manager);
    let mut scene = Scene::new(&server);
    // The server's own edits do not go through the rules; build the index directly.
    let mut tx = scene.doc.transaction();
    tx.put(ROOT, "type", "index").unwrap();
    tx.put(ROOT, "schema", 1).unwrap();
    tx.put_object(ROOT, "posts", ObjType::Map).unwrap();
    tx.commit();
    assert!(scene.can_read(&bob()));
    let posts = At::now(&scene.doc)
        .object(&ROOT, "posts", ObjType::Map)
        .unwrap();
    assert_refused(
        scene.write(&meg(), move |tx| {
            tx.put_object(&posts, "fake", ObjType::Map).unwrap();
        }),
        "server-only",
    );
}

// ---- changes built on old or empty histories ------------------------------

impl Scene {
    /// One message carrying changes made on separate devices.
    fn write_message(&mut self, who: &SyncUser, devices: Vec<Automerge>) -> Result<(), Refusal> {
        let before = self.doc.get_heads();
        let mut changes = Vec::new();
        for device in &devices {
            for change in device.get_changes(&[]) {
                if self.doc.get_change_by_hash(&change.hash()).is_none() {
                    changes.push(change);
                }
            }
        }
        let previous = self.doc.clone();
        self.doc.apply_changes(changes.clone()).unwrap();
        let verdict = self.verdict(&self.doc, &previous, who, &before, &changes);
        if verdict.is_err() {
            self.doc = previous;
        }
        verdict
    }
}

#[test]
fn a_change_built_on_an_empty_history_is_judged_under_the_documents_type() {
    let mut scene = conversation_opened_by(&ada());
    assert_refused(
        scene.write_at(&ada(), &[], ActorId::random(), |tx| {
            let list = tx.put_object(ROOT, "members", ObjType::List).unwrap();
            text_in_list(tx, &list, 0, "ada");
            text_in_list(tx, &list, 1, "bob");
        }),
        "managers-only",
    );
    assert!(!scene.can_read(&bob()));
}

#[test]
fn a_creation_is_judged_on_the_merge_of_its_changes() {
    let mut scene = Scene::new(&ada());
    let mut first = Automerge::new().with_actor(ActorId::random());
    let mut tx = first.transaction();
    new_post(&mut tx, "ada", "published");
    tx.commit();
    let mut second = Automerge::new().with_actor(ActorId::from([0xff; 16]));
    let mut tx = second.transaction();
    // Enough ops first that this `author` wins the conflict.
    let scratch = tx.put_object(ROOT, "scratch", ObjType::Text).unwrap();
    tx.splice_text(&scratch, 0, 0, &"x".repeat(50)).unwrap();
    tx.delete(ROOT, "scratch").unwrap();
    text(&mut tx, &ROOT, "author", "bob");
    tx.commit();
    let refusal = scene
        .write_message(&ada(), vec![first, second])
        .unwrap_err();
    assert!(refusal.rule.contains("`author`"), "{refusal}");
}

#[test]
fn a_change_made_while_the_post_was_a_draft_is_judged_as_published_once_it_is() {
    let mut scene = Scene::new(&ada());
    scene
        .write(&ada(), |tx| new_post(tx, "ada", "draft"))
        .unwrap();
    let while_draft = scene.doc.get_heads();
    scene
        .write(&ada(), set_text(ROOT, "status", "published"))
        .unwrap();
    scene.write(&bob(), reply(&scene, "bob")).unwrap();
    assert_refused(
        scene.write_at(&ada(), &while_draft, ActorId::random(), |tx| {
            tx.put_object(ROOT, "replies", ObjType::List).unwrap();
        }),
        "append-only",
    );
    assert_refused(
        scene.write_at(&ada(), &while_draft, ActorId::random(), |tx| {
            tx.put(ROOT, "locked", false).unwrap();
        }),
        "managers-only",
    );
    // Words written offline while it was a draft still land.
    scene
        .write_at(
            &ada(),
            &while_draft,
            ActorId::random(),
            set_text(ROOT, "body", "fixed a typo"),
        )
        .unwrap();
}

#[test]
fn an_author_cannot_undo_a_managers_hide_with_a_value_written_on_older_heads() {
    let mut scene = published_post_by(&ada());
    let published = scene.doc.get_heads();
    scene
        .write(&meg(), set_text(ROOT, "status", "hidden"))
        .unwrap();
    // The largest actor wins the conflict on `status`.
    assert_refused(
        scene.write_at(
            &ada(),
            &published,
            ActorId::from([0xff; 16]),
            set_text(ROOT, "status", "published"),
        ),
        "status-move",
    );
    assert!(!scene.can_read(&bob()));
}

#[test]
fn a_drafts_author_cannot_slip_someone_elses_reply_into_it() {
    let mut scene = Scene::new(&ada());
    scene
        .write(&ada(), |tx| new_post(tx, "ada", "draft"))
        .unwrap();
    assert_refused(
        scene.write(&ada(), |tx| {
            let list = tx.put_object(ROOT, "replies", ObjType::List).unwrap();
            let item = tx.insert_object(&list, 0, ObjType::Map).unwrap();
            text(tx, &item, "id", "r1");
            text(tx, &item, "author", "bob");
            tx.put(&item, "created_at", 1).unwrap();
            text(tx, &item, "body", "words bob never wrote");
        }),
        "own-name-only",
    );
}

#[test]
fn a_title_longer_than_200_characters_is_refused_and_200_are_kept() {
    let mut scene = published_post_by(&ada());
    let longest = "é".repeat(200);
    scene
        .write(&ada(), move |tx| text(tx, &ROOT, "title", &longest))
        .unwrap();
    let too_long = "é".repeat(201);
    assert_refused(
        scene.write(&ada(), move |tx| text(tx, &ROOT, "title", &too_long)),
        "too-long",
    );
}

#[test]
fn a_new_post_with_an_oversized_body_is_refused() {
    let mut scene = Scene::new(&ada());
    assert_refused(
        scene.write(&ada(), |tx| {
            new_post(tx, "ada", "published");
            text(tx, &ROOT, "body", &"x".repeat(20_001));
        }),
        "too-long",
    );
}

#[test]
fn a_reply_body_grown_past_20000_characters_is_refused() {
    let mut scene = published_post_by(&ada());
    scene.write(&bob(), reply(&scene, "bob")).unwrap();
    let reply_ = scene.item("replies", 0);
    assert_refused(
        scene.write(&bob(), move |tx| {
            text(tx, &reply_, "body", &"x".repeat(20_001))
        }),
        "too-long",
    );
}

#[test]
fn a_conversation_holds_at_most_20_tags_of_40_characters() {
    let mut scene = conversation_opened_by(&ada());
    let tags = scene.list("tags");
    let long_tag = tags.clone();
    assert_refused(
        scene.write(&meg(), move |tx| {
            text_in_list(tx, &long_tag, 0, &"t".repeat(41))
        }),
        "too-long",
    );
    let many = tags.clone();
    scene
        .write(&meg(), move |tx| {
            for index in 0..20 {
                text_in_list(tx, &many, index, "needs-help");
            }
        })
        .unwrap();
    assert_refused(
        scene.write(&meg(), move |tx| text_in_list(tx, &tags, 20, "one-more")),
        "too-many",
    );
}

#[test]
fn what_the_server_copies_into_the_index_is_clipped_to_the_limits() {
    let mut scene = Scene::new(&ada());
    scene
        .write(&ada(), |tx| new_post(tx, "ada", "published"))
        .unwrap();
    // A document written before the limits existed.
    let mut tx = scene.doc.transaction();
    text(&mut tx, &ROOT, "title", &"t".repeat(5_000));
    tx.commit();
    let Some(super::summary::Summary::Post(post)) = super::summary::summarize(At::now(&scene.doc))
    else {
        panic!("a post summary");
    };
    assert_eq!(post.title.chars().count(), 200);
}
