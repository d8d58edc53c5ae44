//! Typed settings for `backchannel serve`.
//!
//! The CLI in `main.rs` fills these from flags, then `BACKCHANNEL_*`
//! environment variables, then defaults (clap does the layering); tests build
//! them directly with [`Settings::for_data_dir`]. Nothing reads the environment
//! after start-up, so two servers in one test process never share settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use automerge::ActorId;
use backchannel_sync::{EngineConfig, PeerId};

use crate::auth::TrustedProxies;

/// Everything a running server needs to know, passed explicitly to [`crate::run`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Folder holding the store, the secrets and the lock file.
    pub data_dir: PathBuf,
    /// The address people reach the server at; used for links and push `sub`.
    pub public_url: String,
    /// Whether anyone may create an account through the API.
    pub open_signup: bool,
    /// Proxies whose `X-Forwarded-For` names the client (see [`crate::auth::client_address`]).
    pub trusted_proxies: TrustedProxies,
    pub limits: Limits,
    pub push: PushSettings,
}

/// Where and how Web Push notifications are sent (SPEC §6).
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// Hosts whose `https` endpoints are accepted besides the browser push
    /// services: `host`, `host:port` or `*.domain`.
    pub allowed_hosts: Vec<String>,
    /// Hosts whose plain `http` endpoints are accepted (local test services).
    pub insecure_hosts: Vec<String>,
    /// The VAPID `sub` claim: a `mailto:` or `https:` contact for push
    /// services; the public URL when unset.
    pub contact: Option<String>,
    /// How long a push service keeps an undelivered notification, and how
    /// long the outbox retries it.
    pub ttl: Duration,
    /// The longest one request to a push service may take.
    pub request_timeout: Duration,
    /// Requests in flight to one push service at once, so one slow service
    /// cannot take every slot.
    pub sends_per_service: usize,
    /// New reports and flags one member may open within [`PushSettings::alert_window`]
    /// that alert the managers with high urgency; past it, one normal-urgency
    /// notice says more came, and the rest wait silently in the inbox.
    pub alerts_per_member: usize,
    pub alert_window: Duration,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            insecure_hosts: Vec::new(),
            contact: None,
            ttl: Duration::from_secs(24 * 60 * 60),
            request_timeout: Duration::from_secs(15),
            sends_per_service: 16,
            alerts_per_member: 5,
            alert_window: Duration::from_secs(60 * 60),
        }
    }
}

/// Sizes and rates that keep one client from hurting the others.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest JSON body the API accepts.
    pub json_body_bytes: usize,
    /// Failed logins an account may have before each further attempt must
    /// wait (see [`Limits::login_backoff_base`]).
    pub login_failures_per_account: usize,
    /// Failed logins allowed per client address within [`Limits::login_window`].
    pub login_failures_per_address: usize,
    /// How long failures are remembered: an account's after its last
    /// failure, an address's each on its own.
    pub login_window: Duration,
    /// The wait after an account's last free failure; it doubles with each
    /// further failure, up to [`Limits::login_backoff_max`].
    pub login_backoff_base: Duration,
    pub login_backoff_max: Duration,
    /// Sign-ups allowed per client address within [`Limits::signup_window`]; 0: no limit.
    pub signups_per_address: usize,
    pub signup_window: Duration,
    /// Password hashes that may wait for a hashing thread; past it, sign-ups
    /// and logins are answered 503 `server_busy` at once.
    pub password_hash_queue: usize,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Largest sync message (one WebSocket message) accepted on `/sync`.
    pub sync_message_bytes: usize,
    /// Sustained sync messages per second per connection before it is slowed.
    pub sync_messages_per_second: u32,
    /// Messages a connection may send at once (a reconnect resyncs every open document).
    pub sync_burst: u32,
    /// Sustained bytes per second per connection before it is slowed (and,
    /// if it keeps on, closed as a flood).
    pub sync_bytes_per_second: usize,
    /// Bytes of one connection's messages that may wait for the shards; past
    /// it the connection is not read until they are taken in.
    pub sync_inbound_bytes: usize,
    /// Bytes queued for one client before it counts as too slow and is closed.
    pub sync_outbound_bytes: usize,
    /// How long one frame may wait to be written to a client that stopped
    /// reading before the connection is closed.
    pub sync_send_timeout: Duration,
    /// Live `/sync` sockets one user may hold (devices and tabs), joined or not.
    pub sync_connections_per_user: usize,
    /// Live `/sync` sockets from one client address (see `trusted_proxies`).
    pub sync_connections_per_address: usize,
    /// Documents one sync connection may have open in each shard.
    pub sync_documents_per_connection: usize,
    /// Largest ephemeral `data`; a larger one closes its sender.
    pub ephemeral_bytes: usize,
    /// Ephemeral bytes one user may send per second, sustained (bursts of
    /// twice as much): every relayed byte goes to every reader.
    pub ephemeral_bytes_per_second: usize,
    /// Ephemeral messages one connection may send per second, sustained
    /// (bursts of three times as many); beyond them it is closed.
    pub ephemerals_per_second: u32,
    /// Bytes of one connection's messages waiting in document queues (while
    /// a write is in flight or a document loads); beyond them it is closed.
    pub sync_queued_bytes: usize,
    /// Bytes of changes waiting for their dependencies, from one connection
    /// and in one document from every connection; beyond them the sender is
    /// closed and what it held dropped.
    pub sync_held_bytes_per_connection: usize,
    pub sync_held_bytes_per_document: usize,
    /// Device sync states kept per document; the oldest is dropped first.
    pub sync_states_per_document: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            json_body_bytes: 64 * 1024,
            login_failures_per_account: 5,
            login_failures_per_address: 30,
            login_window: Duration::from_secs(15 * 60),
            login_backoff_base: Duration::from_secs(1),
            login_backoff_max: Duration::from_secs(5 * 60),
            signups_per_address: 100,
            signup_window: Duration::from_secs(60 * 60),
            password_hash_queue: 64,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 60 * 60),
            sync_message_bytes: 8 * 1024 * 1024,
            sync_messages_per_second: 500,
            sync_burst: 2_000,
            sync_bytes_per_second: 4 * 1024 * 1024,
            sync_inbound_bytes: 16 * 1024 * 1024,
            sync_outbound_bytes: 16 * 1024 * 1024,
            sync_send_timeout: Duration::from_secs(30),
            sync_connections_per_user: 32,
            sync_connections_per_address: 4_096,
            sync_documents_per_connection: ENGINE_DEFAULTS.max_documents_per_connection,
            ephemeral_bytes: ENGINE_DEFAULTS.ephemeral_max_bytes,
            ephemeral_bytes_per_second: ENGINE_DEFAULTS.ephemeral_bytes_per_second,
            ephemerals_per_second: ENGINE_DEFAULTS.ephemeral_per_second,
            sync_queued_bytes: ENGINE_DEFAULTS.max_queued_bytes_per_connection,
            sync_held_bytes_per_connection: ENGINE_DEFAULTS.max_held_bytes_per_connection,
            sync_held_bytes_per_document: ENGINE_DEFAULTS.max_held_bytes_per_document,
            sync_states_per_document: ENGINE_DEFAULTS.max_sync_states_per_document,
        }
    }
}

/// The sync engine's own defaults for the limits above.
static ENGINE_DEFAULTS: std::sync::LazyLock<EngineConfig> = std::sync::LazyLock::new(|| {
    EngineConfig::new(PeerId::new("defaults"), ActorId::from([0_u8; 16]))
});

impl Limits {
    /// The engine settings these limits give, for a server with `peer_id`
    /// and `actor`.
    pub fn engine_config(&self, peer_id: PeerId, actor: ActorId) -> EngineConfig {
        let mut config = EngineConfig::new(peer_id, actor);
        config.max_documents_per_connection = self.sync_documents_per_connection;
        config.ephemeral_max_bytes = self.ephemeral_bytes;
        config.ephemeral_bytes_per_second = self.ephemeral_bytes_per_second;
        config.ephemeral_bytes_burst = self.ephemeral_bytes_per_second.saturating_mul(2);
        config.ephemeral_per_second = self.ephemerals_per_second;
        config.ephemeral_burst = self.ephemerals_per_second.saturating_mul(3);
        config.max_queued_bytes_per_connection = self.sync_queued_bytes;
        config.max_held_bytes_per_connection = self.sync_held_bytes_per_connection;
        config.max_held_bytes_per_document = self.sync_held_bytes_per_document;
        config.max_sync_states_per_document = self.sync_states_per_document;
        config
    }
}

impl Settings {
    /// Defaults for a server on `data_dir`, reached at `http://<bind>`.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>, bind: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            public_url: default_public_url(bind),
            open_signup: true,
            trusted_proxies: TrustedProxies::default(),
            limits: Limits::default(),
            push: PushSettings::default(),
        }
    }
}

/// SPEC §1: the public URL defaults to `http://<bind>`.
pub fn default_public_url(bind: SocketAddr) -> String {
    format!("http://{bind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_limit_an_operator_sets_reaches_the_engine() {
        let limits = Limits {
            sync_documents_per_connection: 11,
            ephemeral_bytes: 12,
            ephemeral_bytes_per_second: 13,
            ephemerals_per_second: 14,
            sync_queued_bytes: 15,
            sync_held_bytes_per_connection: 16,
            sync_held_bytes_per_document: 17,
            sync_states_per_document: 18,
            ..Limits::default()
        };
        let config = limits.engine_config(PeerId::new("server"), ActorId::from([1_u8; 16]));
        assert_eq!(config.max_documents_per_connection, 11);
        assert_eq!(config.ephemeral_max_bytes, 12);
        assert_eq!(
            (
                config.ephemeral_bytes_per_second,
                config.ephemeral_bytes_burst
            ),
            (13, 26)
        );
        assert_eq!(
            (config.ephemeral_per_second, config.ephemeral_burst),
            (14, 42)
        );
        assert_eq!(config.max_queued_bytes_per_connection, 15);
        assert_eq!(config.max_held_bytes_per_connection, 16);
        assert_eq!(config.max_held_bytes_per_document, 17);
        assert_eq!(config.max_sync_states_per_document, 18);
    }

    #[test]
    fn the_default_limits_are_the_engines_own() {
        let ours =
            Limits::default().engine_config(PeerId::new("server"), ActorId::from([1_u8; 16]));
        let engine = EngineConfig::new(PeerId::new("server"), ActorId::from([1_u8; 16]));
        assert_eq!(ours.ephemeral_burst, engine.ephemeral_burst);
        assert_eq!(ours.ephemeral_bytes_burst, engine.ephemeral_bytes_burst);
        assert_eq!(
            ours.max_queued_bytes_per_connection,
            engine.max_queued_bytes_per_connection
        );
        assert_eq!(
            ours.max_sync_states_per_document,
            engine.max_sync_states_per_document
        );
    }
}
