//! The documents the server keeps (SPEC §4): the community `index` of
//! published posts, the `directory` of names and roles, one `inbox` per user,
//! and each user's `drafts`, all written with the server's own actor.
//!
//! The projector thread receives the summary of every post and conversation
//! after its changes are durable, keeps the catalog (see [`catalog`]) and
//! updates the one index entry and the few inbox entries that changed, so an
//! update costs the same in a community of ten posts or ten thousand. A
//! client change leaves a `changed/` marker in the same write as the change;
//! the projector clears it, and a restart re-describes whatever is still
//! marked, so a crash between the two loses no update. The projector waits
//! until its edits to the kept documents are durable before it writes the
//! catalog entries they were derived from and clears the markers, in one
//! write: until then a restart redoes the whole projection.

pub mod catalog;
mod edits;

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use backchannel_sync::DocumentId;
use backchannel_sync::storage::{CHANGED_PREFIX, changed_key};

use crate::auth::{Auth, Role, now_millis};
use crate::community::{ConversationSummary, PostSummary, SERVER_OWNER, Summary};
use crate::hub::{EditFn, SyncHub};
use crate::push::{Push, recipients};
use crate::store::{Batch, Store, StoreError};
pub use edits::put_text;
use edits::{Field, ensure_base, put_entry, remove_entry, retire};

const INDEX_KEY: &str = "kept/index";
/// Stored (with the catalog) when a published post left the index: its title
/// stays in the index's history, so the index is built anew without it.
const INDEX_REBUILD_KEY: &str = "kept/index-rebuild";
/// Indexes replaced by a rebuilt one and not yet closed to every reader.
const INDEX_RETIRED_PREFIX: &str = "kept/index-retired/";
const DIRECTORY_KEY: &str = "kept/directory";

pub const ANONYMOUS_NAME: &str = "Anonymous";

/// What the projector is told.
pub enum ProjectorInput {
    Summary(DocumentId, Summary),
    /// An account was created or its role changed.
    UserChanged(String),
    Stop,
}

/// A summary sink for [`SyncHub::start`] that feeds the projector.
pub fn summary_sink(
    sender: mpsc::Sender<ProjectorInput>,
) -> Arc<dyn Fn(DocumentId, Summary) + Send + Sync> {
    let sender = Mutex::new(sender);
    Arc::new(move |id, summary| {
        let _ = sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(ProjectorInput::Summary(id, summary));
    })
}

pub struct KeptDocs {
    store: Arc<dyn Store>,
    hub: Arc<SyncHub>,
    /// Serialises "find or make the id" so two callers never make two.
    ids: Mutex<()>,
    projector: Mutex<mpsc::Sender<ProjectorInput>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for KeptDocs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptDocs").finish_non_exhaustive()
    }
}

pub fn random_document_id() -> DocumentId {
    let mut bytes = [0_u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source is unavailable");
    DocumentId::from_bytes(bytes)
}

fn index_base(
    tx: &mut automerge::transaction::Transaction<'_>,
) -> Result<automerge::ObjId, automerge::AutomergeError> {
    ensure_base(tx, "index", &[], "posts")
}

fn directory_base(
    tx: &mut automerge::transaction::Transaction<'_>,
) -> Result<automerge::ObjId, automerge::AutomergeError> {
    ensure_base(tx, "directory", &[], "users")
}

fn inbox_base(
    tx: &mut automerge::transaction::Transaction<'_>,
    owner: &str,
) -> Result<automerge::ObjId, automerge::AutomergeError> {
    ensure_base(
        tx,
        "inbox",
        &[("owner", Field::Text(owner.to_string()))],
        "conversations",
    )
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Member => "member",
        Role::Host => "host",
        Role::Manager => "manager",
    }
}

impl KeptDocs {
    /// Makes sure the community documents exist, brings the directory up to
    /// date, starts the projector on `feed` and re-describes documents whose
    /// derived state may lag (see the module docs).
    pub async fn start(
        store: Arc<dyn Store>,
        hub: Arc<SyncHub>,
        auth: Arc<Auth>,
        push: Arc<Push>,
        sender: mpsc::Sender<ProjectorInput>,
        feed: mpsc::Receiver<ProjectorInput>,
    ) -> Result<Arc<Self>, StoreError> {
        let kept = Arc::new(Self {
            store: store.clone(),
            hub: hub.clone(),
            ids: Mutex::new(()),
            projector: Mutex::new(sender),
            thread: Mutex::new(None),
        });
        let index = kept.id_for(INDEX_KEY)?;
        let directory = kept.id_for(DIRECTORY_KEY)?;
        let users = auth
            .all_users()
            .map_err(|error| StoreError::Backend(error.to_string()))?;
        let entries: Vec<(String, String, &'static str)> = users
            .iter()
            .map(|(user, _)| {
                (
                    user.id.clone(),
                    user.display_name.clone(),
                    role_name(user.role),
                )
            })
            .collect();
        let results = [
            hub.edit_durably(index, SERVER_OWNER, Box::new(|tx| index_base(tx).map(drop)))
                .await,
            hub.edit_durably(
                directory,
                SERVER_OWNER,
                Box::new(move |tx| {
                    let users = directory_base(tx)?;
                    for (id, name, role) in &entries {
                        put_entry(
                            tx,
                            &users,
                            id,
                            &[
                                ("display_name", Field::Text(name.clone())),
                                ("role", Field::Text((*role).to_string())),
                            ],
                        )?;
                    }
                    Ok(())
                }),
            )
            .await,
        ];
        for result in results {
            result.map_err(StoreError::Backend)?;
        }
        let projector = Projector {
            kept: kept.clone(),
            auth,
            push,
            managers: HashSet::new(),
            names: HashMap::new(),
            unfinished: Unfinished::default(),
            recent: catalog::Recent::default(),
            index_needs_rebuild: false,
        };
        let thread = std::thread::Builder::new()
            .name("kept-projector".into())
            .spawn(move || projector.run(feed))
            .map_err(|error| StoreError::Backend(format!("cannot start the projector: {error}")))?;
        *kept.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        for (key, _) in store.scan_prefix(CHANGED_PREFIX.as_bytes())? {
            let text = String::from_utf8_lossy(&key[CHANGED_PREFIX.len()..]).into_owned();
            match DocumentId::parse_url_or_id(&text) {
                Ok(id) => hub.describe(id),
                Err(_) => store.delete(&key)?,
            }
        }
        Ok(kept)
    }

    /// The document id kept under `key`, made (and stored) on first use.
    fn id_for(&self, key: &str) -> Result<DocumentId, StoreError> {
        let _guard = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bytes) = self.store.get(key.as_bytes())? {
            let text = String::from_utf8_lossy(&bytes);
            return DocumentId::parse_url_or_id(&text).map_err(|_| StoreError::Corrupt {
                key: key.to_string(),
                reason: "not a document id".to_string(),
            });
        }
        let id = random_document_id();
        self.store.put(key.as_bytes(), id.to_string().as_bytes())?;
        self.store.flush()?;
        Ok(id)
    }

    pub fn index_id(&self) -> Result<DocumentId, StoreError> {
        self.id_for(INDEX_KEY)
    }

    pub fn directory_id(&self) -> Result<DocumentId, StoreError> {
        self.id_for(DIRECTORY_KEY)
    }

    fn inbox_id(&self, user_id: &str) -> Result<DocumentId, StoreError> {
        self.id_for(&format!("kept/inbox/{user_id}"))
    }

    fn drafts_id(&self, user_id: &str) -> Result<DocumentId, StoreError> {
        self.id_for(&format!("kept/drafts/{user_id}"))
    }

    /// The user's inbox, created (durably) if it is new.
    pub async fn inbox_for(&self, user_id: &str) -> Result<DocumentId, StoreError> {
        let id = self.inbox_id(user_id)?;
        let owner = user_id.to_string();
        self.hub
            .edit_durably(
                id,
                SERVER_OWNER,
                Box::new(move |tx| inbox_base(tx, &owner).map(drop)),
            )
            .await
            .map_err(StoreError::Backend)?;
        Ok(id)
    }

    /// The user's drafts document, created (durably) on first use.
    pub async fn drafts_for(&self, user_id: &str) -> Result<DocumentId, StoreError> {
        let id = self.drafts_id(user_id)?;
        let owner = user_id.to_string();
        self.hub
            .edit_durably(
                id,
                user_id,
                Box::new(move |tx| {
                    use automerge::ReadDoc;
                    if tx.get(automerge::ROOT, "type")?.is_some() {
                        return Ok(());
                    }
                    ensure_base(tx, "drafts", &[("owner", Field::Text(owner))], "items")?;
                    edits::ensure_map(tx, "mine")
                }),
            )
            .await
            .map_err(StoreError::Backend)?;
        Ok(id)
    }

    /// Tells the projector an account was created or changed role.
    pub fn user_changed(&self, user_id: &str) {
        let _ = self
            .projector
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(ProjectorInput::UserChanged(user_id.to_string()));
    }

    /// Stops the projector after everything already sent to it.
    pub fn stop(&self) {
        let _ = self
            .projector
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(ProjectorInput::Stop);
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// An index entry's fields, compared to skip edits that change nothing.
fn index_entry(post: &PostSummary, author_name: String) -> Vec<(&'static str, Field)> {
    let (author, author_name) = if post.anonymous {
        (String::new(), ANONYMOUS_NAME.to_string())
    } else {
        (post.author.clone(), author_name)
    };
    vec![
        ("title", Field::Text(post.title.clone())),
        ("author", Field::Text(author)),
        ("author_name", Field::Text(author_name)),
        ("created_at", Field::Int(post.created_at)),
        ("last_activity", Field::Int(post.last_activity())),
        ("reply_count", Field::Int(post.reply_count() as i64)),
    ]
}

fn inbox_entry(conversation: &ConversationSummary) -> Vec<(&'static str, Field)> {
    let (last_activity, last_author) = conversation.last_activity();
    vec![
        ("subject", Field::Text(conversation.subject.clone())),
        ("kind", Field::Text(conversation.kind.clone())),
        ("state", Field::Text(conversation.state.clone())),
        ("last_activity", Field::Int(last_activity)),
        ("last_author", Field::Text(last_author)),
    ]
}

struct Projector {
    kept: Arc<KeptDocs>,
    auth: Arc<Auth>,
    push: Arc<Push>,
    managers: HashSet<String>,
    names: HashMap<String, String>,
    unfinished: Unfinished,
    /// Catalog entries as last stored, for the busiest documents.
    recent: catalog::Recent,
    /// A published post left the index since it was last built.
    index_needs_rebuild: bool,
}

/// How many inputs the projector handles before it waits for their edits.
const PROJECT_AT_ONCE: usize = 256;

/// Projections whose edits are sent but not yet durable: what to store (and
/// which markers to clear) once they are.
#[derive(Default)]
struct Unfinished {
    edits: Vec<tokio::sync::oneshot::Receiver<Result<(), String>>>,
    batch: Batch,
    markers: Vec<DocumentId>,
    queued: Vec<String>,
    /// Catalog entries in `batch`, newer than the stored ones.
    catalog: HashMap<DocumentId, Summary>,
}

impl Projector {
    fn run(mut self, feed: mpsc::Receiver<ProjectorInput>) {
        let users = self.auth.all_users().unwrap_or_default();
        for (user, _) in &users {
            if user.role == Role::Manager {
                self.managers.insert(user.id.clone());
            }
            self.names
                .insert(user.id.clone(), user.display_name.clone());
        }
        // Accounts made or changed with the CLI while the server was stopped.
        for (user, _) in &users {
            if let Err(error) = self.match_inbox_to_role(user) {
                tracing::error!(%error, user = %user.id, "could not rebuild an inbox");
            }
        }
        if let Err(error) = self.resume_index_rebuild() {
            tracing::error!(%error, "could not finish rebuilding the index");
        }
        self.finish();
        while let Ok(first) = feed.recv() {
            let mut stop = false;
            let inputs = std::iter::once(first).chain(feed.try_iter().take(PROJECT_AT_ONCE));
            for input in inputs {
                let outcome = match input {
                    ProjectorInput::Summary(id, summary) => self.on_summary(id, summary),
                    ProjectorInput::UserChanged(user_id) => {
                        self.finish();
                        let outcome = self.on_user_changed(&user_id);
                        self.finish();
                        outcome
                    }
                    ProjectorInput::Stop => {
                        stop = true;
                        break;
                    }
                };
                if let Err(error) = outcome {
                    tracing::error!(%error, "could not update the server-kept documents");
                }
            }
            self.finish();
            if stop {
                return;
            }
        }
    }

    /// Sends a server edit to a kept document; [`Self::finish`] waits for it.
    fn edit(&mut self, id: DocumentId, apply: EditFn) {
        let receipt = self.kept.hub.edit_with_receipt(id, SERVER_OWNER, apply);
        self.unfinished.edits.push(receipt);
    }

    /// Waits until the edits sent are durable, then stores the catalog
    /// entries and notifications they came from and clears their documents'
    /// markers, in one write. If an edit failed, nothing is stored: the
    /// markers stay, and a restart (or the document's next change, diffed
    /// against the older catalog entry) projects it again.
    fn finish(&mut self) {
        let unfinished = std::mem::take(&mut self.unfinished);
        let mut failure = None;
        for receipt in unfinished.edits {
            if let Err(reason) = receipt
                .blocking_recv()
                .unwrap_or_else(|_| Err("the sync hub stopped".to_string()))
            {
                failure = Some(reason);
            }
        }
        if let Some(reason) = failure {
            tracing::error!(%reason, "an edit to a server-kept document failed; it is redone after a restart");
            return;
        }
        let batch = unfinished
            .markers
            .iter()
            .fold(unfinished.batch, |batch, id| {
                batch.delete(changed_key(id).into_bytes())
            });
        if batch.is_empty() {
            return;
        }
        let store = self.kept.store.clone();
        let stored = store.apply(batch).and_then(|()| {
            if unfinished.queued.is_empty() {
                Ok(())
            } else {
                // Stored before sent, durably: a crash after a send must not
                // lose the record of what is still to be sent.
                store.flush()
            }
        });
        match stored {
            Ok(()) => {
                self.push.wake(unfinished.queued);
                for (id, summary) in unfinished.catalog {
                    self.recent.insert(id, summary);
                }
            }
            Err(error) => {
                tracing::error!(%error, "could not store the projected catalog");
                return;
            }
        }
        if self.index_needs_rebuild
            && let Err(error) = self.rebuild_index()
        {
            tracing::error!(%error, "could not rebuild the index; it is tried again after the next change");
        }
    }

    /// Sends a server edit and waits until it is durable.
    fn edit_and_wait(&self, id: DocumentId, apply: EditFn) -> Result<(), StoreError> {
        self.kept
            .hub
            .edit_with_receipt(id, SERVER_OWNER, apply)
            .blocking_recv()
            .unwrap_or_else(|_| Err("the sync hub stopped".to_string()))
            .map_err(StoreError::Backend)
    }

    /// Builds a new index from the catalog's published posts, points
    /// `kept/index` at it and retires the old one. A post that left the
    /// index keeps its title in the old index's history; a new index has no
    /// such history, and the old one is closed to everyone.
    fn rebuild_index(&mut self) -> Result<(), StoreError> {
        let store = self.kept.store.clone();
        let old = self.kept.index_id()?;
        let new = random_document_id();
        let everything = catalog::everything(store.as_ref())?;
        let entries: Vec<(String, Vec<(&'static str, Field)>)> = everything
            .posts
            .iter()
            .filter(|(_, post)| post.is_published())
            .map(|(id, post)| (id.clone(), index_entry(post, self.name_of(&post.author))))
            .collect();
        let posts = entries.len();
        self.edit_and_wait(
            new,
            Box::new(move |tx| {
                let index = index_base(tx)?;
                for (key, entry) in &entries {
                    put_entry(tx, &index, key, entry)?;
                }
                Ok(())
            }),
        )?;
        store.apply(
            Batch::new()
                .put(INDEX_KEY, new.to_string())
                .put(format!("{INDEX_RETIRED_PREFIX}{old}"), Vec::new())
                .delete(INDEX_REBUILD_KEY),
        )?;
        store.flush()?;
        self.index_needs_rebuild = false;
        tracing::info!(%old, %new, posts, "rebuilt the index without the posts that left it");
        self.retire_index(old)
    }

    /// Tells the old index's live readers where the index moved, then takes
    /// its `type` away: a document without a type is readable by its creator
    /// (the server) only, so nobody syncs its history any more.
    fn retire_index(&mut self, old: DocumentId) -> Result<(), StoreError> {
        let moved_to = self.kept.index_id()?.url();
        self.edit_and_wait(
            old,
            Box::new(move |tx| {
                edits::put_field(tx, &automerge::ROOT, "moved_to", &Field::Text(moved_to))
            }),
        )?;
        self.edit_and_wait(old, Box::new(retire))?;
        self.kept
            .store
            .delete(format!("{INDEX_RETIRED_PREFIX}{old}").as_bytes())
    }

    /// Finishes what a stop left of a rebuild: indexes still to retire, and a
    /// rebuild asked for but not done.
    fn resume_index_rebuild(&mut self) -> Result<(), StoreError> {
        let store = self.kept.store.clone();
        for (key, _) in store.scan_prefix(INDEX_RETIRED_PREFIX.as_bytes())? {
            let text = String::from_utf8_lossy(&key[INDEX_RETIRED_PREFIX.len()..]).into_owned();
            match DocumentId::parse_url_or_id(&text) {
                Ok(old) => self.retire_index(old)?,
                Err(_) => store.delete(&key)?,
            }
        }
        if store.get(INDEX_REBUILD_KEY.as_bytes())?.is_some() {
            self.rebuild_index()?;
        }
        Ok(())
    }

    fn name_of(&mut self, user_id: &str) -> String {
        if let Some(name) = self.names.get(user_id) {
            return name.clone();
        }
        let name = self
            .auth
            .user(user_id)
            .map(|user| user.display_name)
            .unwrap_or_default();
        self.names.insert(user_id.to_string(), name.clone());
        name
    }

    fn on_summary(&mut self, id: DocumentId, summary: Summary) -> Result<(), StoreError> {
        let store = self.kept.store.clone();
        let old = match self.unfinished.catalog.remove(&id) {
            Some(newer) => Some(newer),
            None => match self.recent.take(&id) {
                Some(stored) => Some(stored),
                None => catalog::get(store.as_ref(), &id)?,
            },
        };
        // The notifications go in the same write as the catalog entry they
        // were derived from: a crash loses or repeats neither.
        let managers = self.managers.clone();
        let notices = recipients::notices(id, old.as_ref(), &summary, &managers, &mut |user| {
            self.name_of(user)
        });
        let batch = catalog::put_in(std::mem::take(&mut self.unfinished.batch), &id, &summary)?;
        let (batch, queued) = self.push.queue(batch, notices)?;
        self.unfinished.batch = batch;
        self.unfinished.queued.extend(queued);
        self.unfinished.catalog.insert(id, summary.clone());
        self.unfinished.markers.push(id);
        match (&summary, old) {
            (Summary::Post(post), old) => {
                let old = match old {
                    Some(Summary::Post(old)) => Some(old),
                    _ => None,
                };
                self.project_post(id, post, old.as_ref())?;
            }
            (Summary::Conversation(conversation), old) => {
                let old = match old {
                    Some(Summary::Conversation(old)) => Some(old),
                    _ => None,
                };
                self.project_conversation(id, conversation, old.as_ref())?;
            }
        }
        Ok(())
    }

    fn project_post(
        &mut self,
        id: DocumentId,
        post: &PostSummary,
        old: Option<&PostSummary>,
    ) -> Result<(), StoreError> {
        let index = self.kept.index_id()?;
        let key = id.to_string();
        if post.is_published() {
            let entry = index_entry(post, self.name_of(&post.author));
            let unchanged = old.is_some_and(|old| {
                old.is_published() && index_entry(old, self.name_of(&old.author)) == entry
            });
            if !unchanged {
                self.edit(
                    index,
                    Box::new(move |tx| {
                        let posts = index_base(tx)?;
                        put_entry(tx, &posts, &key, &entry)
                    }),
                );
            }
        } else if old.is_none_or(PostSummary::is_published) {
            if old.is_some() {
                self.index_needs_rebuild = true;
                let batch = std::mem::take(&mut self.unfinished.batch);
                self.unfinished.batch = batch.put(INDEX_REBUILD_KEY, Vec::new());
            }
            self.edit(
                index,
                Box::new(move |tx| {
                    let posts = index_base(tx)?;
                    remove_entry(tx, &posts, &key)
                }),
            );
        }
        Ok(())
    }

    fn readers(&self, conversation: &ConversationSummary) -> HashSet<String> {
        conversation
            .members
            .iter()
            .cloned()
            .chain(self.managers.iter().cloned())
            .collect()
    }

    fn project_conversation(
        &mut self,
        id: DocumentId,
        conversation: &ConversationSummary,
        old: Option<&ConversationSummary>,
    ) -> Result<(), StoreError> {
        let entry = inbox_entry(conversation);
        let readers = self.readers(conversation);
        let old_readers = old.map(|old| self.readers(old)).unwrap_or_default();
        let unchanged = old.is_some_and(|old| inbox_entry(old) == entry);
        for reader in &readers {
            if unchanged && old_readers.contains(reader) {
                continue;
            }
            self.set_inbox_entry(reader, id, Some(entry.clone()))?;
        }
        for gone in old_readers.difference(&readers) {
            self.set_inbox_entry(gone, id, None)?;
        }
        Ok(())
    }

    fn set_inbox_entry(
        &mut self,
        user_id: &str,
        conversation: DocumentId,
        entry: Option<Vec<(&'static str, Field)>>,
    ) -> Result<(), StoreError> {
        let inbox = self.kept.inbox_id(user_id)?;
        let owner = user_id.to_string();
        let key = conversation.to_string();
        self.edit(
            inbox,
            Box::new(move |tx| {
                let conversations = inbox_base(tx, &owner)?;
                match &entry {
                    Some(entry) => put_entry(tx, &conversations, &key, entry),
                    None => remove_entry(tx, &conversations, &key),
                }
            }),
        );
        Ok(())
    }

    /// A new account or a role change: the directory entry, and the user's
    /// inbox (a manager reads every conversation, others only their own).
    fn on_user_changed(&mut self, user_id: &str) -> Result<(), StoreError> {
        let user = self
            .auth
            .user(user_id)
            .map_err(|error| StoreError::Backend(error.to_string()))?;
        self.names
            .insert(user.id.clone(), user.display_name.clone());
        if user.role == Role::Manager {
            self.managers.insert(user.id.clone());
        } else {
            self.managers.remove(&user.id);
        }
        let directory = self.kept.directory_id()?;
        let entry = vec![
            ("display_name", Field::Text(user.display_name.clone())),
            ("role", Field::Text(role_name(user.role).to_string())),
        ];
        let key = user.id.clone();
        self.edit(
            directory,
            Box::new(move |tx| {
                let users = directory_base(tx)?;
                put_entry(tx, &users, &key, &entry)
            }),
        );
        self.match_inbox_to_role(&user)
    }

    /// Rebuilds a user's inbox when their reach changed since it was last
    /// built (`kept/inbox-reach/<user>`): a manager's lists every
    /// conversation, anyone else's only theirs. A new member's empty inbox is
    /// already right.
    fn match_inbox_to_role(&mut self, user: &crate::auth::User) -> Result<(), StoreError> {
        let store = self.kept.store.clone();
        let key = format!("kept/inbox-reach/{}", user.id);
        let reach: &[u8] = if user.role == Role::Manager {
            b"all"
        } else {
            b"member"
        };
        let built = store.get(key.as_bytes())?;
        if built.as_deref() == Some(reach) {
            return Ok(());
        }
        if built.is_some() || user.role == Role::Manager {
            let everything = catalog::everything(store.as_ref())?;
            for (id, conversation) in &everything.conversations {
                let Ok(id) = DocumentId::parse_url_or_id(id) else {
                    continue;
                };
                let reads = self.readers(conversation).contains(&user.id);
                self.set_inbox_entry(&user.id, id, reads.then(|| inbox_entry(conversation)))?;
            }
        }
        let batch = std::mem::take(&mut self.unfinished.batch);
        self.unfinished.batch = batch.put(key.into_bytes(), reach.to_vec());
        Ok(())
    }
}

/// The time used for server-made documents.
pub fn now() -> i64 {
    now_millis() as i64
}
