//! `GET /sync?token=…`: the automerge-repo WebSocket endpoint.
//!
//! The token is checked before the upgrade (401 otherwise). The connection
//! task then answers `join` with `peer` at once, hands document messages to
//! the hub, writes what the hub queues for it, pings, and closes with an
//! `error` message naming the reason when something goes wrong. It owns no
//! document state: that lives in the hub's shards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use backchannel_sync::handshake::{self, ServerIdentity};
use backchannel_sync::{Connection, DocumentId, DocumentMessage, Message};
use serde::Deserialize;
use tokio::sync::mpsc;

use actix_web::http::StatusCode;

use crate::auth::{Auth, AuthError, client_address};
use crate::community::SyncUser;
use crate::config::Limits;
use crate::error::ApiError;
use crate::hub::{Outbound, SocketCaps, SocketId, SyncHub};
use crate::state::AppState;

/// Frames queued for one client before it counts as too slow.
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
    frames: mpsc::Sender<Outbound>,
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
            frames,
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
                            match self.flood.admit().await {
                                Ok(()) => self.on_binary(&bytes),
                                Err(reason) => Next::End(Some(reason)),
                            }
                        }
                        Some(Ok(AggregatedMessage::Text(_))) => Next::End(Some(
                            "send CBOR messages as binary frames; text frames are not part of the protocol".into(),
                        )),
                        Some(Ok(AggregatedMessage::Ping(bytes))) => {
                            if session.pong(&bytes).await.is_err() { Next::End(None) } else { Next::Continue }
                        }
                        Some(Ok(AggregatedMessage::Pong(_))) => Next::Continue,
                        Some(Ok(AggregatedMessage::Close(_))) => Next::End(None),
                    };
                    match next {
                        Next::Continue => {}
                        Next::Reply(bytes) => {
                            if session.binary(bytes).await.is_err() { break None; }
                        }
                        Next::End(reason) => break reason,
                    }
                }
                Some(Outbound::Frame(bytes)) = inbox.frames.recv() => {
                    if session.binary(bytes).await.is_err() { break None; }
                }
                Some(reason) = inbox.close.recv() => {
                    // What the engine queued before deciding to close goes
                    // out first (a `doc-unavailable`, say), then the error.
                    while let Ok(Outbound::Frame(bytes)) = inbox.frames.try_recv() {
                        if session.binary(bytes).await.is_err() { break; }
                    }
                    break Some(reason);
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > SILENCE_LIMIT {
                        break Some("no answer to pings; closing".into());
                    }
                    if session.ping(b"").await.is_err() { break None; }
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
                let _ = session.binary(error.encode()).await;
                let _ = session
                    .close(Some(CloseReason {
                        code: CloseCode::Policy,
                        description: Some(truncate(&reason, 120)),
                    }))
                    .await;
            }
            None => {
                let _ = session.close(None).await;
            }
        }
    }

    fn on_binary(&mut self, bytes: &[u8]) -> Next {
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
                self.hub.route(connection.clone(), document_message);
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

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// A token bucket per connection: bursts pass, a sustained flood is slowed
/// (the task stops reading, so TCP pushes back), and a client that keeps
/// flooding after being slowed is closed.
struct FloodGuard {
    tokens: f64,
    burst: f64,
    per_second: f64,
    refilled_at: Instant,
    /// Time spent slowing this client down in the current window.
    slowed: Duration,
    window_started: Instant,
}

const FLOOD_WINDOW: Duration = Duration::from_secs(10);
const FLOOD_TOLERANCE: Duration = Duration::from_secs(5);

impl FloodGuard {
    fn new(limits: &Limits) -> Self {
        let burst = limits.sync_burst as f64;
        Self {
            tokens: burst,
            burst,
            per_second: limits.sync_messages_per_second.max(1) as f64,
            refilled_at: Instant::now(),
            slowed: Duration::ZERO,
            window_started: Instant::now(),
        }
    }

    async fn admit(&mut self) -> Result<(), String> {
        let now = Instant::now();
        if now.duration_since(self.window_started) > FLOOD_WINDOW {
            self.window_started = now;
            self.slowed = Duration::ZERO;
        }
        self.tokens = (self.tokens
            + now.duration_since(self.refilled_at).as_secs_f64() * self.per_second)
            .min(self.burst);
        self.refilled_at = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.per_second);
            self.slowed += wait;
            if self.slowed > FLOOD_TOLERANCE {
                return Err("too many messages: this connection is flooding the server".into());
            }
            actix_web::rt::time::sleep(wait).await;
            self.tokens = 1.0;
            self.refilled_at = Instant::now();
        }
        self.tokens -= 1.0;
        Ok(())
    }
}
