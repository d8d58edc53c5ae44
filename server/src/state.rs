//! What every handler shares, built once by [`crate::run`].

use std::sync::Arc;

use crate::auth::Auth;
use crate::config::Settings;
use crate::hub::SyncHub;
use crate::kept::KeptDocs;
use crate::push::Push;
use crate::store::Store;

#[derive(Debug)]
pub struct AppState {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub auth: Arc<Auth>,
    pub hub: Arc<SyncHub>,
    pub kept: Arc<KeptDocs>,
    pub push: Arc<Push>,
    /// The VAPID public key (base64url, uncompressed P-256 point).
    pub vapid_public_key: String,
}
