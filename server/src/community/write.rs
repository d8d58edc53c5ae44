//! Who may change what: the write column of SPEC §5, judged change by change
//! and op by op (see docs/RULES.md).
//!
//! | document          | write                                                        |
//! |-------------------|--------------------------------------------------------------|
//! | (no type yet)     | its creator: anything; setting `type` must make it valid     |
//! | post, draft       | author: anything                                             |
//! | post, published   | author: `title`, `body`, `status` → hidden; signed in: append |
//! |                   | a reply as themselves (not when locked); a reply's author:   |
//! |                   | its `body`, `deleted`; managers: `status`, `locked`, any     |
//! |                   | reply's `deleted`                                            |
//! | post, hidden      | managers: `status`                                           |
//! | conversation      | readers: append a message as themselves; managers: `state`,  |
//! |                   | `tags`, `assignee`, `members`; opener: `publish`, `subject`  |
//! | drafts            | owner                                                        |
//! | index, directory, inbox | the server only                                        |

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;

use automerge::legacy::{self, ObjectId};
use automerge::{ActorId, Automerge, Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc};
use backchannel_sync::Refusal;
use backchannel_sync::storage::StorageWrite;

use super::SyncUser;
use super::actors::{ActorBindings, ClaimError, Reservation, SERVER_OWNER};
use super::fields::At;
use super::restrictions::{Restrictions, is_stricter};
use super::schema::{
    CONVERSATION_KINDS, CONVERSATION_STATES, DocFacts, DocType, PostStatus, limits,
};
use crate::auth::Role;

const POST_FIELDS: [&str; 10] = [
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
];
const CONVERSATION_FIELDS: [&str; 13] = [
    "type",
    "schema",
    "kind",
    "opener",
    "members",
    "subject",
    "about",
    "created_at",
    "messages",
    "state",
    "tags",
    "assignee",
    "publish",
];
const DRAFTS_FIELDS: [&str; 5] = ["type", "schema", "owner", "items", "mine"];
const REPLY_FIELDS: [&str; 5] = ["id", "author", "created_at", "body", "deleted"];
const MESSAGE_FIELDS: [&str; 4] = ["id", "author", "created_at", "body"];

/// Root fields that never change once a document has its type.
const IMMUTABLE_ROOT: [&str; 7] = [
    "type",
    "schema",
    "author",
    "opener",
    "created_at",
    "kind",
    "owner",
];

/// Root fields that [`DocFacts`] reads.
const FACT_FIELDS: [&str; 7] = [
    "type", "status", "locked", "members", "author", "opener", "owner",
];

fn sorted(mut heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    heads.sort();
    heads
}

fn unrecorded(error: impl std::fmt::Display) -> Refusal {
    refuse(
        "actor-binding",
        format!("the server could not record the actor: {error}"),
    )
}

fn team_deleted() -> Refusal {
    refuse(
        "team-deleted",
        "a reply a manager deleted is restored by a manager only",
    )
}

fn refuse(rule: &str, detail: impl std::fmt::Display) -> Refusal {
    Refusal::new(format!("rule {rule}: {detail}"))
}

/// Everything the judge needs besides the changes.
pub struct WriteCheck<'a> {
    pub document: &'a str,
    pub doc: &'a Automerge,
    /// `doc` as it was before the message, when the engine kept a copy.
    pub previous: Option<&'a Automerge>,
    pub user: &'a SyncUser,
    pub creator: &'a str,
    pub actors: &'a ActorBindings,
    pub restrictions: &'a Restrictions,
}

impl WriteCheck<'_> {
    /// Judges `changes` (already applied to `doc`; its heads before them were
    /// `before`). The first refusal wins. An accepted message answers the
    /// writes its verdict needs: the new actors it binds to the user (only
    /// if every change passes) and the restriction it made, if any.
    pub fn check(
        &self,
        before: &[ChangeHash],
        changes: &[Change],
    ) -> Result<Vec<StorageWrite>, Refusal> {
        let mut reserved = Vec::new();
        for change in changes {
            match self.actors.reserve(change.actor_id(), &self.user.id) {
                Ok(reservation) => {
                    reserved.extend(reservation);
                    if reserved.len() > limits::NEW_ACTORS_PER_MESSAGE {
                        return Err(refuse(
                            "too-many",
                            format!(
                                "one message may bring at most {} new actors",
                                limits::NEW_ACTORS_PER_MESSAGE
                            ),
                        ));
                    }
                }
                Err(ClaimError::TakenBy(_)) => {
                    return Err(refuse(
                        "actor-binding",
                        format!(
                            "the actor {} belongs to another user",
                            change.actor_id().to_hex_string()
                        ),
                    ));
                }
                Err(ClaimError::Store(error)) => return Err(unrecorded(error)),
            }
        }
        let before_facts = self.judge(before, changes)?;
        let mut writes: Vec<StorageWrite> = reserved
            .into_iter()
            .filter_map(Reservation::commit)
            .collect();
        if is_stricter(&before_facts, &DocFacts::read(At::now(self.doc))) {
            writes.push(self.restrictions.record(self.document));
        }
        Ok(writes)
    }

    /// Judges the message; answers the document's facts before it.
    fn judge(&self, before: &[ChangeHash], changes: &[Change]) -> Result<DocFacts, Refusal> {
        let before_facts = DocFacts::read(self.as_before(before));
        let Some(type_name) = before_facts.type_name.clone() else {
            // A document without a type is its creator's alone; the message
            // that gives it one must leave the merged result valid (each
            // change on its own could look valid while their merge is not).
            if self.creator != self.user.id {
                return Err(refuse(
                    "creator-only",
                    "only its creator writes a document that has no type yet",
                ));
            }
            let now = At::now(self.doc);
            if let Some(new_type) = now.text(&ROOT, "type") {
                self.validate_new_document(&new_type, now)?;
            }
            return Ok(before_facts);
        };
        let doc_type = client_writable_type(&type_name)?;
        // Reading a document at past heads walks its history, so the facts a
        // change saw are carried along a chain of changes that leave them be
        // (the usual message: one device's changes, each on the last).
        let mut known: Option<(Vec<ChangeHash>, DocFacts)> =
            Some((sorted(before.to_vec()), before_facts.clone()));
        for change in changes {
            let deps = sorted(change.deps().to_vec());
            let seen = match &known {
                Some((heads, facts)) if *heads == deps => facts.clone(),
                _ => self.stale_bounded(
                    DocFacts::read(At::heads(self.doc, &deps)),
                    &deps,
                    before,
                    &before_facts,
                )?,
            };
            let changed_state = self.judge_change(change, doc_type, &before_facts, &seen)?;
            known = (!changed_state).then(|| (vec![change.hash()], seen));
        }
        self.immutable_fields_kept(before)?;
        if doc_type == DocType::Post && At::now(self.doc).get(&ROOT, "status").is_some() {
            // Judged per change above, and again on the merged result: a
            // value written on old heads can win a conflict against a newer one.
            self.validate_status_move(&before_facts, At::now(self.doc))?;
        }
        Ok(before_facts)
    }

    /// The document as it was before the message: its copy when there is
    /// one (a read at past heads walks the change graph each time).
    fn as_before<'b>(&'b self, before: &'b [ChangeHash]) -> At<'b> {
        match self.previous {
            Some(previous) => At::now(previous),
            None => At::heads(self.doc, before),
        }
    }

    /// The facts a change built on `deps` is judged on. A change written
    /// without a restriction the server already had (`seen` laxer than
    /// `before`, and `deps` not built on `before`) is judged as its author
    /// saw it only within the grace time after the restriction; later it is
    /// judged on the document as it is.
    fn stale_bounded(
        &self,
        seen: DocFacts,
        deps: &[ChangeHash],
        before: &[ChangeHash],
        before_facts: &DocFacts,
    ) -> Result<DocFacts, Refusal> {
        if !is_stricter(&seen, before_facts) || self.built_on(deps, before) {
            return Ok(seen);
        }
        let grace_over = self
            .restrictions
            .grace_over(self.document)
            .map_err(|error| {
                refuse(
                    "stale",
                    format!("the server could not read when the document was restricted: {error}"),
                )
            })?;
        Ok(if grace_over {
            before_facts.clone()
        } else {
            seen
        })
    }

    /// Whether every change reachable from `base` is also reachable from
    /// `deps`.
    fn built_on(&self, deps: &[ChangeHash], base: &[ChangeHash]) -> bool {
        let missing: HashSet<ChangeHash> = self
            .doc
            .get_changes(deps)
            .iter()
            .map(|change| change.hash())
            .collect();
        base.iter().all(|head| !missing.contains(head))
    }

    /// The state a change is judged on: identity (`author`, `opener`,
    /// `owner`) from the document as it is, since it never changes; `status`,
    /// `locked` and `members` as the change's author saw them. A change whose
    /// author saw no type (built on an empty history) sees the document as it
    /// is, and a post that was a draft then but is not now is judged as
    /// published: "the author writes anything" lasts only while it is a draft.
    fn effective_facts(seen: &DocFacts, now: &DocFacts) -> DocFacts {
        let typed_then = seen.type_name.is_some();
        let status = match (seen.status, now.status) {
            _ if !typed_then => now.status,
            (Some(PostStatus::Draft) | None, Some(PostStatus::Published | PostStatus::Hidden)) => {
                Some(PostStatus::Published)
            }
            (then, _) => then,
        };
        DocFacts {
            type_name: now.type_name.clone(),
            status,
            locked: if typed_then { seen.locked } else { now.locked },
            author: now.author.clone(),
            opener: now.opener.clone(),
            owner: now.owner.clone(),
            members: if typed_then {
                seen.members.clone()
            } else {
                now.members.clone()
            },
        }
    }

    fn role(&self) -> Role {
        self.user.role
    }

    fn is_manager(&self) -> bool {
        self.role() == Role::Manager
    }

    /// A safety net over the op rules: whatever the merge, a typed document's
    /// identity fields read the same after the message as before it.
    fn immutable_fields_kept(&self, before: &[ChangeHash]) -> Result<(), Refusal> {
        let then = self.as_before(before);
        if then.text(&ROOT, "type").is_none() {
            return Ok(());
        }
        let now = At::now(self.doc);
        for field in IMMUTABLE_ROOT {
            let (old, new) = (then.get(&ROOT, field), now.get(&ROOT, field));
            let same = match (&old, &new) {
                (None, None) => true,
                (Some(_), Some(_)) => {
                    then.text(&ROOT, field) == now.text(&ROOT, field)
                        && then.number(&ROOT, field) == now.number(&ROOT, field)
                }
                _ => false,
            };
            if !same {
                return Err(refuse(
                    "immutable-field",
                    format!("`{field}` never changes"),
                ));
            }
        }
        Ok(())
    }

    /// Judges one change; answers whether it touched a field the facts
    /// depend on. Values are validated on the document after the message (a
    /// later change of the same message may still fix a field up).
    fn judge_change(
        &self,
        change: &Change,
        doc_type: DocType,
        before_facts: &DocFacts,
        seen_facts: &DocFacts,
    ) -> Result<bool, Refusal> {
        let now = At::now(self.doc);
        let facts = Self::effective_facts(seen_facts, before_facts);
        let ops = DecodedOps::of(change)?;
        let mut touched = Touched::default();
        for (index, op) in ops.ops.iter().enumerate() {
            if ops.targets_new_object(op) {
                continue; // judged with the op that made its outermost new object
            }
            let place = ops.locate(self.doc, op)?;
            match doc_type {
                DocType::Post => self.judge_post_op(&facts, now, &place, op, &mut touched)?,
                DocType::Conversation => {
                    self.judge_conversation_op(&facts, &place, op, &mut touched)?
                }
                DocType::Drafts => self.judge_drafts_op(&facts, &place)?,
                DocType::Index | DocType::Directory | DocType::Inbox => {}
            }
            let clears_a_body = self.is_manager() && place.is_reply_body(doc_type);
            if !place.is_flag_field(doc_type) && !clears_a_body {
                self.own_words_only(op)?;
            }
            if let Some(new_object) = ops.created_object(self.doc, index, op)? {
                touched.new_objects.push((place.clone(), new_object));
            }
        }
        self.validate_touched(doc_type, &facts, now, &touched)?;
        Ok(touched
            .root
            .iter()
            .any(|field| FACT_FIELDS.contains(&field.as_str())))
    }

    /// Nobody overwrites or deletes what another user wrote.
    fn own_words_only(&self, op: &legacy::Op) -> Result<(), Refusal> {
        for pred in op.pred.iter() {
            let owner = self
                .actors
                .owner(pred.actor())
                .map_err(|error| refuse("others-words", error))?;
            match owner.as_deref() {
                Some(owner) if owner == self.user.id || owner == SERVER_OWNER => {}
                _ => {
                    return Err(refuse(
                        "others-words",
                        "nobody edits or removes another person's words",
                    ));
                }
            }
        }
        Ok(())
    }

    fn judge_post_op(
        &self,
        facts: &DocFacts,
        current: At<'_>,
        place: &Place,
        op: &legacy::Op,
        touched: &mut Touched,
    ) -> Result<(), Refusal> {
        let field = place.root_key()?;
        if IMMUTABLE_ROOT.contains(&field) {
            return Err(refuse(
                "immutable-field",
                format!("`{field}` never changes"),
            ));
        }
        if !POST_FIELDS.contains(&field) {
            return Err(refuse("unknown-field", format!("a post has no `{field}`")));
        }
        let is_author = facts.author.as_deref() == Some(self.user.id.as_str());
        touched.root.insert(field.to_string());
        match facts.status {
            Some(PostStatus::Draft) | None => {
                return if is_author {
                    Ok(())
                } else {
                    Err(refuse("author-only", "only its author writes a draft post"))
                };
            }
            Some(PostStatus::Hidden) => {
                return if self.is_manager() && field == "status" {
                    Ok(())
                } else {
                    Err(refuse(
                        "hidden-post",
                        "only managers change a hidden post, and only its `status`",
                    ))
                };
            }
            Some(PostStatus::Published) => {}
        }
        match field {
            "title" | "body" if is_author => Ok(()),
            "title" | "body" => Err(refuse(
                "author-only",
                format!("only the post's author edits its `{field}`"),
            )),
            "status" if is_author || self.is_manager() => Ok(()),
            "locked" if self.is_manager() => Ok(()),
            "status" | "locked" => Err(refuse(
                "managers-only",
                format!("only managers (and the author, to hide it) set `{field}`"),
            )),
            "anonymous" => Err(refuse(
                "draft-only",
                "`anonymous` is chosen before the post is published",
            )),
            "replies" => self.judge_reply_op(facts, current, place, op, touched),
            _ => Err(refuse("unknown-field", format!("a post has no `{field}`"))),
        }
    }

    fn judge_reply_op(
        &self,
        facts: &DocFacts,
        current: At<'_>,
        place: &Place,
        op: &legacy::Op,
        touched: &mut Touched,
    ) -> Result<(), Refusal> {
        match place.depth() {
            1 => Err(refuse("append-only", "the replies list is never replaced")),
            2 if op.insert && matches!(op.action, legacy::OpType::Make(ObjType::Map)) => {
                if facts.locked {
                    Err(refuse("locked", "the post is locked: no new replies"))
                } else {
                    Ok(())
                }
            }
            2 => Err(refuse(
                "append-only",
                "replies are appended, never deleted or replaced",
            )),
            _ => {
                let reply = place.objects[2].clone();
                let field = place.key_at(2).unwrap_or("");
                let reply_author = current.text(&reply, "author");
                let is_reply_author = reply_author.as_deref() == Some(self.user.id.as_str());
                match field {
                    "body" if is_reply_author => {
                        touched.reply_bodies.push(reply);
                        Ok(())
                    }
                    "deleted" if self.is_manager() => {
                        touched.reply_flags.push(reply);
                        Ok(())
                    }
                    "deleted" if is_reply_author => {
                        self.keeps_team_deletion(op)?;
                        touched.reply_flags.push(reply);
                        Ok(())
                    }
                    // A manager who deletes someone's reply may clear its
                    // words too (checked after the message: empty, deleted).
                    "body" if self.is_manager() && place.depth() == 3 => {
                        touched.cleared_bodies.push(reply);
                        Ok(())
                    }
                    "body" | "deleted" => Err(refuse(
                        "reply-author-only",
                        format!("only a reply's author changes its `{field}`"),
                    )),
                    "id" | "author" | "created_at" => Err(refuse(
                        "immutable-field",
                        format!("a reply's `{field}` never changes"),
                    )),
                    _ => Err(refuse("unknown-field", format!("a reply has no `{field}`"))),
                }
            }
        }
    }

    /// An author deletes their own reply and may restore it, but a reply a
    /// manager deleted stays deleted until a manager restores it.
    fn keeps_team_deletion(&self, op: &legacy::Op) -> Result<(), Refusal> {
        let deletes = matches!(
            &op.action,
            legacy::OpType::Put(automerge::ScalarValue::Boolean(true))
        );
        if deletes {
            return Ok(());
        }
        for pred in op.pred.iter() {
            if !self.is_own_actor(pred.actor())? {
                return Err(team_deleted());
            }
        }
        Ok(())
    }

    fn is_own_actor(&self, actor: &ActorId) -> Result<bool, Refusal> {
        let owner = self
            .actors
            .owner(actor)
            .map_err(|error| refuse("others-words", error))?;
        Ok(owner.as_deref() == Some(self.user.id.as_str()))
    }

    fn judge_conversation_op(
        &self,
        facts: &DocFacts,
        place: &Place,
        op: &legacy::Op,
        touched: &mut Touched,
    ) -> Result<(), Refusal> {
        if !self.is_manager() && !facts.is_member(&self.user.id) {
            return Err(refuse(
                "members-only",
                "only the conversation's members and managers write to it",
            ));
        }
        let field = place.root_key()?;
        if IMMUTABLE_ROOT.contains(&field) || field == "about" {
            return Err(refuse(
                "immutable-field",
                format!("`{field}` never changes"),
            ));
        }
        if !CONVERSATION_FIELDS.contains(&field) {
            return Err(refuse(
                "unknown-field",
                format!("a conversation has no `{field}`"),
            ));
        }
        touched.root.insert(field.to_string());
        let is_opener = facts.opener.as_deref() == Some(self.user.id.as_str());
        match field {
            "messages" => match place.depth() {
                2 if op.insert && matches!(op.action, legacy::OpType::Make(ObjType::Map)) => Ok(()),
                1 | 2 => Err(refuse(
                    "append-only",
                    "messages are appended, never deleted or replaced",
                )),
                _ => Err(refuse(
                    "append-only",
                    "a message cannot be changed once sent",
                )),
            },
            "state" | "tags" | "assignee" | "members" if self.is_manager() => Ok(()),
            "state" | "tags" | "assignee" | "members" => Err(refuse(
                "managers-only",
                format!("only managers set a conversation's `{field}`"),
            )),
            "subject" | "publish" if is_opener => Ok(()),
            _ => Err(refuse(
                "opener-only",
                format!("only the conversation's opener sets `{field}`"),
            )),
        }
    }

    fn judge_drafts_op(&self, facts: &DocFacts, place: &Place) -> Result<(), Refusal> {
        if facts.owner.as_deref() != Some(self.user.id.as_str()) {
            return Err(refuse(
                "owner-only",
                "only its owner writes a drafts document",
            ));
        }
        let field = place.root_key()?;
        if IMMUTABLE_ROOT.contains(&field) {
            return Err(refuse(
                "immutable-field",
                format!("`{field}` never changes"),
            ));
        }
        if !DRAFTS_FIELDS.contains(&field) {
            return Err(refuse(
                "unknown-field",
                format!("a drafts document has no `{field}`"),
            ));
        }
        Ok(())
    }

    /// A change made without seeing a manager's deletion must not win over it
    /// in the merge (op ids decide a conflict, and a client picks its own).
    fn no_concurrent_team_deletion(&self, after: At<'_>, reply: &ObjId) -> Result<(), Refusal> {
        let values = match after.heads {
            Some(heads) => after.doc.get_all_at(reply, "deleted", heads),
            None => after.doc.get_all(reply, "deleted"),
        }
        .unwrap_or_default();
        for (value, id) in values {
            let is_true = matches!(
                &value,
                automerge::Value::Scalar(scalar)
                    if matches!(scalar.as_ref(), automerge::ScalarValue::Boolean(true))
            );
            if let (true, ObjId::Id(_, actor, _)) = (is_true, &id)
                && !self.is_own_actor(actor)?
            {
                return Err(team_deleted());
            }
        }
        Ok(())
    }

    /// The values a change left in the fields it touched, read after it.
    fn validate_touched(
        &self,
        doc_type: DocType,
        facts: &DocFacts,
        after: At<'_>,
        touched: &Touched,
    ) -> Result<(), Refusal> {
        for (place, object) in &touched.new_objects {
            let field = place.key_at(0).unwrap_or("");
            if place.depth() == 2 && field == "replies" && doc_type == DocType::Post {
                self.validate_item(after, object, &REPLY_FIELDS, "reply")?;
            }
            if place.depth() == 2 && field == "messages" && doc_type == DocType::Conversation {
                self.validate_item(after, object, &MESSAGE_FIELDS, "message")?;
            }
        }
        for reply in &touched.reply_bodies {
            let body = after
                .text(reply, "body")
                .ok_or_else(|| refuse("invalid-value", "a reply's `body` is text"))?;
            within(&body, limits::BODY_CHARS, "a reply's `body`")?;
        }
        for reply in &touched.cleared_bodies {
            let cleared = after
                .text(reply, "body")
                .is_some_and(|body| body.is_empty());
            if !cleared || after.boolean(reply, "deleted") != Some(true) {
                return Err(refuse(
                    "reply-author-only",
                    "a manager may only clear the words of a reply they delete",
                ));
            }
        }
        for reply in &touched.reply_flags {
            if after.get(reply, "deleted").is_some() && after.boolean(reply, "deleted").is_none() {
                return Err(refuse("invalid-value", "a reply's `deleted` is a boolean"));
            }
            if !self.is_manager() && after.boolean(reply, "deleted") != Some(true) {
                self.no_concurrent_team_deletion(after, reply)?;
            }
        }
        for field in &touched.root {
            match (doc_type, field.as_str()) {
                (DocType::Post, "status") => self.validate_status_move(facts, after)?,
                (DocType::Post, "title" | "body") | (DocType::Conversation, "subject") => {
                    root_text(after, field)?;
                }
                (DocType::Post, "locked" | "anonymous") => require(
                    after.get(&ROOT, field.as_str()).is_none()
                        || after.boolean(&ROOT, field.as_str()).is_some(),
                    field,
                    "a boolean",
                )?,
                (DocType::Post, "replies") | (DocType::Conversation, "messages") => {
                    require(
                        after.object(&ROOT, field.as_str(), ObjType::List).is_some(),
                        field,
                        "a list",
                    )?;
                    // Only a draft's author writes its list freely: nobody
                    // else's replies may appear in it.
                    if facts.status == Some(PostStatus::Draft) {
                        for item in after.map_items(&ROOT, "replies") {
                            self.validate_item(after, &item, &REPLY_FIELDS, "reply")?;
                        }
                    }
                }
                (DocType::Conversation, "state") => require(
                    after
                        .text(&ROOT, "state")
                        .is_some_and(|state| CONVERSATION_STATES.contains(&state.as_str())),
                    field,
                    "open or resolved",
                )?,
                (DocType::Conversation, "tags" | "members") => {
                    bounded_list(after, field)?;
                }
                (DocType::Conversation, "assignee") => optional_id(after, &ROOT, "assignee")?,
                (DocType::Conversation, "publish") => valid_publish(after)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn validate_status_move(&self, facts: &DocFacts, after: At<'_>) -> Result<(), Refusal> {
        let new = after
            .text(&ROOT, "status")
            .as_deref()
            .and_then(PostStatus::parse)
            .ok_or_else(|| refuse("invalid-value", "`status` is draft, published or hidden"))?;
        if Some(new) == facts.status {
            return Ok(());
        }
        let allowed = match facts.status {
            Some(PostStatus::Draft) | None => {
                matches!(new, PostStatus::Draft | PostStatus::Published)
            }
            Some(PostStatus::Published | PostStatus::Hidden) if self.is_manager() => {
                matches!(new, PostStatus::Published | PostStatus::Hidden)
            }
            Some(PostStatus::Published) => new == PostStatus::Hidden,
            Some(PostStatus::Hidden) => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(refuse(
                "status-move",
                format!(
                    "this user may not move a post from {} to {}",
                    status_name(facts.status),
                    status_name(Some(new))
                ),
            ))
        }
    }

    /// A new reply or message: exactly its fields, written by its sender.
    fn validate_item(
        &self,
        after: At<'_>,
        item: &ObjId,
        fields: &[&str],
        what: &str,
    ) -> Result<(), Refusal> {
        for key in after.keys(item) {
            if !fields.contains(&key.as_str()) {
                return Err(refuse("unknown-field", format!("a {what} has no `{key}`")));
            }
        }
        if after.text(item, "author").as_deref() != Some(self.user.id.as_str()) {
            return Err(refuse(
                "own-name-only",
                format!("a {what}'s `author` must be the user who writes it"),
            ));
        }
        let id = after
            .text(item, "id")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| refuse("invalid-value", format!("a {what} needs an `id`")))?;
        within(&id, limits::ID_CHARS, &format!("a {what}'s `id`"))?;
        if after.number(item, "created_at").is_none() {
            return Err(refuse(
                "invalid-value",
                format!("a {what}'s `created_at` is a number"),
            ));
        }
        let body = after
            .text(item, "body")
            .ok_or_else(|| refuse("invalid-value", format!("a {what}'s `body` is text")))?;
        within(&body, limits::BODY_CHARS, &format!("a {what}'s `body`"))?;
        if after.get(item, "deleted").is_some() && after.boolean(item, "deleted").is_none() {
            return Err(refuse(
                "invalid-value",
                format!("a {what}'s `deleted` is a boolean"),
            ));
        }
        Ok(())
    }

    /// The change that gives a document its type must leave it valid.
    fn validate_new_document(&self, type_name: &str, after: At<'_>) -> Result<(), Refusal> {
        let doc_type = client_writable_type(type_name)?;
        let fields: &[&str] = match doc_type {
            DocType::Post => &POST_FIELDS,
            DocType::Conversation => &CONVERSATION_FIELDS,
            _ => &DRAFTS_FIELDS,
        };
        for key in after.keys(&ROOT) {
            if !fields.contains(&key.as_str()) {
                return Err(refuse(
                    "unknown-field",
                    format!("a {type_name} has no `{key}`"),
                ));
            }
        }
        require(after.number(&ROOT, "schema") == Some(1.0), "schema", "1")?;
        let me = Some(self.user.id.as_str());
        match doc_type {
            DocType::Post => {
                require(
                    after.text(&ROOT, "author").as_deref() == me,
                    "author",
                    "its creator",
                )?;
                require(
                    after.number(&ROOT, "created_at").is_some(),
                    "created_at",
                    "a number",
                )?;
                require(
                    matches!(
                        after.text(&ROOT, "status").as_deref(),
                        Some("draft" | "published")
                    ),
                    "status",
                    "draft or published",
                )?;
                root_text(after, "title")?;
                root_text(after, "body")?;
                for field in ["locked", "anonymous"] {
                    require(
                        after.get(&ROOT, field).is_none() || after.boolean(&ROOT, field).is_some(),
                        field,
                        "a boolean",
                    )?;
                }
                require(
                    after.object(&ROOT, "replies", ObjType::List).is_some(),
                    "replies",
                    "a list",
                )?;
                for reply in after.map_items(&ROOT, "replies") {
                    self.validate_item(after, &reply, &REPLY_FIELDS, "reply")?;
                }
            }
            DocType::Conversation => {
                require(
                    after.text(&ROOT, "opener").as_deref() == me,
                    "opener",
                    "its creator",
                )?;
                require(
                    after
                        .text(&ROOT, "kind")
                        .is_some_and(|kind| CONVERSATION_KINDS.contains(&kind.as_str())),
                    "kind",
                    "question, report, flag, idea, story or direct",
                )?;
                let members = after.text_list(&ROOT, "members");
                if self.is_manager() {
                    bounded_list(after, "members")?;
                } else {
                    require(
                        members == Some(vec![self.user.id.clone()]),
                        "members",
                        "just its opener (only a manager opens a conversation with others)",
                    )?;
                }
                root_text(after, "subject")?;
                require(
                    after.number(&ROOT, "created_at").is_some(),
                    "created_at",
                    "a number",
                )?;
                let state = after.text(&ROOT, "state");
                let tags = after.text_list(&ROOT, "tags");
                if self.is_manager() {
                    require(
                        state.is_some_and(|s| CONVERSATION_STATES.contains(&s.as_str())),
                        "state",
                        "open or resolved",
                    )?;
                    bounded_list(after, "tags")?;
                    optional_id(after, &ROOT, "assignee")?;
                } else {
                    require(state.as_deref() == Some("open"), "state", "open")?;
                    require(tags == Some(Vec::new()), "tags", "empty (managers tag)")?;
                    require(
                        after.get(&ROOT, "assignee").is_none(),
                        "assignee",
                        "absent (managers assign)",
                    )?;
                }
                if after.get(&ROOT, "about").is_some() {
                    let about = after
                        .object(&ROOT, "about", ObjType::Map)
                        .ok_or_else(|| refuse("invalid-value", "`about` is a map"))?;
                    for key in after.keys(&about) {
                        require(
                            matches!(key.as_str(), "post" | "user"),
                            "about",
                            "{post?, user?} ids",
                        )?;
                        optional_id(after, &about, key.as_str())?;
                    }
                }
                if after.get(&ROOT, "publish").is_some() {
                    valid_publish(after)?;
                }
                require(
                    after.object(&ROOT, "messages", ObjType::List).is_some(),
                    "messages",
                    "a list",
                )?;
                for message in after.map_items(&ROOT, "messages") {
                    self.validate_item(after, &message, &MESSAGE_FIELDS, "message")?;
                }
            }
            _ => {
                require(
                    after.text(&ROOT, "owner").as_deref() == me,
                    "owner",
                    "its creator",
                )?;
                for field in ["items", "mine"] {
                    require(
                        after.get(&ROOT, field).is_none()
                            || after.object(&ROOT, field, ObjType::Map).is_some(),
                        field,
                        "a map",
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// A known type that clients may write (not one the server keeps).
fn client_writable_type(type_name: &str) -> Result<DocType, Refusal> {
    let doc_type = DocType::parse(type_name).ok_or_else(|| {
        refuse(
            "unknown-type",
            format!("unknown document type {type_name:?}"),
        )
    })?;
    if doc_type.is_server_kept() {
        return Err(refuse(
            "server-only",
            format!("only the server writes the {}", doc_type.name()),
        ));
    }
    Ok(doc_type)
}

fn status_name(status: Option<PostStatus>) -> &'static str {
    match status {
        Some(PostStatus::Draft) | None => "draft",
        Some(PostStatus::Published) => "published",
        Some(PostStatus::Hidden) => "hidden",
    }
}

fn require(ok: bool, field: &str, expected: &str) -> Result<(), Refusal> {
    if ok {
        Ok(())
    } else {
        Err(refuse(
            "invalid-value",
            format!("`{field}` must be {expected}"),
        ))
    }
}

/// Refuses text longer than `max` characters.
fn within(text: &str, max: usize, what: &str) -> Result<(), Refusal> {
    if text.chars().count() > max {
        return Err(refuse(
            "too-long",
            format!("{what} is at most {max} characters"),
        ));
    }
    Ok(())
}

/// A root text field (`title`, `body`, `subject`) within its length.
fn root_text(after: At<'_>, field: &str) -> Result<(), Refusal> {
    let text = after
        .text(&ROOT, field)
        .ok_or_else(|| refuse("invalid-value", format!("`{field}` must be text")))?;
    let max = if field == "body" {
        limits::BODY_CHARS
    } else {
        limits::TITLE_CHARS
    };
    within(&text, max, &format!("`{field}`"))
}

/// An absent field or an id within its length.
fn optional_id(after: At<'_>, obj: &ObjId, field: &str) -> Result<(), Refusal> {
    if after.get(obj, field).is_none() {
        return Ok(());
    }
    let id = after
        .text(obj, field)
        .ok_or_else(|| refuse("invalid-value", format!("`{field}` must be an id")))?;
    within(&id, limits::ID_CHARS, &format!("`{field}`"))
}

/// A conversation's `tags` or `members`: a list of short texts, not too many.
fn bounded_list(after: At<'_>, field: &str) -> Result<(), Refusal> {
    let (count, chars) = if field == "tags" {
        (limits::TAGS, limits::TAG_CHARS)
    } else {
        (limits::MEMBERS, limits::ID_CHARS)
    };
    let entries = after
        .text_list(&ROOT, field)
        .ok_or_else(|| refuse("invalid-value", format!("`{field}` must be a list of text")))?;
    if entries.len() > count {
        return Err(refuse(
            "too-many",
            format!("`{field}` holds at most {count} entries"),
        ));
    }
    for entry in &entries {
        within(entry, chars, &format!("each of `{field}`"))?;
    }
    Ok(())
}

fn valid_publish(after: At<'_>) -> Result<(), Refusal> {
    let ok = after
        .object(&ROOT, "publish", ObjType::Map)
        .is_some_and(|publish| {
            after.keys(&publish).iter().all(|key| {
                matches!(key.as_str(), "consent" | "anonymous")
                    && after.boolean(&publish, key.as_str()).is_some()
            }) && after.boolean(&publish, "consent").is_some()
        });
    require(ok, "publish", "{consent: bool, anonymous: bool}")
}

/// Which fields a change touched, to validate their values after it.
#[derive(Default)]
struct Touched {
    root: HashSet<String>,
    reply_flags: Vec<ObjId>,
    reply_bodies: Vec<ObjId>,
    /// Replies whose `body` a manager replaced.
    cleared_bodies: Vec<ObjId>,
    new_objects: Vec<(Place, ObjId)>,
}

/// One step from an object to a child: a map key or a list/text position.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index,
}

/// Where an op lands: `steps[k]` is taken inside `objects[k]`, from the root
/// down to the op's own key.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    steps: Vec<Step>,
    objects: Vec<ObjId>,
}

impl Place {
    fn depth(&self) -> usize {
        self.steps.len()
    }

    fn key_at(&self, index: usize) -> Option<&str> {
        match self.steps.get(index)? {
            Step::Key(key) => Some(key),
            Step::Index => None,
        }
    }

    fn root_key(&self) -> Result<&str, Refusal> {
        self.key_at(0)
            .ok_or_else(|| refuse("invalid-value", "the document's root is a map"))
    }

    /// Fields some role may set over another user's value.
    /// The `body` field of a reply itself (not an edit inside its text).
    fn is_reply_body(&self, doc_type: DocType) -> bool {
        doc_type == DocType::Post
            && self.depth() == 3
            && self.key_at(0) == Some("replies")
            && self.key_at(2) == Some("body")
    }

    fn is_flag_field(&self, doc_type: DocType) -> bool {
        match (doc_type, self.key_at(0)) {
            (DocType::Post, Some("status" | "locked")) => true,
            (DocType::Post, Some("replies")) => self.key_at(2) == Some("deleted"),
            (DocType::Conversation, Some("state" | "tags" | "assignee" | "members")) => true,
            _ => false,
        }
    }
}

/// The steps from the root to an object, and the object each is taken in.
type PathToObject = (Vec<Step>, Vec<ObjId>);

/// A change's ops, with what is needed to find where each lands.
struct DecodedOps {
    actor: ActorId,
    start_op: u64,
    ops: Vec<legacy::Op>,
    /// Objects the change itself makes, by op counter (the change's actor).
    created: HashSet<u64>,
    places: std::cell::RefCell<HashMap<ObjectId, PathToObject>>,
}

impl DecodedOps {
    fn of(change: &Change) -> Result<Self, Refusal> {
        // Decoding a change automerge already applied cannot fail; if the
        // library ever panics on one, refuse the change rather than the server.
        let expanded = std::panic::catch_unwind(AssertUnwindSafe(|| change.decode()))
            .map_err(|_| refuse("undecodable", "the change could not be decoded"))?;
        let start_op = expanded.start_op.get();
        let created = expanded
            .operations
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op.action, legacy::OpType::Make(_)))
            .map(|(index, _)| start_op + index as u64)
            .collect();
        Ok(Self {
            actor: expanded.actor_id,
            start_op,
            ops: expanded.operations,
            created,
            places: Default::default(),
        })
    }

    fn targets_new_object(&self, op: &legacy::Op) -> bool {
        match &op.obj {
            ObjectId::Root => false,
            ObjectId::Id(id) => *id.actor() == self.actor && self.created.contains(&id.counter()),
        }
    }

    /// The object `op` makes, if it makes one.
    fn created_object(
        &self,
        doc: &Automerge,
        index: usize,
        op: &legacy::Op,
    ) -> Result<Option<ObjId>, Refusal> {
        if !matches!(op.action, legacy::OpType::Make(_)) {
            return Ok(None);
        }
        let counter = self.start_op + index as u64;
        import(doc, counter, &self.actor).map(Some)
    }

    fn locate(&self, doc: &Automerge, op: &legacy::Op) -> Result<Place, Refusal> {
        let (mut steps, mut objects) = {
            let mut places = self.places.borrow_mut();
            match places.get(&op.obj) {
                Some(found) => found.clone(),
                None => {
                    let found = path_to(doc, &op.obj)?;
                    places.insert(op.obj.clone(), found.clone());
                    found
                }
            }
        };
        let target = match &op.obj {
            ObjectId::Root => ROOT,
            ObjectId::Id(id) => import(doc, id.counter(), id.actor())?,
        };
        steps.push(match &op.key {
            legacy::Key::Map(key) => Step::Key(key.to_string()),
            legacy::Key::Seq(_) => Step::Index,
        });
        objects.push(target);
        Ok(Place { steps, objects })
    }
}

fn import(doc: &Automerge, counter: u64, actor: &ActorId) -> Result<ObjId, Refusal> {
    doc.import_obj(&format!("{counter}@{}", actor.to_hex_string()))
        .map_err(|error| refuse("unknown-object", error))
}

/// The steps from the root to the object `obj` (excluding the op's own key).
fn path_to(doc: &Automerge, obj: &ObjectId) -> Result<PathToObject, Refusal> {
    let ObjectId::Id(id) = obj else {
        return Ok((Vec::new(), Vec::new()));
    };
    let target = import(doc, id.counter(), id.actor())?;
    // automerge 0.12 trips a debug assertion in `parents` for an object inside
    // a list element the same change deleted (release builds skip it); a
    // hand-made change must not take the shard down in either.
    let walked = std::panic::catch_unwind(AssertUnwindSafe(|| {
        doc.parents(&target).map(|parents| {
            parents
                .map(|parent| {
                    let step = match parent.prop {
                        automerge::Prop::Map(key) => Step::Key(key),
                        automerge::Prop::Seq(_) => Step::Index,
                    };
                    (parent.obj, step)
                })
                .collect::<Vec<(ObjId, Step)>>()
        })
    }));
    let mut chain = match walked {
        Ok(Ok(chain)) => chain,
        Ok(Err(error)) => return Err(refuse("unknown-object", error)),
        Err(_) => {
            return Err(refuse(
                "unknown-object",
                "the change edits an object it also removes",
            ));
        }
    };
    chain.reverse();
    Ok(chain.into_iter().map(|(obj, step)| (step, obj)).unzip())
}
