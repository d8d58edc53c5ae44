//! The community's rules as the sync engine's [`Policy`]: every read check
//! and every incoming change goes through here.

use automerge::{Change, ChangeHash};
use backchannel_sync::{DocumentView, Policy, Refusal};

use super::actors::ActorBindings;
use super::fields::At;
use super::quota::{DocumentQuota, QuotaError};
use super::read::may_read;
use super::schema::DocFacts;
use super::summary::{Summary, summarize};
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
    quota: DocumentQuota,
}

impl CommunityRules {
    pub fn new(actors: ActorBindings, quota: DocumentQuota) -> Self {
        Self { actors, quota }
    }
}

impl Policy for CommunityRules {
    type User = SyncUser;
    type Summary = Summary;

    fn user_id<'a>(&self, user: &'a SyncUser) -> &'a str {
        &user.id
    }

    fn may_read(&self, user: &SyncUser, document: DocumentView<'_>) -> bool {
        may_read(
            user,
            &DocFacts::read(At::now(document.doc)),
            document.creator,
        )
    }

    fn check_changes(
        &self,
        user: &SyncUser,
        document: DocumentView<'_>,
        before: &[ChangeHash],
        changes: &[Change],
        creating: bool,
    ) -> Result<(), Refusal> {
        let quota_refusal = |error| match error {
            QuotaError::Full { limit } => Refusal::new(format!(
                "rule quota: you have created {limit} documents, the most one person may"
            )),
            QuotaError::Store(error) => {
                Refusal::new(format!("rule quota: the server could not count: {error}"))
            }
        };
        if creating {
            // Before judging, so a refused creation binds no actor.
            self.quota.has_room(&user.id).map_err(quota_refusal)?;
        }
        WriteCheck {
            doc: document.doc,
            user,
            creator: document.creator,
            actors: &self.actors,
        }
        .check(before, changes)?;
        if creating {
            self.quota.take_one(&user.id).map_err(quota_refusal)?;
        }
        Ok(())
    }

    fn summarize(&self, document: DocumentView<'_>) -> Option<Summary> {
        summarize(At::now(document.doc))
    }
}
