//! Web Push (SPEC §6): subscriptions, mutes, who hears what, and a durable
//! outbox drained by [`sender`].
//!
//! The projector hands every durable change's summaries to [`Push::queue`],
//! which turns them into notices ([`recipients`]), drops those for muted or
//! open documents, fans each out to the recipient's devices and adds one
//! outbox record per device to the projector's own batch: a notification is
//! stored in the same atomic write as the catalog entry it comes from, so a
//! crash neither loses nor repeats it. Only then is the sender woken.
//!
//! Store layout:
//! - `push/sub/<user>/<endpoint hash>`: a device's subscription;
//! - `push/endpoint/<endpoint hash>`: which user holds an endpoint;
//! - `push/session/<session>/<user>/<endpoint hash>`: subscriptions made in a
//!   session, removed when it ends;
//! - `push/mute/<user>/<document id>`: muted threads;
//! - `push/outbox/<time><sequence>`: notifications not yet delivered.

pub mod alerts;
pub mod endpoint;
pub mod recipients;
pub mod sender;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backchannel_sync::DocumentId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::auth::now_millis;
use crate::config::PushSettings;
use crate::store::{Batch, Store, StoreError};
use alerts::{AlertDecision, AlertLimiter};
use endpoint::EndpointPolicy;
pub use recipients::{Notice, Urgency};

const SUBSCRIPTIONS: &str = "push/sub/";
const ENDPOINTS: &str = "push/endpoint/";
const SESSIONS: &str = "push/session/";
const MUTES: &str = "push/mute/";
pub const OUTBOX: &str = "push/outbox/";

/// Fits the `web-push` crate's 3,052-byte payload limit with room to spare.
const MAX_TITLE_CHARS: usize = 120;
const MAX_BODY_CHARS: usize = 400;
const MAX_PAYLOAD_BYTES: usize = 3_000;
/// Devices kept per user; subscribing one more forgets the oldest.
pub const MAX_DEVICES_PER_USER: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{0}")]
    InvalidSubscription(String),
    #[error("{0}")]
    EndpointNotAllowed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A device's subscription, as `PushSubscription.toJSON()` gives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscription {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    pub session: String,
    pub created_at: u64,
}

/// A notification waiting in the outbox for one device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub user: String,
    /// The endpoint hash: the subscription is looked up at each attempt, so
    /// an unsubscribed device is never contacted again.
    pub subscription: String,
    pub document: String,
    /// The JSON `{title, body, url, tag}` that is encrypted for the device.
    pub payload: String,
    pub urgency: Urgency,
    pub created_at: u64,
    pub expires_at: u64,
    pub attempts: u32,
    pub next_attempt_at: u64,
}

/// What the sender is told.
#[derive(Debug)]
pub enum SenderInput {
    /// New outbox records, due at once.
    Queued(Vec<String>),
    /// A send finished (sent by the sender's own request tasks).
    Finished(sender::Finished),
    Stop,
}

pub struct Push {
    store: Arc<dyn Store>,
    endpoints: EndpointPolicy,
    public_url: String,
    ttl: Duration,
    sequence: AtomicU64,
    wake: mpsc::UnboundedSender<SenderInput>,
    is_open: IsOpen,
    /// Each member's high-urgency alerts (new reports and flags) in the window.
    alerts: Mutex<AlertLimiter>,
}

/// Whether a user has a document open on a live connection.
pub type IsOpen = Box<dyn Fn(&str, &DocumentId) -> bool + Send + Sync>;

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push").finish_non_exhaustive()
    }
}

fn random_sequence() -> u64 {
    let mut bytes = [0_u8; 4];
    let _ = getrandom::fill(&mut bytes);
    u64::from(u32::from_le_bytes(bytes)) << 16
}

fn endpoint_hash(endpoint: &str) -> String {
    let digest = Sha256::digest(endpoint.as_bytes());
    digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn corrupt(key: &[u8], error: &serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: error.to_string(),
    }
}

fn truncated(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

impl Push {
    /// The push side of a server; `is_open` tells whether a user has a
    /// document open on a live connection. Returns the sender's feed too.
    pub fn new(
        store: Arc<dyn Store>,
        settings: &PushSettings,
        public_url: &str,
        is_open: IsOpen,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<SenderInput>) {
        let (wake, feed) = mpsc::unbounded_channel();
        let push = Arc::new(Self {
            store,
            endpoints: EndpointPolicy::new(&settings.allowed_hosts, &settings.insecure_hosts),
            public_url: public_url.trim_end_matches('/').to_string(),
            ttl: settings.ttl,
            // Random, so keys made after a restart (or a clock step back)
            // cannot overwrite records still waiting.
            sequence: AtomicU64::new(random_sequence()),
            wake,
            is_open,
            alerts: Mutex::new(AlertLimiter::new(
                settings.alerts_per_member,
                settings.alert_window,
            )),
        });
        (push, feed)
    }

    pub fn endpoints(&self) -> &EndpointPolicy {
        &self.endpoints
    }

    /// Stores a device's subscription for `user`, made in `session`. An
    /// endpoint moves to the latest user who subscribes it (a shared device).
    pub fn subscribe(
        &self,
        user: &str,
        session: &str,
        endpoint: &str,
        p256dh: &str,
        auth: &str,
    ) -> Result<(), PushError> {
        // Stored as checked: the normalised URL and unpadded keys.
        let endpoint = self.endpoints.check(endpoint)?.to_string();
        let endpoint = endpoint.as_str();
        let (p256dh, auth) = endpoint::check_keys(p256dh, auth)?;
        let hash = endpoint_hash(endpoint);
        let mut batch = Batch::new();
        // A person has a few devices; browsers that re-subscribe leave old
        // endpoints behind. Keep the newest few, so one account cannot make
        // every notification fan out without end.
        let mut others: Vec<(u64, String)> = Vec::new();
        for other in self.subscriptions_of(user)? {
            if other == hash {
                continue;
            }
            if let Some(subscription) = self.subscription(user, &other)? {
                others.push((subscription.created_at, other));
            }
        }
        others.sort();
        let excess = (others.len() + 1).saturating_sub(MAX_DEVICES_PER_USER);
        for (_, oldest) in others.iter().take(excess) {
            batch = self.removal(batch, user, oldest)?;
        }
        if let Some(holder) = self.store.get(format!("{ENDPOINTS}{hash}").as_bytes())? {
            let holder = String::from_utf8_lossy(&holder).into_owned();
            batch = self.removal(batch, &holder, &hash)?;
        }
        let subscription = Subscription {
            endpoint: endpoint.to_string(),
            p256dh,
            auth,
            session: session.to_string(),
            created_at: now_millis(),
        };
        let value = serde_json::to_vec(&subscription)
            .map_err(|error| corrupt(SUBSCRIPTIONS.as_bytes(), &error))?;
        batch = batch
            .put(format!("{SUBSCRIPTIONS}{user}/{hash}"), value)
            .put(format!("{ENDPOINTS}{hash}"), user)
            .put(format!("{SESSIONS}{session}/{user}/{hash}"), Vec::new());
        self.store.apply(batch)?;
        self.store.flush()?;
        Ok(())
    }

    /// The writes that forget `user`'s subscription `hash`, if it exists.
    fn removal(&self, batch: Batch, user: &str, hash: &str) -> Result<Batch, StoreError> {
        let key = format!("{SUBSCRIPTIONS}{user}/{hash}");
        let Some(bytes) = self.store.get(key.as_bytes())? else {
            return Ok(batch.delete(format!("{ENDPOINTS}{hash}")));
        };
        let mut batch = batch
            .delete(key.clone())
            .delete(format!("{ENDPOINTS}{hash}"));
        if let Ok(subscription) = serde_json::from_slice::<Subscription>(&bytes) {
            batch = batch.delete(format!("{SESSIONS}{}/{user}/{hash}", subscription.session));
        }
        Ok(batch)
    }

    /// Forgets `user`'s subscription for `endpoint` (nothing if there is none).
    pub fn unsubscribe(&self, user: &str, endpoint: &str) -> Result<(), PushError> {
        // Subscriptions are stored under the normalised URL.
        let endpoint =
            url::Url::parse(endpoint).map_or_else(|_| endpoint.to_string(), String::from);
        let endpoint = endpoint.as_str();
        let batch = self.removal(Batch::new(), user, &endpoint_hash(endpoint))?;
        // Another user's endpoint index must survive.
        let holder = self
            .store
            .get(format!("{ENDPOINTS}{}", endpoint_hash(endpoint)).as_bytes())?;
        if holder
            .as_deref()
            .is_some_and(|holder| holder != user.as_bytes())
        {
            return Ok(());
        }
        self.store.apply(batch)?;
        self.store.flush()?;
        Ok(())
    }

    /// Forgets a subscription the push service says is gone (404/410).
    pub fn forget_subscription(&self, user: &str, hash: &str) -> Result<(), StoreError> {
        let batch = self.removal(Batch::new(), user, hash)?;
        self.store.apply(batch)
    }

    /// A session ended (logout, revoked): its devices stop receiving pushes.
    pub fn session_ended(&self, session: &str) -> Result<(), StoreError> {
        let prefix = format!("{SESSIONS}{session}/");
        let mut batch = Batch::new();
        for (key, _) in self.store.scan_prefix(prefix.as_bytes())? {
            let rest = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if let Some((user, hash)) = rest.split_once('/') {
                batch = self.removal(batch, user, hash)?;
            }
            batch = batch.delete(key);
        }
        if !batch.is_empty() {
            self.store.apply(batch)?;
            self.store.flush()?;
        }
        Ok(())
    }

    pub fn subscription(&self, user: &str, hash: &str) -> Result<Option<Subscription>, StoreError> {
        let key = format!("{SUBSCRIPTIONS}{user}/{hash}");
        self.store
            .get(key.as_bytes())?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|error| corrupt(key.as_bytes(), &error))
            })
            .transpose()
    }

    fn subscriptions_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{SUBSCRIPTIONS}{user}/");
        Ok(self
            .store
            .scan_prefix(prefix.as_bytes())?
            .into_iter()
            .map(|(key, _)| String::from_utf8_lossy(&key[prefix.len()..]).into_owned())
            .collect())
    }

    fn mute_key(user: &str, document: &DocumentId) -> String {
        format!("{MUTES}{user}/{document}")
    }

    pub fn mute(&self, user: &str, document: &DocumentId) -> Result<(), StoreError> {
        self.store
            .put(Self::mute_key(user, document).as_bytes(), b"")?;
        self.store.flush()
    }

    pub fn unmute(&self, user: &str, document: &DocumentId) -> Result<(), StoreError> {
        self.store
            .delete(Self::mute_key(user, document).as_bytes())?;
        self.store.flush()
    }

    pub fn is_muted(&self, user: &str, document: &DocumentId) -> Result<bool, StoreError> {
        Ok(self
            .store
            .get(Self::mute_key(user, document).as_bytes())?
            .is_some())
    }

    /// Adds to `batch` one outbox record per device of each notice's
    /// recipient, except for muted documents and documents the recipient
    /// has open right now. The alerts of a new report or flag are held to
    /// the opener's limit ([`alerts`]): past it, the first is sent at normal
    /// urgency saying more come quietly, the rest not at all. Returns the
    /// batch and the new records' keys, for [`Push::wake`] once the batch is
    /// applied.
    pub fn queue(
        &self,
        mut batch: Batch,
        notices: Vec<Notice>,
    ) -> Result<(Batch, Vec<String>), StoreError> {
        let mut keys = Vec::new();
        let now = now_millis();
        // One decision per conversation, however many managers hear it.
        let mut decided: HashMap<DocumentId, AlertDecision> = HashMap::new();
        for mut notice in notices {
            if let Some(member) = &notice.alert_from {
                let decision = *decided.entry(notice.document).or_insert_with(|| {
                    self.alerts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .decide(member, now)
                });
                match decision {
                    AlertDecision::Alert => {}
                    AlertDecision::Announce => {
                        notice.urgency = Urgency::Normal;
                        notice.body = format!(
                            "{} (more reports and flags from this member will be in the inbox without notifications)",
                            notice.body
                        );
                    }
                    AlertDecision::Quiet => continue,
                }
            }
            if self.is_muted(&notice.recipient, &notice.document)?
                || (self.is_open)(&notice.recipient, &notice.document)
            {
                continue;
            }
            let devices = self.subscriptions_of(&notice.recipient)?;
            if devices.is_empty() {
                continue;
            }
            let payload = self.payload(&notice);
            for subscription in devices {
                let pending = Pending {
                    user: notice.recipient.clone(),
                    subscription,
                    document: notice.document.to_string(),
                    payload: payload.clone(),
                    urgency: notice.urgency,
                    created_at: now,
                    expires_at: now + self.ttl.as_millis() as u64,
                    attempts: 0,
                    next_attempt_at: now,
                };
                let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
                let key = format!("{OUTBOX}{now:016x}{sequence:016x}");
                let value = serde_json::to_vec(&pending)
                    .map_err(|error| corrupt(key.as_bytes(), &error))?;
                batch = batch.put(key.clone(), value);
                keys.push(key);
            }
        }
        Ok((batch, keys))
    }

    /// `{title, body, url, tag}` as JSON, within the encryptable size even
    /// for text that JSON escapes at six bytes a character.
    fn payload(&self, notice: &Notice) -> String {
        let mut limits = (MAX_TITLE_CHARS, MAX_BODY_CHARS);
        loop {
            let payload = serde_json::json!({
                "title": truncated(&notice.title, limits.0),
                "body": truncated(&notice.body, limits.1),
                "url": format!("{}{}", self.public_url, notice.path),
                "tag": notice.document.to_string(),
            })
            .to_string();
            if payload.len() <= MAX_PAYLOAD_BYTES || limits == (0, 0) {
                return payload;
            }
            limits = (limits.0 / 2, limits.1 / 2);
        }
    }

    /// Queues notices on their own (not from a summary), durably, and wakes the sender.
    pub fn send_now(&self, notices: Vec<Notice>) -> Result<(), StoreError> {
        let (batch, keys) = self.queue(Batch::new(), notices)?;
        if !keys.is_empty() {
            self.store.apply(batch)?;
            self.store.flush()?;
            self.wake(keys);
        }
        Ok(())
    }

    /// Tells the sender about records now in the store.
    pub fn wake(&self, keys: Vec<String>) {
        if !keys.is_empty() {
            let _ = self.wake.send(SenderInput::Queued(keys));
        }
    }

    /// Tells the sender to stop; what it has not delivered stays in the outbox.
    pub fn stop(&self) {
        let _ = self.wake.send(SenderInput::Stop);
    }

    pub(crate) fn feed_handle(&self) -> mpsc::UnboundedSender<SenderInput> {
        self.wake.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn push() -> Arc<Push> {
        Push::new(
            Arc::new(MemoryStore::default()),
            &PushSettings::default(),
            "https://community.example",
            Box::new(|_, _| false),
        )
        .0
    }

    fn notice(title: &str, body: &str) -> Notice {
        let document = DocumentId::from_bytes([2; 16]);
        Notice {
            recipient: "ada".into(),
            document,
            urgency: Urgency::Normal,
            title: title.into(),
            body: body.into(),
            path: recipients::post_path(&document),
            alert_from: None,
        }
    }

    #[test]
    fn a_payload_always_fits_the_encryption_limit() {
        let push = push();
        for text in [
            "\u{1}".repeat(5_000),
            "🙂".repeat(5_000),
            "\"".repeat(5_000),
        ] {
            let payload = push.payload(&notice(&text, &text));
            assert!(
                payload.len() <= MAX_PAYLOAD_BYTES,
                "{} bytes",
                payload.len()
            );
            let parsed: serde_json::Value = serde_json::from_str(&payload).unwrap_or_default();
            assert_eq!(
                parsed["url"],
                format!(
                    "https://community.example/#/post/{}",
                    DocumentId::from_bytes([2; 16])
                )
            );
        }
    }

    #[test]
    fn subscribing_one_device_too_many_forgets_the_oldest() {
        use base64::Engine as _;
        let push = push();
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            p256::SecretKey::from_slice(&[3_u8; 32])
                .unwrap_or_else(|e| panic!("{e}"))
                .public_key()
                .to_sec1_bytes(),
        );
        let auth = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1_u8; 16]);
        for n in 0..=MAX_DEVICES_PER_USER {
            let endpoint = format!("https://fcm.googleapis.com/fcm/send/{n}");
            push.subscribe("ada", "s1", &endpoint, &key, &auth)
                .unwrap_or_else(|e| panic!("{e}"));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let kept = push.subscriptions_of("ada").unwrap_or_default();
        assert_eq!(kept.len(), MAX_DEVICES_PER_USER);
        assert!(!kept.contains(&endpoint_hash("https://fcm.googleapis.com/fcm/send/0")));
        assert!(kept.contains(&endpoint_hash("https://fcm.googleapis.com/fcm/send/1")));
    }

    fn subscribe_a_device(push: &Push, user: &str) {
        use base64::Engine as _;
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            p256::SecretKey::from_slice(&[3_u8; 32])
                .unwrap_or_else(|e| panic!("{e}"))
                .public_key()
                .to_sec1_bytes(),
        );
        let auth = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1_u8; 16]);
        let endpoint = format!("https://fcm.googleapis.com/fcm/send/{user}");
        push.subscribe(user, "s1", &endpoint, &key, &auth)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A new flag by `opener` in its own conversation `n`, as the projector
    /// queues it, and the urgencies of what was queued for `manager`.
    fn queue_a_new_flag(push: &Push, n: u8, opener: &str, manager: &str) -> Vec<Urgency> {
        use crate::community::{ConversationSummary, ItemSummary, Summary};
        let summary = Summary::Conversation(ConversationSummary {
            kind: "flag".into(),
            opener: opener.into(),
            members: vec![opener.into()],
            subject: format!("Flag {n}"),
            created_at: 1,
            state: "open".into(),
            tags: Vec::new(),
            assignee: None,
            publish_consent: false,
            publish_anonymous: false,
            messages: vec![ItemSummary {
                id: "m1".into(),
                author: opener.into(),
                created_at: 2,
                deleted: false,
                excerpt: "look at this".into(),
            }],
        });
        let managers = [manager.to_string()].into_iter().collect();
        let notices = recipients::notices(
            DocumentId::from_bytes([n; 16]),
            None,
            &summary,
            &managers,
            &mut |user| user.to_uppercase(),
        );
        let (batch, _) = push
            .queue(Batch::new(), notices)
            .unwrap_or_else(|e| panic!("{e}"));
        batch
            .into_writes()
            .into_iter()
            .filter_map(|write| match write {
                crate::store::Write::Put { value, .. } => {
                    serde_json::from_slice::<Pending>(&value).ok()
                }
                crate::store::Write::Delete { .. } => None,
            })
            .filter(|pending| pending.user == manager)
            .map(|pending| pending.urgency)
            .collect()
    }

    #[test]
    fn a_members_flags_past_the_hourly_limit_no_longer_alert_the_managers() {
        let push = push();
        subscribe_a_device(&push, "mia");
        let limit = PushSettings::default().alerts_per_member;
        for n in 0..limit {
            assert_eq!(
                queue_a_new_flag(&push, n as u8, "bob", "mia"),
                [Urgency::High]
            );
        }
        // The first one over the limit: one quiet notice that more came.
        assert_eq!(
            queue_a_new_flag(&push, limit as u8, "bob", "mia"),
            [Urgency::Normal]
        );
        // After that, nothing: the conversations are in the inbox.
        assert!(queue_a_new_flag(&push, limit as u8 + 1, "bob", "mia").is_empty());
        // Another member's flag still alerts.
        assert_eq!(
            queue_a_new_flag(&push, limit as u8 + 2, "cy", "mia"),
            [Urgency::High]
        );
    }

    #[test]
    fn a_payload_keeps_ordinary_text_whole() {
        let payload = push().payload(&notice("Reply on “Lunch”", "Bob: see you there"));
        let parsed: serde_json::Value = serde_json::from_str(&payload).unwrap_or_default();
        assert_eq!(parsed["title"], "Reply on “Lunch”");
        assert_eq!(parsed["body"], "Bob: see you there");
    }
}
