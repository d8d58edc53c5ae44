//! The community's rules over documents: who may read and who may write,
//! and what the server derives from them. Handlers and the sync hub never
//! decide access; this module does.

mod actors;
mod fields;
mod memo;
mod quota;
mod read;
mod restrictions;
mod rules;
mod schema;
mod summary;
mod write;

pub use actors::{ActorBindings, SERVER_OWNER};
pub use fields::At;
pub use memo::DocumentMemo;
pub use quota::{BYTES_PER_USER, DOCUMENTS_PER_USER, Quota, Usage};
pub use read::may_read_summary;
pub use restrictions::{Restrictions, STALE_GRACE_MILLIS};
pub use rules::{CommunityRules, SyncUser};
pub use schema::{CONVERSATION_KINDS, CONVERSATION_STATES, DocFacts, DocType};
pub use summary::{ConversationSummary, ItemSummary, PostSummary, Summary, summarize};

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
