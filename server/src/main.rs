//! `backchannel`: the command line. `serve` runs the server; `user add`
//! creates an account directly in the data folder.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use backchannel::auth::{Auth, NewAccount, Role, TokenKeys, TrustedProxies};
use backchannel::config::{Limits, PushSettings, Settings, default_public_url};
use backchannel::data_dir::DataDir;

/// jemalloc rather than glibc malloc: glibc keeps the memory of freed
/// multi-MiB buffers (a large sync message's copies) in its arenas, so RSS
/// only ever grew; jemalloc returns it within a second (settings in
/// `.cargo/config.toml`). Figures in docs/PERFORMANCE.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "backchannel",
    version,
    about = "A back-channel for online communities: server, sync and PWA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the PWA at /, the JSON API under /api and sync at /sync.
    Serve(Box<ServeArgs>),
    /// Manage accounts directly in the data folder (the server must be stopped).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Args)]
struct DataArg {
    /// Folder for the store, keys and lock file.
    #[arg(long, env = "BACKCHANNEL_DATA", default_value = "./data")]
    data: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "BACKCHANNEL_BIND", default_value = "127.0.0.1:8080")]
    bind: String,
    #[command(flatten)]
    data: DataArg,
    /// The URL people reach this server at [default: http://<bind>].
    #[arg(long, env = "BACKCHANNEL_PUBLIC_URL")]
    public_url: Option<String>,
    /// Whether anyone may sign up through the API.
    #[arg(
        long,
        env = "BACKCHANNEL_OPEN_SIGNUP",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    open_signup: bool,
    /// Proxies (IPs or CIDR ranges, comma-separated) whose X-Forwarded-For names the client.
    #[arg(long, env = "BACKCHANNEL_TRUSTED_PROXIES")]
    trusted_proxies: Option<TrustedProxies>,
    /// Sign-ups allowed per client address per hour (0: no limit).
    #[arg(long, env = "BACKCHANNEL_SIGNUPS_PER_ADDRESS", default_value_t = Limits::default().signups_per_address)]
    signups_per_address: usize,
    /// Live /sync connections one user may hold at once, joined or not (0: no limit).
    #[arg(long, env = "BACKCHANNEL_SYNC_CONNECTIONS_PER_USER", default_value_t = Limits::default().sync_connections_per_user)]
    sync_connections_per_user: usize,
    /// Bytes queued for one sync client before it counts as too slow and is closed.
    #[arg(long, env = "BACKCHANNEL_SYNC_OUTBOUND_BYTES", default_value_t = Limits::default().sync_outbound_bytes)]
    sync_outbound_bytes: usize,
    /// Seconds one frame may wait for a sync client that stopped reading before it is closed.
    #[arg(long, env = "BACKCHANNEL_SYNC_SEND_TIMEOUT_SECS", default_value_t = Limits::default().sync_send_timeout.as_secs())]
    sync_send_timeout_secs: u64,
    /// Bytes of one sync connection's messages that may wait to be processed before it is read no further.
    #[arg(long, env = "BACKCHANNEL_SYNC_INBOUND_BYTES", default_value_t = Limits::default().sync_inbound_bytes)]
    sync_inbound_bytes: usize,
    /// Largest sync message (one WebSocket message) accepted, in bytes.
    #[arg(long, env = "BACKCHANNEL_SYNC_MESSAGE_BYTES", default_value_t = Limits::default().sync_message_bytes)]
    sync_message_bytes: usize,
    /// Documents one sync connection may have open in each shard.
    #[arg(long, env = "BACKCHANNEL_SYNC_DOCUMENTS_PER_CONNECTION", default_value_t = Limits::default().sync_documents_per_connection)]
    sync_documents_per_connection: usize,
    /// Largest ephemeral message data (presence, typing), in bytes.
    #[arg(long, env = "BACKCHANNEL_EPHEMERAL_BYTES", default_value_t = Limits::default().ephemeral_bytes)]
    ephemeral_bytes: usize,
    /// Ephemeral bytes one user may send per second (bursts of twice as much).
    #[arg(long, env = "BACKCHANNEL_EPHEMERAL_BYTES_PER_SECOND", default_value_t = Limits::default().ephemeral_bytes_per_second)]
    ephemeral_bytes_per_second: usize,
    /// Ephemeral messages one sync connection may send per second (bursts of three times as many).
    #[arg(long, env = "BACKCHANNEL_EPHEMERALS_PER_SECOND", default_value_t = Limits::default().ephemerals_per_second)]
    ephemerals_per_second: u32,
    /// Sync messages per second one connection may send, sustained, before it is slowed.
    #[arg(long, env = "BACKCHANNEL_SYNC_MESSAGES_PER_SECOND", default_value_t = Limits::default().sync_messages_per_second)]
    sync_messages_per_second: u32,
    /// Sync messages one connection may send at once (a reconnect resyncs every open document).
    #[arg(long, env = "BACKCHANNEL_SYNC_BURST", default_value_t = Limits::default().sync_burst)]
    sync_burst: u32,
    /// Bytes per second one sync connection may send, sustained, before it is slowed.
    #[arg(long, env = "BACKCHANNEL_SYNC_BYTES_PER_SECOND", default_value_t = Limits::default().sync_bytes_per_second)]
    sync_bytes_per_second: usize,
    /// Bytes of one connection's messages that may wait in document queues before it is closed.
    #[arg(long, env = "BACKCHANNEL_SYNC_QUEUED_BYTES", default_value_t = Limits::default().sync_queued_bytes)]
    sync_queued_bytes: usize,
    /// Bytes of changes from one connection that may wait for their dependencies.
    #[arg(long, env = "BACKCHANNEL_SYNC_HELD_BYTES_PER_CONNECTION", default_value_t = Limits::default().sync_held_bytes_per_connection)]
    sync_held_bytes_per_connection: usize,
    /// Bytes of changes in one document that may wait for their dependencies.
    #[arg(long, env = "BACKCHANNEL_SYNC_HELD_BYTES_PER_DOCUMENT", default_value_t = Limits::default().sync_held_bytes_per_document)]
    sync_held_bytes_per_document: usize,
    /// Device sync states kept per document (the oldest is dropped first).
    #[arg(long, env = "BACKCHANNEL_SYNC_STATES_PER_DOCUMENT", default_value_t = Limits::default().sync_states_per_document)]
    sync_states_per_document: usize,
    /// Live /sync connections from one client address (0: no limit).
    #[arg(long, env = "BACKCHANNEL_SYNC_CONNECTIONS_PER_ADDRESS", default_value_t = Limits::default().sync_connections_per_address)]
    sync_connections_per_address: usize,
    /// Password checks that may wait for a hashing thread before logins and sign-ups get 503.
    #[arg(long, env = "BACKCHANNEL_PASSWORD_HASH_QUEUE", default_value_t = Limits::default().password_hash_queue)]
    password_hash_queue: usize,
    /// New reports and flags per member per hour that alert the managers with high urgency.
    #[arg(long, env = "BACKCHANNEL_PUSH_ALERTS_PER_MEMBER", default_value_t = PushSettings::default().alerts_per_member)]
    push_alerts_per_member: usize,
    /// More push service hosts accepted over https (comma-separated; `*.domain` allowed).
    #[arg(long, env = "BACKCHANNEL_PUSH_ALLOWED_HOSTS", value_delimiter = ',')]
    push_allowed_hosts: Vec<String>,
    /// Push service hosts accepted over plain http, for local tests only (comma-separated).
    #[arg(long, env = "BACKCHANNEL_PUSH_INSECURE_HOSTS", value_delimiter = ',')]
    push_insecure_hosts: Vec<String>,
    /// Contact sent to push services as the VAPID `sub` (mailto: or https:) [default: the public URL].
    #[arg(long, env = "BACKCHANNEL_PUSH_CONTACT")]
    push_contact: Option<String>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account; the password is read from standard input.
    Add {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "member")]
        role: Role,
        #[command(flatten)]
        data: DataArg,
    },
}

fn main() {
    init_logging();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::User {
            command:
                UserCommand::Add {
                    email,
                    name,
                    role,
                    data,
                },
        } => add_user(email, name, role, data.data),
    };
    if let Err(error) = outcome {
        // Logging may be filtered out by RUST_LOG; the reason to exit must not be.
        let _ = writeln!(std::io::stderr(), "backchannel: {error:#}");
        std::process::exit(1);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(&args.bind).with_context(|| format!("cannot listen on {}", args.bind))?;
    let public_url = match args.public_url {
        Some(url) => url,
        None => default_public_url(listener.local_addr()?),
    };
    let settings = Settings {
        data_dir: args.data.data,
        public_url: public_url.trim_end_matches('/').to_string(),
        open_signup: args.open_signup,
        trusted_proxies: args.trusted_proxies.unwrap_or_default(),
        limits: Limits {
            signups_per_address: args.signups_per_address,
            password_hash_queue: args.password_hash_queue,
            sync_connections_per_user: args.sync_connections_per_user,
            sync_connections_per_address: args.sync_connections_per_address,
            sync_outbound_bytes: args.sync_outbound_bytes,
            sync_send_timeout: std::time::Duration::from_secs(args.sync_send_timeout_secs.max(1)),
            sync_inbound_bytes: args.sync_inbound_bytes,
            sync_message_bytes: args.sync_message_bytes,
            sync_documents_per_connection: args.sync_documents_per_connection,
            ephemeral_bytes: args.ephemeral_bytes,
            ephemeral_bytes_per_second: args.ephemeral_bytes_per_second,
            ephemerals_per_second: args.ephemerals_per_second,
            sync_messages_per_second: args.sync_messages_per_second,
            sync_burst: args.sync_burst,
            sync_bytes_per_second: args.sync_bytes_per_second,
            sync_queued_bytes: args.sync_queued_bytes,
            sync_held_bytes_per_connection: args.sync_held_bytes_per_connection,
            sync_held_bytes_per_document: args.sync_held_bytes_per_document,
            sync_states_per_document: args.sync_states_per_document,
            ..Limits::default()
        },
        push: PushSettings {
            allowed_hosts: args.push_allowed_hosts,
            insecure_hosts: args.push_insecure_hosts,
            contact: args.push_contact,
            alerts_per_member: args.push_alerts_per_member,
            ..PushSettings::default()
        },
    };
    actix_web::rt::System::new().block_on(async move {
        // Inside the runtime, before anything starts.
        let shutdown = shutdown_signal();
        backchannel::run(settings, listener, shutdown).await
    })?;
    Ok(())
}

/// Listens for SIGINT and SIGTERM from the moment it is called, not from
/// its first poll: a signal that arrives while the server starts must still
/// stop it gracefully rather than kill it. Completes on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT received"),
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
            },
            (Ok(mut interrupt), Err(error)) => {
                tracing::error!(%error, "cannot listen for SIGTERM; stop with SIGINT");
                interrupt.recv().await;
            }
            (Err(error), Ok(mut terminate)) => {
                tracing::error!(%error, "cannot listen for SIGINT; stop with SIGTERM");
                terminate.recv().await;
            }
            (Err(error), Err(_)) => {
                tracing::error!(%error, "cannot listen for signals; stop the process with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}

fn add_user(email: String, name: String, role: Role, data: PathBuf) -> anyhow::Result<()> {
    let data = DataDir::open(&data)?;
    let password = read_password()?;
    let auth = Auth::new(
        std::sync::Arc::new(data.store.clone()),
        TokenKeys::from_secret(data.jwt_secret.bytes()),
        Limits::default(),
    );
    let user = auth.create_user(
        NewAccount {
            email,
            password,
            display_name: name,
        },
        role,
    )?;
    writeln!(std::io::stdout(), "{}", user.id)?;
    Ok(())
}

/// The first line of standard input, without its line ending.
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let _ = write!(std::io::stderr(), "Password (shown as typed): ");
        let _ = std::io::stderr().flush();
    }
    let mut input = String::new();
    stdin
        .lock()
        .take(64 * 1024)
        .read_line(&mut input)
        .context("cannot read the password from standard input")?;
    Ok(input.trim_end_matches(['\r', '\n']).to_string())
}
