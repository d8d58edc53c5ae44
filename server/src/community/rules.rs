//! The community's rules as the sync engine's [`Policy`]: every read check
//! and every incoming change goes through here.

use automerge::{Change, ChangeHash};
use backchannel_sync::storage::StorageWrite;
use backchannel_sync::{DocumentView, Policy, Refusal};

use super::actors::ActorBindings;
use super::memo::DocumentMemo;
use super::quota::{Quota, QuotaError, Usage};
use super::read::may_read;
use super::restrictions::Restrictions;
use super::summary::Summary;
use super::write::WriteCheck;
use crate::auth::Role;

/// The signed-in user at the other end of a sync connection.
#[derive(Debug, Clone)]
pub struct SyncUser {
    pub id: String,
    pub role: Role,
    pub session_id: String,
}

#[derive(Debug, Clone)]
pub struct CommunityRules {
    actors: ActorBindings,
    quota: Quota,
    restrictions: Restrictions,
}

impl CommunityRules {
    pub fn new(actors: ActorBindings, quota: Quota, restrictions: Restrictions) -> Self {
        Self {
            actors,
            quota,
            restrictions,
        }
    }
}

impl Policy for CommunityRules {
    type User = SyncUser;
    type Summary = Summary;

    fn user_id<'a>(&self, user: &'a SyncUser) -> &'a str {
        &user.id
    }

    fn may_read(
        &self,
        user: &SyncUser,
        document: DocumentView<'_>,
        memo: &mut DocumentMemo,
    ) -> bool {
        may_read(user, memo.facts(document.doc), document.creator)
    }

    fn check_changes(
        &self,
        user: &SyncUser,
        document: DocumentView<'_>,
        before: &[ChangeHash],
        changes: &[Change],
        creating: bool,
    ) -> Result<Vec<StorageWrite>, Refusal> {
        let quota_refusal = |error| match error {
            QuotaError::Documents { limit } => Refusal::new(format!(
                "rule quota: you have created {limit} documents, the most one person may"
            )),
            QuotaError::Bytes { limit } => Refusal::new(format!(
                "rule quota: you have written {} MiB, the most one person may store",
                limit / (1024 * 1024)
            )),
            QuotaError::Store(error) => {
                Refusal::new(format!("rule quota: the server could not count: {error}"))
            }
        };
        let adding = Usage {
            documents: u64::from(creating),
            bytes: changes
                .iter()
                .map(|change| change.raw_bytes().len() as u64)
                .sum(),
        };
        // Before judging, so a refused message binds no actor.
        self.quota
            .has_room(&user.id, adding)
            .map_err(quota_refusal)?;
        let id = document.id.to_string();
        let verdict_writes = WriteCheck {
            document: &id,
            doc: document.doc,
            previous: document.previous,
            user,
            creator: document.creator,
            actors: &self.actors,
            restrictions: &self.restrictions,
        }
        .check(before, changes)?;
        let mut writes = verdict_writes;
        writes.extend(self.quota.take(&user.id, adding).map_err(quota_refusal)?);
        Ok(writes)
    }

    type Memo = DocumentMemo;

    fn summarize(
        &self,
        document: DocumentView<'_>,
        memo: &mut DocumentMemo,
        changes: &[Change],
    ) -> Option<Summary> {
        memo.summarize(document.doc, changes)
    }
}
