//! Who may read a document: the read column of SPEC §5, in one place.
//!
//! | document          | read                    |
//! |-------------------|-------------------------|
//! | (no type yet)     | its creator             |
//! | post, draft       | author                  |
//! | post, published   | signed in               |
//! | post, hidden      | author, managers        |
//! | conversation      | its members, managers   |
//! | drafts            | owner                   |
//! | index, directory  | signed in               |
//! | inbox             | owner                   |

use crate::auth::Role;

use super::SyncUser;
use super::schema::{DocFacts, DocType, PostStatus};

pub fn may_read(user: &SyncUser, facts: &DocFacts, creator: &str) -> bool {
    let is_manager = user.role == Role::Manager;
    let is = |who: &Option<String>| who.as_deref() == Some(user.id.as_str());
    match facts.doc_type() {
        None => creator == user.id,
        Some(DocType::Post) => match facts.status {
            Some(PostStatus::Published) => true,
            Some(PostStatus::Hidden) => is(&facts.author) || is_manager,
            Some(PostStatus::Draft) | None => is(&facts.author),
        },
        Some(DocType::Conversation) => is_manager || facts.is_member(&user.id),
        Some(DocType::Drafts | DocType::Inbox) => is(&facts.owner),
        Some(DocType::Index | DocType::Directory) => true,
    }
}

/// The same rules for a post or conversation known only by its summary (the
/// catalog), for API calls that name a document.
pub fn may_read_summary(user_id: &str, role: Role, summary: &super::Summary) -> bool {
    let is_manager = role == Role::Manager;
    match summary {
        super::Summary::Post(post) => match post.status.as_str() {
            "published" => true,
            "hidden" => post.author == user_id || is_manager,
            _ => post.author == user_id,
        },
        super::Summary::Conversation(conversation) => {
            is_manager || conversation.members.iter().any(|member| member == user_id)
        }
    }
}
