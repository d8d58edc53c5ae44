//! Who hears what (SPEC §6), from the summary of a document before and after
//! its latest durable changes: a reply on a post you wrote or replied to; a
//! message in a conversation you read (managers read them all); a new report
//! or flag to every manager at once; your question promoted. Never your own
//! actions. Mutes, open documents and each member's alert limit
//! ([`super::alerts`]) are applied later, in [`super::Push::queue`].

use std::collections::{BTreeMap, HashSet};

use backchannel_sync::DocumentId;

use crate::community::{ConversationSummary, ItemSummary, PostSummary, Summary};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Urgency {
    Normal,
    High,
}

/// One notification for one person, before it is fanned out to their devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub recipient: String,
    /// The thread the notification is about: its `tag` and `Topic`.
    pub document: DocumentId,
    pub urgency: Urgency,
    pub title: String,
    pub body: String,
    /// Where the PWA opens it, relative to the public URL.
    pub path: String,
    /// For the alert of a new report or flag: the member who opened it, so
    /// [`crate::push::Push::queue`] can hold each member to their alert limit.
    pub alert_from: Option<String>,
}

pub fn post_path(id: &DocumentId) -> String {
    format!("/#/post/{id}")
}

pub fn conversation_path(id: &DocumentId) -> String {
    format!("/#/conversation/{id}")
}

/// Kinds of conversation that reach every manager at once, with high urgency.
const ALERT_KINDS: &[&str] = &["report", "flag"];

/// The notices the change from `old` to `new` calls for.
pub fn notices(
    id: DocumentId,
    old: Option<&Summary>,
    new: &Summary,
    managers: &HashSet<String>,
    name_of: &mut dyn FnMut(&str) -> String,
) -> Vec<Notice> {
    match new {
        Summary::Post(post) => {
            let old = match old {
                Some(Summary::Post(old)) => Some(old),
                _ => None,
            };
            reply_notices(id, old, post, name_of)
        }
        Summary::Conversation(conversation) => {
            let old = match old {
                Some(Summary::Conversation(old)) => Some(old),
                _ => None,
            };
            message_notices(id, old, conversation, managers, name_of)
        }
    }
}

fn new_items<'a>(old: Option<&[ItemSummary]>, new: &'a [ItemSummary]) -> Vec<&'a ItemSummary> {
    let seen: HashSet<&str> = old
        .unwrap_or_default()
        .iter()
        .map(|item| item.id.as_str())
        .collect();
    new.iter()
        .filter(|item| !item.deleted && !seen.contains(item.id.as_str()))
        .collect()
}

/// What one person is told about several new items in one thread at once.
struct Gathered<'a> {
    latest: &'a ItemSummary,
    count: usize,
}

fn gather<'a>(
    gathered: &mut BTreeMap<String, Gathered<'a>>,
    recipient: &str,
    item: &'a ItemSummary,
) {
    gathered
        .entry(recipient.to_string())
        .and_modify(|entry| {
            entry.count += 1;
            if item.created_at >= entry.latest.created_at {
                entry.latest = item;
            }
        })
        .or_insert(Gathered {
            latest: item,
            count: 1,
        });
}

fn said(name: &str, item: &ItemSummary, count: usize, (one, many): (&str, &str)) -> String {
    let words = if item.excerpt.is_empty() {
        format!("new {one}")
    } else {
        item.excerpt.clone()
    };
    if count > 1 {
        format!("{count} new {many}. {name}: {words}")
    } else {
        format!("{name}: {words}")
    }
}

fn reply_notices(
    id: DocumentId,
    old: Option<&PostSummary>,
    post: &PostSummary,
    name_of: &mut dyn FnMut(&str) -> String,
) -> Vec<Notice> {
    if !post.is_published() {
        return Vec::new();
    }
    let fresh = new_items(old.map(|old| old.replies.as_slice()), &post.replies);
    let mut gathered = BTreeMap::new();
    for reply in &fresh {
        let earlier_repliers = post
            .replies
            .iter()
            .filter(|other| other.id != reply.id && other.created_at <= reply.created_at)
            .map(|other| other.author.as_str());
        let involved: HashSet<&str> = std::iter::once(post.author.as_str())
            .chain(earlier_repliers)
            .collect();
        for recipient in involved {
            if recipient != reply.author && !recipient.is_empty() {
                gather(&mut gathered, recipient, reply);
            }
        }
    }
    gathered
        .into_iter()
        .map(|(recipient, Gathered { latest, count })| Notice {
            recipient,
            document: id,
            urgency: Urgency::Normal,
            title: format!("Reply on “{}”", post.title),
            body: said(
                &name_of(&latest.author),
                latest,
                count,
                ("reply", "replies"),
            ),
            path: post_path(&id),
            alert_from: None,
        })
        .collect()
}

fn message_notices(
    id: DocumentId,
    old: Option<&ConversationSummary>,
    conversation: &ConversationSummary,
    managers: &HashSet<String>,
    name_of: &mut dyn FnMut(&str) -> String,
) -> Vec<Notice> {
    let readers: HashSet<&str> = conversation
        .members
        .iter()
        .map(String::as_str)
        .chain(managers.iter().map(String::as_str))
        .collect();
    let mut notices = Vec::new();
    let mut told = HashSet::new();
    let opened = old.is_none();
    let fresh = new_items(
        old.map(|old| old.messages.as_slice()),
        &conversation.messages,
    );
    if opened && ALERT_KINDS.contains(&conversation.kind.as_str()) {
        let first = fresh.iter().min_by_key(|message| message.created_at);
        let opener = name_of(&conversation.opener);
        let body = match first {
            Some(first) if !first.excerpt.is_empty() => format!("{opener}: {}", first.excerpt),
            _ => format!("{opener}: {}", conversation.subject),
        };
        for manager in managers {
            if *manager != conversation.opener && told.insert(manager.clone()) {
                notices.push(Notice {
                    recipient: manager.clone(),
                    document: id,
                    urgency: Urgency::High,
                    title: format!("New {}: {}", conversation.kind, conversation.subject),
                    body: body.clone(),
                    path: conversation_path(&id),
                    alert_from: Some(conversation.opener.clone()),
                });
            }
        }
    }
    let mut gathered = BTreeMap::new();
    for message in &fresh {
        for recipient in &readers {
            if *recipient != message.author && !told.contains(*recipient) {
                gather(&mut gathered, recipient, message);
            }
        }
    }
    if opened && fresh.is_empty() {
        // A conversation opened without a message yet still reaches the team.
        for manager in managers {
            if *manager != conversation.opener && !told.contains(manager) {
                notices.push(Notice {
                    recipient: manager.clone(),
                    document: id,
                    urgency: Urgency::Normal,
                    title: format!("New {}: {}", conversation.kind, conversation.subject),
                    body: format!("{} opened a conversation", name_of(&conversation.opener)),
                    path: conversation_path(&id),
                    alert_from: None,
                });
            }
        }
    }
    for (recipient, Gathered { latest, count }) in gathered {
        notices.push(Notice {
            recipient,
            document: id,
            urgency: Urgency::Normal,
            title: conversation.subject.clone(),
            body: said(
                &name_of(&latest.author),
                latest,
                count,
                ("message", "messages"),
            ),
            path: conversation_path(&id),
            alert_from: None,
        });
    }
    notices
}

/// The opener hears that their conversation is now a public post.
pub fn promoted_notice(post: DocumentId, opener: &str, subject: &str) -> Notice {
    Notice {
        recipient: opener.to_string(),
        document: post,
        urgency: Urgency::Normal,
        title: "Your question is now public".to_string(),
        body: format!("“{subject}” was published for the whole community"),
        path: post_path(&post),
        alert_from: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, author: &str, at: i64) -> ItemSummary {
        ItemSummary {
            id: id.into(),
            author: author.into(),
            created_at: at,
            deleted: false,
            excerpt: format!("words of {id}"),
        }
    }

    fn post(replies: Vec<ItemSummary>) -> Summary {
        Summary::Post(PostSummary {
            author: "ada".into(),
            status: "published".into(),
            title: "Lunch".into(),
            created_at: 1,
            anonymous: false,
            locked: false,
            replies,
        })
    }

    fn conversation(kind: &str, members: &[&str], messages: Vec<ItemSummary>) -> Summary {
        Summary::Conversation(ConversationSummary {
            kind: kind.into(),
            opener: "bob".into(),
            members: members.iter().map(|m| (*m).to_string()).collect(),
            subject: "Help".into(),
            created_at: 1,
            state: "open".into(),
            tags: Vec::new(),
            assignee: None,
            publish_consent: false,
            publish_anonymous: false,
            messages,
        })
    }

    fn managers() -> HashSet<String> {
        ["mia".to_string(), "max".to_string()].into_iter().collect()
    }

    fn recipients(notices: &[Notice]) -> Vec<(&str, Urgency)> {
        let mut list: Vec<_> = notices
            .iter()
            .map(|notice| (notice.recipient.as_str(), notice.urgency))
            .collect();
        list.sort();
        list
    }

    fn id() -> DocumentId {
        DocumentId::from_bytes([3; 16])
    }

    fn name(user: &str) -> String {
        user.to_uppercase()
    }

    #[test]
    fn a_reply_reaches_the_author_and_earlier_repliers_but_not_the_replier() {
        let old = post(vec![item("r1", "cy", 2)]);
        let new = post(vec![item("r1", "cy", 2), item("r2", "bob", 3)]);
        let notices = notices(id(), Some(&old), &new, &managers(), &mut name);
        assert_eq!(
            recipients(&notices),
            [("ada", Urgency::Normal), ("cy", Urgency::Normal)]
        );
        assert_eq!(notices[0].body, "BOB: words of r2");
        assert_eq!(notices[0].path, post_path(&id()));
    }

    #[test]
    fn the_author_replying_to_their_own_post_hears_nothing() {
        let old = post(Vec::new());
        let new = post(vec![item("r1", "ada", 2)]);
        assert!(notices(id(), Some(&old), &new, &managers(), &mut name).is_empty());
    }

    #[test]
    fn several_new_replies_make_one_notice_per_person() {
        let old = post(Vec::new());
        let new = post(vec![item("r1", "bob", 2), item("r2", "cy", 3)]);
        let notices = notices(id(), Some(&old), &new, &managers(), &mut name);
        let to_ada: Vec<_> = notices.iter().filter(|n| n.recipient == "ada").collect();
        assert_eq!(to_ada.len(), 1);
        assert_eq!(to_ada[0].body, "2 new replies. CY: words of r2");
    }

    #[test]
    fn a_message_reaches_the_members_and_every_manager() {
        let old = conversation("question", &["bob"], vec![item("m1", "bob", 2)]);
        let new = conversation(
            "question",
            &["bob"],
            vec![item("m1", "bob", 2), item("m2", "mia", 3)],
        );
        let notices = notices(id(), Some(&old), &new, &managers(), &mut name);
        assert_eq!(
            recipients(&notices),
            [("bob", Urgency::Normal), ("max", Urgency::Normal)]
        );
    }

    #[test]
    fn a_new_flag_reaches_every_manager_with_high_urgency_once() {
        let new = conversation("flag", &["bob"], vec![item("m1", "bob", 2)]);
        let notices = notices(id(), None, &new, &managers(), &mut name);
        assert_eq!(
            recipients(&notices),
            [("max", Urgency::High), ("mia", Urgency::High)]
        );
        assert_eq!(notices[0].title, "New flag: Help");
    }

    #[test]
    fn a_new_question_reaches_managers_with_normal_urgency() {
        let new = conversation("question", &["bob"], vec![item("m1", "bob", 2)]);
        let notices = notices(id(), None, &new, &managers(), &mut name);
        assert_eq!(
            recipients(&notices),
            [("max", Urgency::Normal), ("mia", Urgency::Normal)]
        );
    }

    #[test]
    fn drafts_and_unchanged_documents_notify_nobody() {
        let mut draft = post(vec![item("r1", "bob", 2)]);
        if let Summary::Post(post) = &mut draft {
            post.status = "draft".into();
        }
        assert!(notices(id(), None, &draft, &managers(), &mut name).is_empty());
        let same = conversation("question", &["bob"], vec![item("m1", "bob", 2)]);
        assert!(notices(id(), Some(&same), &same, &managers(), &mut name).is_empty());
    }
}
