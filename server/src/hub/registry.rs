//! Live sync connections: where to send their frames, and which user holds
//! which peer id.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backchannel_sync::{Connection, ConnectionId, DocumentId, Frame, PeerId};
use tokio::sync::mpsc;

use crate::community::SyncUser;

/// What a connection's task is told to do.
#[derive(Debug)]
pub enum Outbound {
    /// A frame's bytes; an ephemeral relayed to many readers shares its
    /// body between their queues (see `backchannel_sync::frame`).
    Frame(Frame),
}

/// The two ways into a connection's task: frames through a queue bounded in
/// frames and in bytes (a slow reader fills it), and a close request that
/// always gets through.
#[derive(Debug, Clone)]
pub struct OutboundQueue {
    pub frames: mpsc::Sender<Outbound>,
    pub close: mpsc::UnboundedSender<String>,
    /// Bytes of the frames queued and not yet written; the task subtracts
    /// each frame's length once it is written.
    pub queued_bytes: Arc<AtomicUsize>,
    /// Past this many queued bytes the client is too slow. One frame larger
    /// than this still goes out when nothing else is queued (a big document's
    /// first sync).
    pub max_bytes: usize,
}

impl OutboundQueue {
    /// Queues `frame`, or says the client has fallen too far behind.
    fn push(&self, frame: Frame) -> Result<(), ()> {
        let length = frame.len();
        let queued = self.queued_bytes.load(Ordering::Acquire);
        if queued > 0 && queued.saturating_add(length) > self.max_bytes {
            return Err(());
        }
        self.queued_bytes.fetch_add(length, Ordering::AcqRel);
        self.frames.try_send(Outbound::Frame(frame)).map_err(|_| {
            self.queued_bytes.fetch_sub(length, Ordering::AcqRel);
        })
    }
}

/// Documents tracked per connection; beyond this a client is asking for
/// more than anyone looks at, and the rest are not tracked.
const MAX_OPEN_PER_CONNECTION: usize = 4_096;

#[derive(Debug, thiserror::Error)]
#[error("peer id {0} is in use by another user's connection")]
pub struct JoinRefused(pub String);

/// One upgraded `/sync` socket, joined or not: a logout or a role change
/// must reach a socket that has not sent `join` yet too, or it would keep
/// the rights it was upgraded with.
struct Socket {
    user: SyncUser,
    address: IpAddr,
    close: mpsc::UnboundedSender<String>,
}

/// Identifies an admitted socket until the registry releases it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId(u64);

/// How many sockets one user and one address may hold at once.
#[derive(Debug, Clone, Copy)]
pub struct SocketCaps {
    pub per_user: usize,
    pub per_address: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TooManySockets {
    #[error("this account already has {0} live sync connections; close a tab or device first")]
    User(usize),
    #[error("this address already has {0} live sync connections")]
    Address(usize),
}

struct Live {
    connection: Arc<Connection<SyncUser>>,
    queue: OutboundQueue,
    /// Documents this connection has asked for or sent, with when it last did.
    documents: HashMap<DocumentId, Instant>,
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    connections: HashMap<ConnectionId, Live>,
    by_peer: HashMap<PeerId, ConnectionId>,
    /// Which live connections of a user have a document open, and when each
    /// last showed it was active.
    open: HashMap<(String, DocumentId), HashMap<ConnectionId, Instant>>,
    sockets: HashMap<SocketId, Socket>,
    next_socket: u64,
}

impl Inner {
    fn forget(&mut self, live: &Live) {
        for document in live.documents.keys() {
            let key = (live.connection.user.id.clone(), *document);
            if let Some(connections) = self.open.get_mut(&key) {
                connections.remove(&live.connection.id);
                if connections.is_empty() {
                    self.open.remove(&key);
                }
            }
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update below leaves the maps consistent before it can panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits an upgraded socket of `user` from `address`, within `caps`.
    /// From now on closes for its user or session reach it, before `join`.
    pub fn admit(
        &self,
        user: &SyncUser,
        address: IpAddr,
        close: mpsc::UnboundedSender<String>,
        caps: SocketCaps,
    ) -> Result<SocketId, TooManySockets> {
        let mut inner = self.lock();
        let of_user = inner
            .sockets
            .values()
            .filter(|s| s.user.id == user.id)
            .count();
        // 0 means no limit.
        if caps.per_user != 0 && of_user >= caps.per_user {
            return Err(TooManySockets::User(of_user));
        }
        let of_address = inner
            .sockets
            .values()
            .filter(|s| s.address == address)
            .count();
        if caps.per_address != 0 && of_address >= caps.per_address {
            return Err(TooManySockets::Address(of_address));
        }
        let id = SocketId(inner.next_socket);
        inner.next_socket += 1;
        inner.sockets.insert(
            id,
            Socket {
                user: user.clone(),
                address,
                close,
            },
        );
        Ok(id)
    }

    /// The socket ended (its task is done).
    pub fn release(&self, socket: SocketId) {
        self.lock().sockets.remove(&socket);
    }

    /// Registers `connection`; returns the connection it replaced, if any.
    pub fn join(
        &self,
        connection: &Arc<Connection<SyncUser>>,
        queue: OutboundQueue,
    ) -> Result<Option<ConnectionId>, JoinRefused> {
        let mut inner = self.lock();
        let mut replaced = None;
        if let Some(&holder) = inner.by_peer.get(&connection.peer_id) {
            let Some(live) = inner.connections.get(&holder) else {
                return Err(JoinRefused(connection.peer_id.to_string()));
            };
            if live.connection.user.id != connection.user.id {
                return Err(JoinRefused(connection.peer_id.to_string()));
            }
            let _ = live
                .queue
                .close
                .send("replaced by a newer connection with the same peer id".into());
            if let Some(live) = inner.connections.remove(&holder) {
                inner.forget(&live);
            }
            replaced = Some(holder);
        }
        inner
            .by_peer
            .insert(connection.peer_id.clone(), connection.id);
        inner.connections.insert(
            connection.id,
            Live {
                connection: connection.clone(),
                queue,
                documents: HashMap::new(),
            },
        );
        Ok(replaced)
    }

    /// Forgets a connection; false if it was already gone (replaced).
    pub fn leave(&self, id: ConnectionId) -> bool {
        let mut inner = self.lock();
        let Some(live) = inner.connections.remove(&id) else {
            return false;
        };
        if inner.by_peer.get(&live.connection.peer_id) == Some(&id) {
            inner.by_peer.remove(&live.connection.peer_id);
        }
        inner.forget(&live);
        true
    }

    /// Records that a connection's client has `document` open and active now.
    pub fn opened(&self, id: ConnectionId, document: DocumentId, now: Instant) {
        let mut inner = self.lock();
        let Some(live) = inner.connections.get_mut(&id) else {
            return;
        };
        if live.documents.len() >= MAX_OPEN_PER_CONNECTION
            && !live.documents.contains_key(&document)
        {
            return;
        }
        live.documents.insert(document, now);
        let key = (live.connection.user.id.clone(), document);
        inner.open.entry(key).or_default().insert(id, now);
    }

    /// Whether a live connection of `user` has had `document` open and
    /// active within `within` of `now`: someone looking at a thread sees a
    /// reply arrive; a tab left open in the background still gets a push.
    pub fn is_open(
        &self,
        user: &str,
        document: &DocumentId,
        now: Instant,
        within: Duration,
    ) -> bool {
        self.lock()
            .open
            .get(&(user.to_string(), *document))
            .is_some_and(|connections| {
                connections
                    .values()
                    .any(|active| now.saturating_duration_since(*active) <= within)
            })
    }

    /// Queues a frame; a connection whose queue is full is too slow to keep
    /// up and is closed (its client reconnects and resyncs from durable state).
    pub fn send(&self, id: ConnectionId, frame: Frame) {
        let inner = self.lock();
        let Some(live) = inner.connections.get(&id) else {
            return;
        };
        if live.queue.push(frame).is_err() {
            let _ = live
                .queue
                .close
                .send("the connection fell too far behind; reconnect to resync".into());
        }
    }

    pub fn close(&self, id: ConnectionId, reason: String) {
        if let Some(live) = self.lock().connections.get(&id) {
            let _ = live.queue.close.send(reason);
        }
    }

    /// Closes every admitted socket, joined or not, whose user matches.
    pub fn close_where(&self, matches: impl Fn(&SyncUser) -> bool, reason: &str) {
        for socket in self.lock().sockets.values() {
            if matches(&socket.user) {
                let _ = socket.close.send(reason.to_string());
            }
        }
    }
}
