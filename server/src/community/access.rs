//! Access rules the sync engine calls for every document and every change.
//!
//! Interim rules (issue 3), to be replaced by SPEC §5 in full (issue 4):
//! a document belongs to the user who first sent it and only they read or
//! change it, except a published post (`type: "post"`, `status:
//! "published"`), which every signed-in user may read and write to.

use automerge::{Change, ChangeHash};
use backchannel_sync::{DocumentView, Policy, Refusal};

use super::fields::root_text;
use crate::auth::Role;

/// The signed-in user at the other end of a sync connection.
#[derive(Debug, Clone)]
pub struct SyncUser {
    pub id: String,
    pub role: Role,
    pub session_id: String,
}

#[derive(Debug, Default, Clone)]
pub struct AccessRules;

fn is_published_post(document: DocumentView<'_>) -> bool {
    root_text(document.doc, "type").as_deref() == Some("post")
        && root_text(document.doc, "status").as_deref() == Some("published")
}

impl Policy for AccessRules {
    type User = SyncUser;

    fn user_id<'a>(&self, user: &'a SyncUser) -> &'a str {
        &user.id
    }

    fn may_read(&self, user: &SyncUser, document: DocumentView<'_>) -> bool {
        document.creator == user.id || is_published_post(document)
    }

    fn check_changes(
        &self,
        user: &SyncUser,
        document: DocumentView<'_>,
        _before: &[ChangeHash],
        _changes: &[Change],
        _creating: bool,
    ) -> Result<(), Refusal> {
        // The engine only applies changes from users who could read the
        // document; the interim rules let every reader write.
        if self.may_read(user, document) {
            Ok(())
        } else {
            Err(Refusal::new(
                "only the creator may change a document that is not a published post",
            ))
        }
    }
}
