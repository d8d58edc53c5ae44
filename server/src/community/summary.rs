//! What the server derives from posts and conversations: enough to keep the
//! index and inboxes, count needs and weekly figures, and decide who hears
//! about what, without reloading the documents.

use automerge::{ObjId, ROOT};
use serde::{Deserialize, Serialize};

use super::fields::At;
use super::schema::{DocFacts, DocType, clipped, limits};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Summary {
    Post(PostSummary),
    Conversation(ConversationSummary),
}

/// A reply or a message. Its words are never stored with the summary; only
/// the newest items carry an excerpt in memory, for push notifications.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemSummary {
    pub id: String,
    pub author: String,
    pub created_at: i64,
    #[serde(default)]
    pub deleted: bool,
    #[serde(skip)]
    pub excerpt: String,
}

/// How many of the newest items carry an excerpt: new items are appended,
/// so they are among the last few even after concurrent offline appends.
const ITEMS_WITH_EXCERPTS: usize = 32;
/// Enough words to recognise a message on a lock screen.
const EXCERPT_CHARS: usize = 140;

fn excerpt(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostSummary {
    pub author: String,
    pub status: String,
    pub title: String,
    pub created_at: i64,
    #[serde(default)]
    pub anonymous: bool,
    #[serde(default)]
    pub locked: bool,
    pub replies: Vec<ItemSummary>,
}

impl PostSummary {
    pub fn is_published(&self) -> bool {
        self.status == "published"
    }

    pub fn reply_count(&self) -> usize {
        self.replies.iter().filter(|reply| !reply.deleted).count()
    }

    pub fn last_activity(&self) -> i64 {
        self.replies
            .iter()
            .map(|reply| reply.created_at)
            .fold(self.created_at, i64::max)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub kind: String,
    pub opener: String,
    pub members: Vec<String>,
    pub subject: String,
    pub created_at: i64,
    pub state: String,
    pub tags: Vec<String>,
    pub assignee: Option<String>,
    pub publish_consent: bool,
    pub publish_anonymous: bool,
    pub messages: Vec<ItemSummary>,
}

impl ConversationSummary {
    /// The latest message's time and author (the opening if none).
    pub fn last_activity(&self) -> (i64, String) {
        self.messages
            .iter()
            .max_by_key(|message| message.created_at)
            .filter(|message| message.created_at >= self.created_at)
            .map(|message| (message.created_at, message.author.clone()))
            .unwrap_or((self.created_at, self.opener.clone()))
    }
}

/// How many items, from the end of a list of `count`, carry an excerpt.
pub(super) fn first_with_excerpt(count: usize) -> usize {
    count.saturating_sub(ITEMS_WITH_EXCERPTS)
}

/// One reply or message, with its excerpt if `with_excerpt` (and it is not
/// deleted).
pub(super) fn read_item(at: At<'_>, item: &ObjId, with_excerpt: bool) -> ItemSummary {
    let deleted = at.boolean(item, "deleted").unwrap_or(false);
    ItemSummary {
        id: clipped(at.text(item, "id").unwrap_or_default(), limits::ID_CHARS),
        author: clipped(
            at.text(item, "author").unwrap_or_default(),
            limits::ID_CHARS,
        ),
        created_at: at.millis(item, "created_at").unwrap_or_default(),
        deleted,
        excerpt: if with_excerpt && !deleted {
            read_excerpt(at, item)
        } else {
            String::new()
        },
    }
}

pub(super) fn read_excerpt(at: At<'_>, item: &ObjId) -> String {
    excerpt(&at.text(item, "body").unwrap_or_default())
}

/// The list of items a summary lists: replies or messages.
pub(super) fn item_list(summary: &Summary) -> &'static str {
    match summary {
        Summary::Post(_) => "replies",
        Summary::Conversation(_) => "messages",
    }
}

pub(super) fn items_mut(summary: &mut Summary) -> &mut Vec<ItemSummary> {
    match summary {
        Summary::Post(post) => &mut post.replies,
        Summary::Conversation(conversation) => &mut conversation.messages,
    }
}

/// The summary of a post or a conversation as it is now.
pub fn summarize(at: At<'_>) -> Option<Summary> {
    let mut summary = summarize_without_items(at)?;
    let items = at.map_items(&ROOT, item_list(&summary));
    let with_excerpts = first_with_excerpt(items.len());
    *items_mut(&mut summary) = items
        .iter()
        .enumerate()
        .map(|(position, item)| read_item(at, item, position >= with_excerpts))
        .collect();
    Some(summary)
}

/// Everything in the summary but its replies or messages (left empty).
pub(super) fn summarize_without_items(at: At<'_>) -> Option<Summary> {
    let facts = DocFacts::read(at);
    match facts.doc_type()? {
        DocType::Post => Some(Summary::Post(PostSummary {
            author: facts.author.unwrap_or_default(),
            status: at.text(&ROOT, "status").unwrap_or_default(),
            title: clipped(
                at.text(&ROOT, "title").unwrap_or_default(),
                limits::TITLE_CHARS,
            ),
            created_at: at.millis(&ROOT, "created_at").unwrap_or_default(),
            anonymous: at.boolean(&ROOT, "anonymous").unwrap_or(false),
            locked: facts.locked,
            replies: Vec::new(),
        })),
        DocType::Conversation => {
            let publish = at.object(&ROOT, "publish", automerge::ObjType::Map);
            let flag = |key: &str| {
                publish
                    .as_ref()
                    .and_then(|publish| at.boolean(publish, key))
                    .unwrap_or(false)
            };
            Some(Summary::Conversation(ConversationSummary {
                kind: at.text(&ROOT, "kind").unwrap_or_default(),
                opener: facts.opener.unwrap_or_default(),
                members: facts.members,
                subject: clipped(
                    at.text(&ROOT, "subject").unwrap_or_default(),
                    limits::TITLE_CHARS,
                ),
                created_at: at.millis(&ROOT, "created_at").unwrap_or_default(),
                state: at.text(&ROOT, "state").unwrap_or_default(),
                tags: at
                    .text_list(&ROOT, "tags")
                    .unwrap_or_default()
                    .into_iter()
                    .take(limits::TAGS)
                    .map(|tag| clipped(tag, limits::TAG_CHARS))
                    .collect(),
                assignee: at
                    .text(&ROOT, "assignee")
                    .map(|id| clipped(id, limits::ID_CHARS)),
                publish_consent: flag("consent"),
                publish_anonymous: flag("anonymous"),
                messages: Vec::new(),
            }))
        }
        _ => None,
    }
}
