//! `GET /sync?token=…`: the automerge-repo WebSocket endpoint.
//!
//! The token is checked before the upgrade (401 otherwise). The connection
//! task then answers `join` with `peer` at once, hands document messages to
//! the hub, writes what the hub queues for it, pings, and closes with an
//! `error` message naming the reason when something goes wrong. It owns no
//! document state: that lives in the hub's shards.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Item, Session};
use backchannel_sync::handshake::{self, ServerIdentity};
use backchannel_sync::{Connection, DocumentId, DocumentMessage, Message};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};

use actix_web::http::StatusCode;

use crate::auth::{Auth, AuthError, client_address};
use crate::community::SyncUser;
use crate::config::Limits;
use crate::error::ApiError;
use crate::hub::{Outbound, SocketCaps, SocketId, SyncHub};
use crate::state::AppState;

/// Frames queued for one client before it counts as too slow (their bytes
/// are bounded too: `Limits::sync_outbound_bytes`).
const OUTBOUND_FRAMES: usize = 1024;
const PING_EVERY: Duration = Duration::from_secs(15);
/// A client silent this long (no frame, no pong) is gone.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/sync", web::get().to(upgrade));
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn upgrade(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    query: web::Query<TokenQuery>,
) -> Result<HttpResponse, ApiError> {
    let token = query.token.as_deref().ok_or(AuthError::MissingToken)?;
    let principal = state.auth.authenticate(token)?;
    let user = SyncUser {
        id: principal.user.id,
        role: principal.user.role,
        session_id: principal.session_id,
    };
    let (close, close_rx) = mpsc::unbounded_channel();
    let limits = &state.settings.limits;
    let caps = SocketCaps {
        per_user: limits.sync_connections_per_user,
        per_address: limits.sync_connections_per_address,
    };
    let address = client_address(&request, &state.settings.trusted_proxies);
    let socket = state
        .hub
        .admit(&user, address, close.clone(), caps)
        .map_err(|refused| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                refused.to_string(),
            )
        })?;
    let admitted = Admitted {
        hub: state.hub.clone(),
        socket,
    };
    let (response, session, stream) = actix_ws::handle(&request, body).map_err(|error| {
        ApiError::bad_request(
            "websocket_required",
            format!("/sync speaks WebSocket only: {error}"),
        )
    })?;
    let limit = state.settings.limits.sync_message_bytes;
    let stream = stream
        .max_frame_size(limit)
        .aggregate_continuations()
        .max_continuation_size(limit);
    let limits = state.settings.limits.clone();
    let auth = state.auth.clone();
    actix_web::rt::spawn(async move {
        let (task, inbox) = ConnectionTask::new(admitted, auth, user, limits, (close, close_rx));
        task.run(inbox, session, stream).await;
    });
    Ok(response)
}

/// How often a connection tells the hub a document is still active.
const OPEN_REPORT_EVERY: Duration = Duration::from_secs(5);
/// Documents a connection keeps report times for.
const MAX_DOCUMENTS_SEEN: usize = 4_096;

/// An admitted socket, released when dropped (the task ended, or the
/// upgrade failed before it started).
struct Admitted {
    hub: Arc<SyncHub>,
    socket: SocketId,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.hub.release(self.socket);
    }
}

struct ConnectionTask {
    hub: Arc<SyncHub>,
    _admitted: Admitted,
    auth: Arc<Auth>,
    user: SyncUser,
    joined: Option<Arc<Connection<SyncUser>>>,
    /// Documents already reported open to the hub (for push: a person
    /// looking at a thread is not also notified about it).
    documents_seen: HashMap<DocumentId, Instant>,
    flood: FloodGuard,
    /// Bytes of this connection's messages the shards have not taken in yet
    /// may not pass `Limits::sync_inbound_bytes`.
    inbound: Arc<Semaphore>,
    inbound_max: usize,
    send_timeout: Duration,
    frames: mpsc::Sender<Outbound>,
    queued_bytes: Arc<AtomicUsize>,
    outbound_max: usize,
    close: mpsc::UnboundedSender<String>,
}

/// The receiving ends of a connection's queues, drained by its task.
struct Inbox {
    frames: mpsc::Receiver<Outbound>,
    close: mpsc::UnboundedReceiver<String>,
}

/// What to do after one incoming frame.
enum Next {
    Continue,
    Reply(Vec<u8>),
    /// End the connection; with a reason, send it as an `error` first.
    End(Option<String>),
}

impl ConnectionTask {
    fn new(
        admitted: Admitted,
        auth: Arc<Auth>,
        user: SyncUser,
        limits: Limits,
        (close, close_rx): (
            mpsc::UnboundedSender<String>,
            mpsc::UnboundedReceiver<String>,
        ),
    ) -> (Self, Inbox) {
        let (frames, frames_rx) = mpsc::channel(OUTBOUND_FRAMES);
        let task = Self {
            hub: admitted.hub.clone(),
            _admitted: admitted,
            auth,
            user,
            joined: None,
            documents_seen: HashMap::new(),
            flood: FloodGuard::new(&limits),
            inbound: Arc::new(Semaphore::new(limits.sync_inbound_bytes)),
            inbound_max: limits.sync_inbound_bytes,
            send_timeout: limits.sync_send_timeout,
            frames,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            outbound_max: limits.sync_outbound_bytes,
            close,
        };
        let inbox = Inbox {
            frames: frames_rx,
            close: close_rx,
        };
        (task, inbox)
    }

    async fn run(
        mut self,
        mut inbox: Inbox,
        mut session: Session,
        mut stream: AggregatedMessageStream,
    ) {
        let mut ping = actix_web::rt::time::interval(PING_EVERY);
        let mut last_heard = Instant::now();
        let ending: Option<String> = loop {
            tokio::select! {
                frame = stream.recv() => {
                    last_heard = Instant::now();
                    // A close decided meanwhile (a logout, a role change)
                    // wins: nothing the client sends after it is taken in,
                    // a `join` with the old rights least of all.
                    if !inbox.close.is_empty() {
                        continue;
                    }
                    let next = match frame {
                        None => Next::End(None),
                        Some(Err(actix_ws::ProtocolError::Io(error))) => {
                            // The client went away without a closing handshake
                            // (a phone losing signal): an ordinary disconnect.
                            tracing::debug!(%error, "sync connection dropped");
                            Next::End(None)
                        }
                        Some(Err(error)) => Next::End(Some(format!(
                            "invalid WebSocket frame (messages are limited to the server's size limit): {error}"
                        ))),
                        Some(Ok(AggregatedMessage::Binary(bytes))) => {
                            match self.flood.admit(bytes.len()).await {
                                Ok(()) => {
                                    // Waiting here stops reading, so TCP slows
                                    // the client instead of memory growing.
                                    let held = bytes.len().clamp(1, self.inbound_max);
                                    match self.inbound.clone().acquire_many_owned(held as u32).await {
                                        Ok(permit) => self.on_binary(&bytes, permit),
                                        Err(_) => Next::End(None),
                                    }
                                }
                                Err(reason) => Next::End(Some(reason)),
                            }
                        }
                        Some(Ok(AggregatedMessage::Text(_))) => Next::End(Some(
                            "send CBOR messages as binary frames; text frames are not part of the protocol".into(),
                        )),
                        Some(Ok(AggregatedMessage::Ping(bytes))) => {
                            match self.timed(session.pong(&bytes)).await {
                                Ok(()) => Next::Continue,
                                Err(ending) => Next::End(ending),
                            }
                        }
                        Some(Ok(AggregatedMessage::Pong(_))) => Next::Continue,
                        Some(Ok(AggregatedMessage::Close(_))) => Next::End(None),
                    };
                    match next {
                        Next::Continue => {}
                        Next::Reply(bytes) => {
                            if let Err(ending) = send_message(&mut session, bytes.into(), self.send_timeout).await { break ending; }
                        }
                        Next::End(reason) => break reason,
                    }
                }
                Some(Outbound::Frame(frame)) = inbox.frames.recv() => {
                    if let Err(ending) = self.write_queued(&mut session, frame).await { break ending; }
                }
                Some(reason) = inbox.close.recv() => {
                    // What the engine queued before deciding to close goes
                    // out first (a `doc-unavailable`, say), then the error.
                    while let Ok(Outbound::Frame(frame)) = inbox.frames.try_recv() {
                        let length = frame.len();
                        let written = send_message(&mut session, frame.into(), self.closing_limit()).await;
                        self.queued_bytes.fetch_sub(length, Ordering::AcqRel);
                        if written.is_err() {
                            break;
                        }
                    }
                    break Some(reason);
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > SILENCE_LIMIT {
                        break Some("no answer to pings; closing".into());
                    }
                    if let Err(ending) = self.timed(session.ping(b"")).await { break ending; }
                }
            }
        };
        if let Some(connection) = &self.joined {
            self.hub.leave(connection.id);
        }
        match ending {
            Some(reason) => {
                tracing::info!(user = %self.user.id, %reason, "sync connection closed with an error");
                let target = self.joined.as_ref().map(|c| c.peer_id.clone());
                let error = handshake::error(self.hub.identity(), target, reason.clone());
                let _ =
                    send_message(&mut session, error.encode().into(), self.closing_limit()).await;
                let _ = self
                    .closing(session.close(Some(CloseReason {
                        code: CloseCode::Policy,
                        description: Some(truncate(&reason, 120)),
                    })))
                    .await;
            }
            None => {
                let _ = self.closing(session.close(None)).await;
            }
        }
    }

    /// Writes a frame the hub queued and gives its bytes back to the queue.
    async fn write_queued(
        &self,
        session: &mut Session,
        frame: backchannel_sync::Frame,
    ) -> Result<(), Option<String>> {
        let length = frame.len();
        let written = send_message(session, frame.into(), self.send_timeout).await;
        self.queued_bytes.fetch_sub(length, Ordering::AcqRel);
        written
    }

    /// One write to the client, given up after the send timeout: a client
    /// that stopped reading would otherwise hold this task (and its pings
    /// and silence check) forever. `Err(None)`: the socket is gone.
    async fn timed<T, E>(
        &self,
        write: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<(), Option<String>> {
        within(self.send_timeout, write).await
    }

    /// Writes while closing wait less: the connection ends either way.
    async fn closing<T, E>(
        &self,
        write: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<(), Option<String>> {
        within(self.closing_limit(), write).await
    }

    fn closing_limit(&self) -> Duration {
        self.send_timeout.min(CLOSING_WRITE_LIMIT)
    }

    fn on_binary(&mut self, bytes: &[u8], permit: crate::hub::InboundPermit) -> Next {
        let message = match Message::decode(bytes) {
            Ok(message) => message,
            Err(error) => return Next::End(Some(format!("malformed message: {error}"))),
        };
        match message {
            Message::Join(join) => self.on_join(join),
            Message::Leave { .. } => Next::End(None),
            Message::Error(error) => {
                tracing::info!(user = %self.user.id, message = %truncate(&error.message, 200), "client reported an error");
                Next::Continue
            }
            other => {
                let Some(connection) = &self.joined else {
                    // As the stock server does: nothing counts before `join`.
                    return Next::Continue;
                };
                let Some(document_message) = DocumentMessage::from_message(other) else {
                    return Next::Continue; // peer, remote heads, unknown types
                };
                // The stock client passes on ephemerals it receives under
                // their original sender's id; the engine drops those copies.
                // Every other message speaks for this connection's peer.
                if !matches!(document_message, DocumentMessage::Ephemeral(_))
                    && document_message.sender_id() != &connection.peer_id
                {
                    return Next::End(Some(
                        "senderId does not match the peer id this connection joined with".into(),
                    ));
                }
                // Reported on first sight and then at most every few
                // seconds: enough to tell an open thread, cheap per message.
                let document = *document_message.document_id();
                let now = Instant::now();
                let due = self
                    .documents_seen
                    .get(&document)
                    .is_none_or(|last| now.duration_since(*last) >= OPEN_REPORT_EVERY);
                if due && self.documents_seen.len() < MAX_DOCUMENTS_SEEN {
                    self.documents_seen.insert(document, now);
                    self.hub.opened(connection.id, document);
                } else if due {
                    self.documents_seen
                        .retain(|_, last| now.duration_since(*last) < crate::hub::OPEN_WINDOW);
                }
                self.hub.route(connection.clone(), document_message, permit);
                Next::Continue
            }
        }
    }

    fn on_join(&mut self, join: backchannel_sync::Join) -> Next {
        if let Some(connection) = &self.joined {
            if connection.peer_id == join.sender_id {
                return Next::Continue;
            }
            return Next::End(Some(
                "this connection already joined as another peer".into(),
            ));
        }
        let identity: &ServerIdentity = self.hub.identity();
        let reply = match handshake::answer_join(&join, identity) {
            Ok(reply) => reply,
            Err(error) => return Next::Reply(error.encode()),
        };
        // The socket was upgraded with the rights of that moment; the session
        // may have ended or the role changed since, so read both again.
        match self
            .auth
            .session_principal(&self.user.session_id, &self.user.id)
        {
            Ok(principal) => self.user.role = principal.user.role,
            Err(AuthError::Store(error)) => {
                tracing::error!(%error, "checking a session at join failed");
                return Next::End(Some(
                    "the server could not check this session; reconnect".into(),
                ));
            }
            Err(_) => return Next::End(Some(AuthError::SessionRevoked.to_string())),
        }
        let metadata = join.peer_metadata.unwrap_or_default();
        let joined = self.hub.join(
            join.sender_id,
            metadata.storage_id,
            metadata.is_ephemeral.unwrap_or(false),
            self.user.clone(),
            crate::hub::OutboundQueue {
                frames: self.frames.clone(),
                close: self.close.clone(),
                queued_bytes: self.queued_bytes.clone(),
                max_bytes: self.outbound_max,
            },
        );
        match joined {
            Ok(connection) => {
                self.documents_seen.clear();
                self.joined = Some(connection);
                Next::Reply(reply.encode())
            }
            Err(refused) => Next::End(Some(refused.to_string())),
        }
    }
}

/// Messages longer than this go out as WebSocket fragments of this size.
/// actix-ws buffers 32 writes per connection whatever their size, so
/// fragments keep what sits in that buffer for a client that stopped reading
/// near 2 MiB, and a write that blocks means the client really is not
/// reading (every client reassembles fragments: RFC 6455 §5.4).
const FRAGMENT_BYTES: usize = 64 * 1024;

/// Writes one message, fragmented when long; each write must be taken within
/// `limit`, so a slow but reading client is never cut off mid-message.
async fn send_message(
    session: &mut Session,
    bytes: actix_web::web::Bytes,
    limit: Duration,
) -> Result<(), Option<String>> {
    if bytes.len() <= FRAGMENT_BYTES {
        return within(limit, session.binary(bytes)).await;
    }
    let first = bytes.slice(..FRAGMENT_BYTES);
    within(limit, session.continuation(Item::FirstBinary(first))).await?;
    let mut at = FRAGMENT_BYTES;
    while bytes.len() - at > FRAGMENT_BYTES {
        let next = bytes.slice(at..at + FRAGMENT_BYTES);
        within(limit, session.continuation(Item::Continue(next))).await?;
        at += FRAGMENT_BYTES;
    }
    within(limit, session.continuation(Item::Last(bytes.slice(at..)))).await
}

/// How long each last write (queued frames, the `error`, the close) may take.
const CLOSING_WRITE_LIMIT: Duration = Duration::from_secs(3);

async fn within<T, E>(
    limit: Duration,
    write: impl std::future::Future<Output = Result<T, E>>,
) -> Result<(), Option<String>> {
    match actix_web::rt::time::timeout(limit, write).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(format!(
            "the client read nothing for {} s; closing",
            limit.as_secs_f64()
        ))),
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// A token bucket per connection: bursts pass, a sustained flood is slowed
/// (the task stops reading, so TCP pushes back), and a client that keeps
/// flooding after being slowed is closed.
struct FloodGuard {
    messages: Bucket,
    bytes: Bucket,
    /// Time spent slowing this client down in the current window.
    slowed: Duration,
    window_started: Instant,
}

const FLOOD_WINDOW: Duration = Duration::from_secs(10);
const FLOOD_TOLERANCE: Duration = Duration::from_secs(5);

impl FloodGuard {
    fn new(limits: &Limits) -> Self {
        // A reconnect uploads everything written offline at once: the byte
        // burst holds the largest messages the inbound budget lets through.
        let byte_burst = limits.sync_inbound_bytes.max(limits.sync_message_bytes);
        Self {
            messages: Bucket::new(
                limits.sync_burst as f64,
                limits.sync_messages_per_second as f64,
            ),
            bytes: Bucket::new(byte_burst as f64, limits.sync_bytes_per_second as f64),
            slowed: Duration::ZERO,
            window_started: Instant::now(),
        }
    }

    /// Lets one message of `length` bytes in, after slowing the client if it
    /// is over either rate; a client slowed too long is flooding.
    async fn admit(&mut self, length: usize) -> Result<(), String> {
        let now = Instant::now();
        if now.duration_since(self.window_started) > FLOOD_WINDOW {
            self.window_started = now;
            self.slowed = Duration::ZERO;
        }
        let wait = self
            .messages
            .take(1.0, now)
            .max(self.bytes.take(length as f64, now));
        if !wait.is_zero() {
            // The time really spent waiting: a sleep overshoots, and the
            // buckets then owe less, so the waits asked for undercount.
            let slept_from = Instant::now();
            actix_web::rt::time::sleep(wait).await;
            self.slowed += slept_from.elapsed();
            if self.slowed > FLOOD_TOLERANCE {
                return Err(
                    "too many messages or bytes: this connection is flooding the server".into(),
                );
            }
        }
        Ok(())
    }
}

/// A token bucket that may go into debt: `take` answers how long to wait
/// for the debt to be paid back.
struct Bucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    refilled_at: Instant,
}

impl Bucket {
    fn new(burst: f64, per_second: f64) -> Self {
        Self {
            tokens: burst,
            burst,
            per_second: per_second.max(1.0),
            refilled_at: Instant::now(),
        }
    }

    fn take(&mut self, amount: f64, now: Instant) -> Duration {
        self.tokens = (self.tokens
            + now.duration_since(self.refilled_at).as_secs_f64() * self.per_second)
            .min(self.burst);
        self.refilled_at = now;
        self.tokens -= amount;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}
