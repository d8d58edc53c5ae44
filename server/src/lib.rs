//! The Backchannel server as a library: [`run`] serves the PWA, the JSON API
//! and (in later issues) sync and push from one data folder.
//!
//! The binary in `main.rs` parses the CLI and calls [`run`]; tests call it
//! with a listener on `127.0.0.1:0`, a temporary data folder and their own
//! shutdown future.

pub mod auth;
pub mod community;
pub mod config;
pub mod data_dir;
pub mod error;
pub mod hub;
pub mod kept;
pub mod push;
pub mod routes;
pub mod state;
pub mod store;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpServer, web};

use auth::{Auth, TokenKeys};
pub use config::Settings;
use data_dir::{DataDir, DataDirError};
use hub::SyncHub;
use kept::KeptDocs;
use push::Push;
use state::AppState;
use store::{Store, StoreError};

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("the HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
}

/// Serves until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish (up to 10 s), flushes the store and returns.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + 'static,
) -> Result<(), RunError> {
    let data = DataDir::open(&settings.data_dir)?;
    let store: Arc<dyn Store> = Arc::new(data.store.clone());
    let auth = Arc::new(Auth::new(
        store.clone(),
        TokenKeys::from_secret(data.jwt_secret.bytes()),
        settings.limits.clone(),
    ));
    let shards = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
    let (projector, projector_feed) = std::sync::mpsc::channel();
    let hub = Arc::new(SyncHub::start(
        store.clone(),
        shards,
        &settings.limits,
        kept::summary_sink(projector.clone()),
    )?);
    let (push, push_feed) = {
        let hub = hub.clone();
        Push::new(
            store.clone(),
            &settings.push,
            &settings.public_url,
            Box::new(move |user, document| hub.is_open(user, document)),
        )
    };
    let kept = KeptDocs::start(
        store.clone(),
        hub.clone(),
        auth.clone(),
        push.clone(),
        projector,
        projector_feed,
    )
    .await?;
    {
        let hub = hub.clone();
        let push = push.clone();
        auth.on_session_revoked(move |session_id| {
            hub.close_session(session_id);
            if let Err(error) = push.session_ended(session_id) {
                tracing::error!(%error, "could not remove the ended session's push subscriptions");
            }
        });
    }
    let push_sender = actix_web::rt::spawn(push::sender::run(
        push.clone(),
        store.clone(),
        push::sender::SenderConfig::new(
            &settings.push,
            &settings.public_url,
            data.vapid.private_key_base64(),
        ),
        push_feed,
    ));
    let json_body_bytes = settings.limits.json_body_bytes;
    let state = web::Data::new(AppState {
        vapid_public_key: data.vapid.public_key.clone(),
        settings,
        store: store.clone(),
        auth,
        hub: hub.clone(),
        kept: kept.clone(),
        push: push.clone(),
    });
    let address = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::default().limit(json_body_bytes))
            .wrap(from_fn(log_request))
            .configure(|cfg| routes::configure(cfg, json_body_bytes))
    })
    .disable_signals()
    .shutdown_timeout(10)
    .listen(listener)?
    .run();
    tracing::info!(data = %data.path().display(), "listening on http://{address}");

    let handle = server.handle();
    let closing_hub = hub.clone();
    actix_web::rt::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        // Sync connections never end on their own; close them first so the
        // graceful stop does not wait for them (clients reconnect after restart).
        closing_hub.close_all("the server is shutting down; reconnect shortly");
        handle.stop(true).await;
    });
    server.await?;
    // The projector first, so its last edits reach the shards before they
    // stop; then the push sender, whose undelivered records stay stored.
    kept.stop();
    push.stop();
    let _ = push_sender.await;
    hub.shutdown();
    store.flush()?;
    tracing::info!("store flushed; stopped");
    Ok(())
}

/// One line per request. Only the path is logged, never the query string:
/// `/sync?token=…` carries an access token.
async fn log_request(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let method = request.method().clone();
    let path = request.path().to_owned();
    let started = Instant::now();
    let response = next.call(request).await?;
    tracing::info!(
        %method,
        %path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    Ok(response)
}
