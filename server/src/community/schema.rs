//! The document kinds of SPEC §4 and the facts about a document that the read
//! and write rules depend on.

use automerge::ROOT;

use super::fields::At;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocType {
    Post,
    Conversation,
    Drafts,
    Index,
    Directory,
    Inbox,
}

impl DocType {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "post" => Self::Post,
            "conversation" => Self::Conversation,
            "drafts" => Self::Drafts,
            "index" => Self::Index,
            "directory" => Self::Directory,
            "inbox" => Self::Inbox,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Post => "post",
            Self::Conversation => "conversation",
            Self::Drafts => "drafts",
            Self::Index => "index",
            Self::Directory => "directory",
            Self::Inbox => "inbox",
        }
    }

    /// Kept by the server, read-only to clients.
    pub fn is_server_kept(self) -> bool {
        matches!(self, Self::Index | Self::Directory | Self::Inbox)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostStatus {
    Draft,
    Published,
    Hidden,
}

impl PostStatus {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "draft" => Self::Draft,
            "published" => Self::Published,
            "hidden" => Self::Hidden,
            _ => return None,
        })
    }
}

pub const CONVERSATION_KINDS: [&str; 6] = ["question", "report", "flag", "idea", "story", "direct"];
pub const CONVERSATION_STATES: [&str; 2] = ["open", "resolved"];

/// What the rules read from a document, at some heads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocFacts {
    /// The raw `type` text, if any (it may name no known kind).
    pub type_name: Option<String>,
    pub status: Option<PostStatus>,
    pub locked: bool,
    pub author: Option<String>,
    pub opener: Option<String>,
    pub owner: Option<String>,
    pub members: Vec<String>,
}

impl DocFacts {
    pub fn read<D: automerge::ReadDoc>(at: At<'_, D>) -> Self {
        let type_name = at.text(&ROOT, "type");
        let mut facts = Self {
            type_name: type_name.clone(),
            ..Self::default()
        };
        match type_name.as_deref().and_then(DocType::parse) {
            Some(DocType::Post) => {
                facts.status = at
                    .text(&ROOT, "status")
                    .as_deref()
                    .and_then(PostStatus::parse);
                facts.locked = at.boolean(&ROOT, "locked").unwrap_or(false);
                facts.author = at.text(&ROOT, "author");
            }
            Some(DocType::Conversation) => {
                facts.opener = at.text(&ROOT, "opener");
                facts.members = at.text_list(&ROOT, "members").unwrap_or_default();
            }
            Some(DocType::Drafts | DocType::Inbox) => facts.owner = at.text(&ROOT, "owner"),
            _ => {}
        }
        facts
    }

    pub fn doc_type(&self) -> Option<DocType> {
        self.type_name.as_deref().and_then(DocType::parse)
    }

    pub fn is_member(&self, user_id: &str) -> bool {
        self.members.iter().any(|member| member == user_id)
    }
}

/// The longest text each field may hold, in characters (Unicode scalar
/// values, so at most four bytes each). Titles and subjects are copied into
/// the index and every manager's inbox, which everyone downloads; the other
/// limits keep one document's download bounded. Values in docs/RULES.md.
pub mod limits {
    /// A post's `title`, a conversation's `subject`.
    pub const TITLE_CHARS: usize = 200;
    /// A post's `body`, a reply's or a message's `body`.
    pub const BODY_CHARS: usize = 20_000;
    /// A reply's or a message's `id`, and every user or document id a
    /// document names (`author`, `opener`, `members`, `assignee`, `about`).
    pub const ID_CHARS: usize = 64;
    /// One of a conversation's `tags`.
    pub const TAG_CHARS: usize = 40;
    /// How many `tags` a conversation has.
    pub const TAGS: usize = 20;
    /// How many `members` a conversation has.
    pub const MEMBERS: usize = 50;
    /// Actors a single message may bind for the first time. A phone makes a
    /// new actor each time it loads a document, so a long offline stretch
    /// carries a few; thousands are someone filling the binding table.
    pub const NEW_ACTORS_PER_MESSAGE: usize = 256;
}

/// `text` cut to at most `max` characters (what the server copies into the
/// documents it keeps, whatever an older document holds).
pub fn clipped(mut text: String, max: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(max) {
        text.truncate(cut);
    }
    text
}
