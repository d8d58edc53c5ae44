//! Drains the outbox: encrypts each notification for its device
//! (`aes128gcm`, RFC 8291), signs it with VAPID (RFC 8292) and POSTs it to
//! the push service with `awc`, on the server's main thread.
//!
//! Each push service (endpoint origin) has its own limit of requests in
//! flight and every request has a timeout, so a slow or dead service only
//! delays its own notifications. Outcomes: 2xx delivered (record deleted);
//! 404/410 the subscription is gone (deleted with the record); network
//! errors, 429 and 5xx retried with exponential backoff or after
//! `Retry-After`, until the notification's TTL runs out; any other answer is
//! logged and the record dropped. A restart reloads the whole outbox.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use tokio::sync::mpsc;
use web_push::{
    ContentEncoding, PartialVapidSignatureBuilder, SubscriptionInfo, VapidSignatureBuilder,
    WebPushMessageBuilder,
};

use super::{OUTBOX, Pending, Push, SenderInput, Subscription, Urgency};
use crate::auth::now_millis;
use crate::config::PushSettings;
use crate::store::{Store, StoreError};

/// The largest response body read from a push service.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// First retry after a failure; doubles per attempt.
const FIRST_RETRY: Duration = Duration::from_secs(2);
const LONGEST_RETRY: Duration = Duration::from_secs(60 * 60);
const MIN_RETRY: Duration = Duration::from_secs(1);
/// How long a stopping sender waits for requests already in flight.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// How one attempt went.
#[derive(Debug)]
pub enum Outcome {
    Delivered,
    /// 404 or 410: the device unsubscribed or the subscription expired.
    Gone(u16),
    /// Worth trying again: network error, 429 or 5xx.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Refused for good (another 4xx, or we could not build the request).
    Dropped(String),
}

#[derive(Debug)]
pub struct Finished {
    key: String,
    origin: String,
    outcome: Outcome,
}

/// What the sender needs besides the outbox itself.
pub struct SenderConfig {
    /// The VAPID key, parsed once (deriving its public half is a scalar
    /// multiplication: too dear to repeat per notification).
    vapid: Result<PartialVapidSignatureBuilder, String>,
    /// The VAPID `sub` claim.
    pub contact: String,
    pub request_timeout: Duration,
    pub sends_per_service: usize,
}

impl SenderConfig {
    pub fn new(settings: &PushSettings, public_url: &str, vapid_private_key: String) -> Self {
        Self {
            vapid: VapidSignatureBuilder::from_base64_no_sub(&vapid_private_key)
                .map_err(|error| format!("the VAPID key is unusable: {error}")),
            contact: settings
                .contact
                .clone()
                .unwrap_or_else(|| public_url.trim_end_matches('/').to_string()),
            request_timeout: settings.request_timeout,
            sends_per_service: settings.sends_per_service.max(1),
        }
    }
}

/// Runs until told to stop; spawn it on the server's actix runtime.
pub async fn run(
    push: Arc<Push>,
    store: Arc<dyn Store>,
    config: SenderConfig,
    mut feed: mpsc::UnboundedReceiver<SenderInput>,
) {
    let client = awc::Client::builder()
        .timeout(config.request_timeout)
        .disable_redirects()
        .finish();
    let mut sender = Sender {
        push,
        store,
        config,
        client,
        due: BTreeSet::new(),
        scheduled: HashSet::new(),
        stopping: false,
        in_flight: HashMap::new(),
        waiting: HashMap::new(),
    };
    match sender.load_outbox() {
        Ok(count) if count > 0 => tracing::info!(count, "resuming pending push notifications"),
        Ok(_) => {}
        Err(error) => tracing::error!(%error, "could not read the push outbox"),
    }
    let finished = sender.push.feed_handle();
    loop {
        sender.dispatch_due(&finished);
        let next = sender.due.first().map(|(at, _)| *at);
        let input = match next {
            Some(at) => {
                let wait = Duration::from_millis(at.saturating_sub(now_millis()));
                match tokio::time::timeout(wait, feed.recv()).await {
                    Ok(input) => input,
                    Err(_) => continue,
                }
            }
            None => feed.recv().await,
        };
        match input {
            Some(SenderInput::Queued(keys)) => {
                let now = now_millis();
                for key in keys {
                    sender.schedule(now, key);
                }
            }
            Some(SenderInput::Finished(done)) => sender.finish(done, &finished),
            Some(SenderInput::Stop) | None => break,
        }
    }
    // Let requests in flight finish, so what they delivered is not sent twice.
    sender.stopping = true;
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while sender.in_flight.values().any(|count| *count > 0) {
        match tokio::time::timeout_at(deadline, feed.recv()).await {
            Ok(Some(SenderInput::Finished(done))) => sender.finish(done, &finished),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

struct Sender {
    push: Arc<Push>,
    store: Arc<dyn Store>,
    config: SenderConfig,
    client: awc::Client,
    /// Records to try, by the time they are due.
    due: BTreeSet<(u64, String)>,
    /// Every record due, held back or in flight: a record both loaded at
    /// start and announced as new is still sent once.
    scheduled: HashSet<String>,
    in_flight: HashMap<String, usize>,
    /// Set once told to stop: requests in flight finish, nothing new starts.
    stopping: bool,
    /// Due records held back while their push service has its fill.
    waiting: HashMap<String, VecDeque<String>>,
}

fn read_pending(store: &dyn Store, key: &str) -> Result<Option<Pending>, StoreError> {
    match store.get(key.as_bytes())? {
        None => Ok(None),
        Some(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| StoreError::Corrupt {
                    key: key.to_string(),
                    reason: error.to_string(),
                })
        }
    }
}

impl Sender {
    fn load_outbox(&mut self) -> Result<usize, StoreError> {
        let entries = self.store.scan_prefix(OUTBOX.as_bytes())?;
        let count = entries.len();
        for (key, value) in entries {
            let key = String::from_utf8_lossy(&key).into_owned();
            match serde_json::from_slice::<Pending>(&value) {
                Ok(pending) => self.schedule(pending.next_attempt_at, key),
                Err(error) => {
                    tracing::error!(%key, %error, "dropping an unreadable push notification");
                    self.store.delete(key.as_bytes())?;
                }
            }
        }
        Ok(count)
    }

    fn schedule(&mut self, at: u64, key: String) {
        if self.scheduled.insert(key.clone()) {
            self.due.insert((at, key));
        }
    }

    /// The record leaves the outbox, and this sender's books.
    fn forget(&mut self, key: &str) -> Result<(), StoreError> {
        self.scheduled.remove(key);
        self.store.delete(key.as_bytes())
    }

    fn dispatch_due(&mut self, finished: &mpsc::UnboundedSender<SenderInput>) {
        let now = now_millis();
        while let Some((at, _)) = self.due.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.due.pop_first() else {
                break;
            };
            if let Err(error) = self.start(key.clone(), finished) {
                // Dropped from this run's books; a restart reloads it.
                self.scheduled.remove(&key);
                tracing::error!(%error, "could not read a push notification from the outbox");
            }
        }
    }

    /// Starts sending one record, or holds it back if its service is busy.
    /// True if a request went out.
    fn start(
        &mut self,
        key: String,
        finished: &mpsc::UnboundedSender<SenderInput>,
    ) -> Result<bool, StoreError> {
        let Some(pending) = read_pending(self.store.as_ref(), &key)? else {
            self.scheduled.remove(&key);
            return Ok(false);
        };
        if now_millis() >= pending.expires_at {
            // Held back past its TTL (a service slow for a whole day).
            tracing::warn!(document = %pending.document, "push notification expired before delivery; dropping it");
            self.forget(&key)?;
            return Ok(false);
        }
        let Some(subscription) = self
            .push
            .subscription(&pending.user, &pending.subscription)?
        else {
            // Unsubscribed, logged out or gone since: nobody to tell.
            self.forget(&key)?;
            return Ok(false);
        };
        let url = match self.push.endpoints().check(&subscription.endpoint) {
            Ok(url) => url,
            Err(error) => {
                // The operator narrowed the allowlist since the device subscribed.
                tracing::warn!(%error, "dropping a push to an endpoint no longer allowed");
                self.forget(&key)?;
                return Ok(false);
            }
        };
        let origin = super::endpoint::origin(&url);
        // Send to exactly the URL that was checked.
        let subscription = Subscription {
            endpoint: url.to_string(),
            ..subscription
        };
        let busy = self.in_flight.entry(origin.clone()).or_default();
        if *busy >= self.config.sends_per_service {
            self.waiting.entry(origin).or_default().push_back(key);
            return Ok(false);
        }
        *busy += 1;
        let request = build_request(&self.config, &origin, &subscription, &pending);
        let client = self.client.clone();
        let finished = finished.clone();
        actix_web::rt::spawn(async move {
            let outcome = match request {
                Ok(request) => send(&client, request).await,
                Err(reason) => Outcome::Dropped(reason),
            };
            let _ = finished.send(SenderInput::Finished(Finished {
                key,
                origin,
                outcome,
            }));
        });
        Ok(true)
    }

    fn finish(&mut self, done: Finished, finished: &mpsc::UnboundedSender<SenderInput>) {
        let Finished {
            key,
            origin,
            outcome,
        } = done;
        if let Some(busy) = self.in_flight.get_mut(&origin) {
            *busy = busy.saturating_sub(1);
        }
        if let Err(error) = self.settle(&key, outcome) {
            self.scheduled.remove(&key);
            tracing::error!(%error, %key, "could not update the push outbox");
        }
        if self.stopping {
            // What is held back stays in the outbox for the next start.
            return;
        }
        // The freed slot goes to the next held-back record that still needs
        // sending (others may have been settled or unsubscribed meanwhile).
        while let Some(next) = self.waiting.get_mut(&origin).and_then(VecDeque::pop_front) {
            match self.start(next.clone(), finished) {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => {
                    self.scheduled.remove(&next);
                    tracing::error!(%error, "could not read a push notification from the outbox");
                }
            }
        }
    }

    fn settle(&mut self, key: &str, outcome: Outcome) -> Result<(), StoreError> {
        let Some(mut pending) = read_pending(self.store.as_ref(), key)? else {
            self.scheduled.remove(key);
            return Ok(());
        };
        match outcome {
            Outcome::Delivered => {
                tracing::debug!(document = %pending.document, "push notification delivered");
                self.forget(key)
            }
            Outcome::Gone(status) => {
                tracing::info!(status, user = %pending.user, "push subscription gone; forgetting it");
                self.push
                    .forget_subscription(&pending.user, &pending.subscription)?;
                self.forget(key)
            }
            Outcome::Dropped(reason) => {
                tracing::warn!(%reason, document = %pending.document, "push notification refused; dropping it");
                self.forget(key)
            }
            Outcome::Retry { after, reason } => {
                pending.attempts += 1;
                // At least a second, so `Retry-After: 0` cannot make a tight loop.
                let backoff = after.map_or_else(
                    || backoff(pending.attempts),
                    |after| after.clamp(MIN_RETRY, LONGEST_RETRY),
                );
                let at = now_millis().saturating_add(backoff.as_millis() as u64);
                if at >= pending.expires_at {
                    tracing::warn!(%reason, attempts = pending.attempts, "push notification expired before delivery; dropping it");
                    return self.forget(key);
                }
                tracing::info!(%reason, attempts = pending.attempts, retry_in_ms = backoff.as_millis() as u64, "push notification will be retried");
                pending.next_attempt_at = at;
                let value = serde_json::to_vec(&pending).map_err(|error| StoreError::Corrupt {
                    key: key.to_string(),
                    reason: error.to_string(),
                })?;
                self.store.put(key.as_bytes(), &value)?;
                // Still in `scheduled`: due again later.
                self.due.insert((at, key.to_string()));
                Ok(())
            }
        }
    }
}

/// 2 s, 4 s, 8 s … up to an hour, with up to a fifth more at random so
/// devices of one failed service do not all come back at once.
fn backoff(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(16);
    let base = FIRST_RETRY.saturating_mul(1 << exponent).min(LONGEST_RETRY);
    let mut random = [0_u8; 2];
    let _ = getrandom::fill(&mut random);
    let spread = u64::from(u16::from_le_bytes(random)) * base.as_millis() as u64 / 5 / 65_536;
    base + Duration::from_millis(spread)
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn build_request(
    config: &SenderConfig,
    origin: &str,
    subscription: &Subscription,
    pending: &Pending,
) -> Result<http::Request<Vec<u8>>, String> {
    let info = SubscriptionInfo::new(
        subscription.endpoint.as_str(),
        subscription.p256dh.as_str(),
        subscription.auth.as_str(),
    );
    let mut signature = config.vapid.clone()?.add_sub_info(&info);
    // The crate's default audience drops the port, and its default `sub`
    // is a placeholder address: set both.
    signature.add_claim("aud", origin);
    signature.add_claim("sub", config.contact.as_str());
    let signature = signature
        .build()
        .map_err(|error| format!("VAPID signature: {error}"))?;
    let mut message = WebPushMessageBuilder::new(&info);
    message.set_payload(ContentEncoding::Aes128Gcm, pending.payload.as_bytes());
    let remaining = pending.expires_at.saturating_sub(now_millis()) / 1000;
    message.set_ttl(u32::try_from(remaining).unwrap_or(u32::MAX).max(1));
    message.set_urgency(match pending.urgency {
        Urgency::High => web_push::Urgency::High,
        Urgency::Normal => web_push::Urgency::Normal,
    });
    message.set_topic(topic(&pending.document));
    message.set_vapid_signature(signature);
    let message = message
        .build()
        .map_err(|error| format!("cannot encrypt the notification: {error}"))?;
    Ok(web_push::request_builder::build_request::<Vec<u8>>(message))
}

/// RFC 8030 §5.4: at most 32 characters of the base64url alphabet. A
/// document id is base58, a subset, and shorter.
fn topic(document: &str) -> String {
    document
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect()
}

async fn send(client: &awc::Client, request: http::Request<Vec<u8>>) -> Outcome {
    let (parts, body) = request.into_parts();
    let mut outgoing = client.request(parts.method, parts.uri);
    for (name, value) in &parts.headers {
        // awc sets the length from the body itself.
        if name != http::header::CONTENT_LENGTH {
            outgoing = outgoing.insert_header((name.clone(), value.clone()));
        }
    }
    let mut response = match outgoing.send_body(body).await {
        Ok(response) => response,
        Err(error) => {
            return Outcome::Retry {
                after: None,
                reason: format!("push service unreachable: {error}"),
            };
        }
    };
    let status = response.status();
    let after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(retry_after);
    let body = response
        .body()
        .limit(MAX_RESPONSE_BYTES)
        .await
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(300)
                .collect::<String>()
        })
        .unwrap_or_default();
    classify(status, after, &body)
}

fn classify(status: StatusCode, after: Option<Duration>, body: &str) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Delivered,
        404 | 410 => Outcome::Gone(status.as_u16()),
        429 | 500..=599 => Outcome::Retry {
            after,
            reason: format!("push service answered {status}: {body}"),
        },
        _ => Outcome::Dropped(format!("push service answered {status}: {body}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert!(backoff(1) >= Duration::from_secs(2) && backoff(1) < Duration::from_secs(3));
        assert!(backoff(3) >= Duration::from_secs(8));
        assert!(backoff(40) <= LONGEST_RETRY + LONGEST_RETRY / 5);
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let outcome = |code| {
            classify(
                StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT),
                None,
                "",
            )
        };
        assert!(matches!(outcome(201), Outcome::Delivered));
        assert!(matches!(outcome(410), Outcome::Gone(410)));
        assert!(matches!(outcome(404), Outcome::Gone(404)));
        assert!(matches!(outcome(429), Outcome::Retry { .. }));
        assert!(matches!(outcome(503), Outcome::Retry { .. }));
        assert!(matches!(outcome(400), Outcome::Dropped(_)));
        assert!(matches!(outcome(413), Outcome::Dropped(_)));
    }
}
