//! Typed settings for `backchannel serve`.
//!
//! The CLI in `main.rs` fills these from flags, then `BACKCHANNEL_*`
//! environment variables, then defaults (clap does the layering); tests build
//! them directly with [`Settings::for_data_dir`]. Nothing reads the environment
//! after start-up, so two servers in one test process never share settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything a running server needs to know, passed explicitly to [`crate::run`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Folder holding the store, the secrets and the lock file.
    pub data_dir: PathBuf,
    /// The address people reach the server at; used for links and push `sub`.
    pub public_url: String,
    /// Whether anyone may create an account through the API.
    pub open_signup: bool,
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
        }
    }
}

/// Sizes and rates that keep one client from hurting the others.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest JSON body the API accepts.
    pub json_body_bytes: usize,
    /// Failed logins allowed per account within [`Limits::login_window`].
    pub login_failures_per_account: usize,
    /// Failed logins allowed per client address within [`Limits::login_window`].
    pub login_failures_per_address: usize,
    pub login_window: Duration,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Largest sync message (one WebSocket message) accepted on `/sync`.
    pub sync_message_bytes: usize,
    /// Sustained sync messages per second per connection before it is slowed.
    pub sync_messages_per_second: u32,
    /// Messages a connection may send at once (a reconnect resyncs every open document).
    pub sync_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            json_body_bytes: 64 * 1024,
            login_failures_per_account: 5,
            login_failures_per_address: 30,
            login_window: Duration::from_secs(15 * 60),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 60 * 60),
            sync_message_bytes: 8 * 1024 * 1024,
            sync_messages_per_second: 500,
            sync_burst: 2_000,
        }
    }
}

impl Settings {
    /// Defaults for a server on `data_dir`, reached at `http://<bind>`.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>, bind: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            public_url: default_public_url(bind),
            open_signup: true,
            limits: Limits::default(),
            push: PushSettings::default(),
        }
    }
}

/// SPEC §1: the public URL defaults to `http://<bind>`.
pub fn default_public_url(bind: SocketAddr) -> String {
    format!("http://{bind}")
}
