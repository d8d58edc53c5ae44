//! The catalog: the last summary of every post and conversation, kept in the
//! store under `catalog/<document id>`, plus `promoted/<conversation id>`.
//! Counting needs and weekly figures reads it; nothing reloads documents.

use std::collections::{BTreeMap, HashMap};

use backchannel_sync::DocumentId;
use serde::{Deserialize, Serialize};

use crate::community::{ConversationSummary, PostSummary, Summary};
use crate::store::{Batch, Store, StoreError};

const CATALOG: &str = "catalog/";
const PROMOTED: &str = "promoted/";

fn catalog_key(id: &DocumentId) -> Vec<u8> {
    format!("{CATALOG}{id}").into_bytes()
}

fn promoted_key(id: &DocumentId) -> Vec<u8> {
    format!("{PROMOTED}{id}").into_bytes()
}

fn corrupt(key: &[u8], error: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: error.to_string(),
    }
}

/// A conversation moved to the public side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Promotion {
    pub post: String,
    pub at: i64,
    pub by: String,
}

pub fn get(store: &dyn Store, id: &DocumentId) -> Result<Option<Summary>, StoreError> {
    let key = catalog_key(id);
    store
        .get(&key)?
        .map(|bytes| serde_json::from_slice(&bytes).map_err(|error| corrupt(&key, error)))
        .transpose()
}

/// Catalog entries as last stored, kept in memory so that the projector
/// need not decode a busy thread's previous entry on every change (decoding
/// costs about a microsecond per reply). Bounded by the items they list.
pub struct Recent {
    entries: HashMap<DocumentId, Summary>,
    items: usize,
    bound: usize,
}

impl Default for Recent {
    fn default() -> Self {
        Self::holding(RECENT_ITEMS)
    }
}

/// About 20 MiB of summaries.
const RECENT_ITEMS: usize = 200_000;

fn items_in(summary: &Summary) -> usize {
    1 + match summary {
        Summary::Post(post) => post.replies.len(),
        Summary::Conversation(conversation) => conversation.messages.len(),
    }
}

impl Recent {
    /// Keeps entries listing at most `bound` items (the newest is always kept).
    pub fn holding(bound: usize) -> Self {
        Self {
            entries: HashMap::new(),
            items: 0,
            bound,
        }
    }

    /// The stored entry of `id`, if kept; it is no longer kept.
    pub fn take(&mut self, id: &DocumentId) -> Option<Summary> {
        let summary = self.entries.remove(id)?;
        self.items -= items_in(&summary);
        Some(summary)
    }

    /// Keeps `summary`, just stored as the entry of `id`, forgetting others
    /// (any) while over the bound.
    pub fn insert(&mut self, id: DocumentId, summary: Summary) {
        self.take(&id);
        self.items += items_in(&summary);
        self.entries.insert(id, summary);
        while self.items > self.bound {
            let Some(other) = self.entries.keys().find(|other| **other != id).copied() else {
                break;
            };
            self.take(&other);
        }
    }
}

/// `batch` with the summary of `id` put in the catalog.
pub fn put_in(batch: Batch, id: &DocumentId, summary: &Summary) -> Result<Batch, StoreError> {
    let bytes = serde_json::to_vec(summary).map_err(|error| corrupt(b"catalog", error))?;
    Ok(batch.put(catalog_key(id), bytes))
}

pub fn promotion(store: &dyn Store, id: &DocumentId) -> Result<Option<Promotion>, StoreError> {
    let key = promoted_key(id);
    store
        .get(&key)?
        .map(|bytes| serde_json::from_slice(&bytes).map_err(|error| corrupt(&key, error)))
        .transpose()
}

/// `batch` with the promotion of conversation `id` recorded.
pub fn promotion_in(
    batch: Batch,
    id: &DocumentId,
    promotion: &Promotion,
) -> Result<Batch, StoreError> {
    let bytes = serde_json::to_vec(promotion).map_err(|error| corrupt(b"promoted", error))?;
    Ok(batch.put(promoted_key(id), bytes))
}

/// Every post and conversation in the catalog.
pub struct Everything {
    pub posts: Vec<(String, PostSummary)>,
    pub conversations: Vec<(String, ConversationSummary)>,
    pub promotions: Vec<Promotion>,
}

pub fn everything(store: &dyn Store) -> Result<Everything, StoreError> {
    let mut posts = Vec::new();
    let mut conversations = Vec::new();
    for (key, bytes) in store.scan_prefix(CATALOG.as_bytes())? {
        let id = String::from_utf8_lossy(&key[CATALOG.len()..]).into_owned();
        match serde_json::from_slice(&bytes).map_err(|error| corrupt(&key, error))? {
            Summary::Post(post) => posts.push((id, post)),
            Summary::Conversation(conversation) => conversations.push((id, conversation)),
        }
    }
    let promotions = store
        .scan_prefix(PROMOTED.as_bytes())?
        .into_iter()
        .map(|(key, bytes)| serde_json::from_slice(&bytes).map_err(|error| corrupt(&key, error)))
        .collect::<Result<_, _>>()?;
    Ok(Everything {
        posts,
        conversations,
        promotions,
    })
}

/// Conversations opened in `[since, until)`, counted by kind, tag and state.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Needs {
    pub since: i64,
    pub until: i64,
    pub total: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub by_tag: BTreeMap<String, u64>,
    pub by_state: BTreeMap<String, u64>,
}

pub fn needs(everything: &Everything, since: i64, until: i64) -> Needs {
    let mut needs = Needs {
        since,
        until,
        ..Needs::default()
    };
    for kind in crate::community::CONVERSATION_KINDS {
        needs.by_kind.insert(kind.to_string(), 0);
    }
    for state in crate::community::CONVERSATION_STATES {
        needs.by_state.insert(state.to_string(), 0);
    }
    for (_, conversation) in &everything.conversations {
        if conversation.created_at < since || conversation.created_at >= until {
            continue;
        }
        needs.total += 1;
        *needs.by_kind.entry(conversation.kind.clone()).or_default() += 1;
        *needs
            .by_state
            .entry(conversation.state.clone())
            .or_default() += 1;
        for tag in &conversation.tags {
            *needs.by_tag.entry(tag.clone()).or_default() += 1;
        }
    }
    needs
}

impl Needs {
    /// `dimension,value,count` rows, one per kind, state and tag.
    pub fn to_csv(&self) -> String {
        let mut csv = String::from("dimension,value,count\n");
        let rows = [
            ("kind", &self.by_kind),
            ("state", &self.by_state),
            ("tag", &self.by_tag),
        ];
        for (dimension, counts) in rows {
            for (value, count) in counts {
                csv.push_str(&format!("{dimension},{},{count}\n", csv_field(value)));
            }
        }
        csv.push_str(&format!("total,,{}\n", self.total));
        csv
    }
}

/// Quotes a CSV field when it needs it, and defuses spreadsheet formulas.
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

pub const WEEK_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// 1970-01-01 was a Thursday; weeks start on Monday 00:00 UTC.
const MONDAY_OFFSET_MS: i64 = 4 * 24 * 60 * 60 * 1000;

pub fn week_start(at_ms: i64) -> i64 {
    (at_ms - MONDAY_OFFSET_MS).div_euclid(WEEK_MS) * WEEK_MS + MONDAY_OFFSET_MS
}

/// One week of public and back-channel activity.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Week {
    pub week_start: i64,
    pub public_posts: u64,
    pub public_replies: u64,
    pub back_channel_messages: u64,
    pub conversations_opened: u64,
    pub conversations_promoted: u64,
    /// Back-channel messages over all writing (posts, replies, messages);
    /// rising over weeks means the back-channel is replacing the public side.
    pub back_channel_share: f64,
}

/// The last `weeks` weeks up to the one holding `now`, oldest first.
pub fn weekly(everything: &Everything, now: i64, weeks: usize) -> Vec<Week> {
    let last = week_start(now);
    let first = last - (weeks as i64 - 1) * WEEK_MS;
    let mut table: Vec<Week> = (0..weeks)
        .map(|index| Week {
            week_start: first + index as i64 * WEEK_MS,
            ..Week::default()
        })
        .collect();
    let slot = |at: i64| -> Option<usize> {
        let start = week_start(at);
        (start >= first && start <= last).then(|| ((start - first) / WEEK_MS) as usize)
    };
    let mut bump = |at: i64, field: fn(&mut Week) -> &mut u64| {
        if let Some(index) = slot(at) {
            *field(&mut table[index]) += 1;
        }
    };
    for (_, post) in &everything.posts {
        if !post.is_published() {
            continue;
        }
        bump(post.created_at, |week| &mut week.public_posts);
        for reply in post.replies.iter().filter(|reply| !reply.deleted) {
            bump(reply.created_at, |week| &mut week.public_replies);
        }
    }
    for (_, conversation) in &everything.conversations {
        bump(conversation.created_at, |week| {
            &mut week.conversations_opened
        });
        for message in &conversation.messages {
            bump(message.created_at, |week| &mut week.back_channel_messages);
        }
    }
    for promotion in &everything.promotions {
        bump(promotion.at, |week| &mut week.conversations_promoted);
    }
    for week in &mut table {
        let all = week.public_posts + week.public_replies + week.back_channel_messages;
        week.back_channel_share = if all == 0 {
            0.0
        } else {
            week.back_channel_messages as f64 / all as f64
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::community::{ItemSummary, PostSummary};

    fn post_with(replies: usize) -> Summary {
        Summary::Post(PostSummary {
            author: "ada".into(),
            status: "published".into(),
            title: "Meetup".into(),
            created_at: 1,
            anonymous: false,
            locked: false,
            replies: (0..replies)
                .map(|n| ItemSummary {
                    id: format!("r{n}"),
                    author: "bob".into(),
                    created_at: 2,
                    deleted: false,
                    excerpt: String::new(),
                })
                .collect(),
        })
    }

    #[test]
    fn recent_entries_are_bounded_by_the_items_they_list_and_keep_the_newest() {
        let mut recent = Recent::holding(10);
        let (a, b, c) = (
            DocumentId::from_bytes([1; 16]),
            DocumentId::from_bytes([2; 16]),
            DocumentId::from_bytes([3; 16]),
        );
        recent.insert(a, post_with(3));
        recent.insert(b, post_with(3));
        recent.insert(c, post_with(20));
        assert_eq!(recent.take(&c), Some(post_with(20)));
        assert_eq!(recent.take(&a), None);
        assert_eq!(recent.take(&b), None);
        recent.insert(a, post_with(3));
        assert_eq!(recent.take(&a), Some(post_with(3)));
        assert_eq!(recent.take(&a), None, "taken entries are no longer kept");
    }

    #[test]
    fn weeks_start_on_monday_utc() {
        // 2026-11-26 is a Thursday; its week starts Monday 2026-11-23.
        let thursday_noon = 1_795_694_400_000;
        assert_eq!(week_start(thursday_noon), 1_795_392_000_000);
        assert_eq!(week_start(1_795_392_000_000), 1_795_392_000_000);
    }

    #[test]
    fn csv_quotes_commas_and_defuses_formulas() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(csv_field("plain"), "plain");
    }
}
