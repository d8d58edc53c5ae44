//! How fast does the push outbox drain, and what does fan-out cost?
//!
//! Runs the server's own push side (outbox on a temporary sled store, the
//! real sender with VAPID signing and aes128gcm encryption) against a local
//! push service on 127.0.0.1 that answers `201 Created` at once, so the
//! figures are the server's cost, not a network's. Two measurements:
//! - throughput: N notifications to N devices, queued at once, until the
//!   service has received them all;
//! - fan-out: one reply on a thread that S subscribers replied to: the cost
//!   of deciding who hears it and storing the S outbox records (per
//!   subscriber), then the time until all S are delivered.
//!
//! `cargo run --release -p backchannel-tests --bin push_bench -- --notifications 2000 --subscribers 1000`

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use backchannel::community::{ItemSummary, PostSummary, Summary};
use backchannel::config::PushSettings;
use backchannel::push::recipients::{self, Notice, Urgency};
use backchannel::push::{Push, sender};
use backchannel::store::{Batch, SledStore, Store};
use backchannel_sync::DocumentId;
use backchannel_tests::cpu_time;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;

#[derive(Parser)]
struct Options {
    /// Notifications in the throughput run (one device each).
    #[arg(long, default_value_t = 2_000)]
    notifications: usize,
    /// Subscribers of the thread in the fan-out run.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
}

/// A push service that accepts everything and counts.
fn start_sink(received: Arc<AtomicUsize>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let origin = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        let _ = actix_web::rt::System::new().block_on(async move {
            HttpServer::new(move || {
                let received = received.clone();
                App::new().default_service(web::to(move || {
                    received.fetch_add(1, Ordering::Relaxed);
                    async { HttpResponse::Created().finish() }
                }))
            })
            .workers(1)
            .listen(listener)?
            .run()
            .await
        });
    });
    Ok(origin)
}

fn random_key() -> anyhow::Result<p256::SecretKey> {
    loop {
        let mut bytes = [0_u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Ok(key) = p256::SecretKey::from_slice(&bytes) {
            return Ok(key);
        }
    }
}

/// Subscribes `users` devices (`user-<i>`) at the sink, as browsers would,
/// from many threads at once: each subscription is flushed before it is
/// acknowledged, and concurrent flushes share the disk's sync.
fn subscribe(push: &Arc<Push>, origin: &str, users: usize) -> anyhow::Result<()> {
    const THREADS: usize = 64;
    let auth = URL_SAFE_NO_PAD.encode([7_u8; 16]);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|first| {
                let auth = auth.clone();
                scope.spawn(move || -> anyhow::Result<()> {
                    for user in (first..users).step_by(THREADS) {
                        let p256dh =
                            URL_SAFE_NO_PAD.encode(random_key()?.public_key().to_sec1_bytes());
                        push.subscribe(
                            &format!("user-{user}"),
                            "bench-session",
                            &format!("{origin}/push/{user}"),
                            &p256dh,
                            &auth,
                        )?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a subscriber thread panicked"))?
        })
    })
}

async fn wait_for(received: &AtomicUsize, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while received.load(Ordering::Relaxed) < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sink did not receive {count} pushes"
        );
        actix_web::rt::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

fn item(id: usize, author: String) -> ItemSummary {
    ItemSummary {
        id: format!("r{id}"),
        author,
        created_at: id as i64,
        deleted: false,
        excerpt: "A reply worth hearing about".into(),
    }
}

#[allow(clippy::print_stdout)]
fn report(rows: &[(String, String)]) {
    println!("| figure | value |");
    println!("|---|---|");
    for (figure, value) in rows {
        println!("| {figure} | {value} |");
    }
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let folder = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(folder.path())?);
    let received = Arc::new(AtomicUsize::new(0));
    let origin = start_sink(received.clone())?;
    let settings = PushSettings {
        insecure_hosts: vec!["127.0.0.1".into()],
        ..PushSettings::default()
    };
    let (push, feed) = Push::new(
        store.clone(),
        &settings,
        "http://127.0.0.1:8080",
        Box::new(|_, _| false),
    );
    let vapid = URL_SAFE_NO_PAD.encode(random_key()?.to_bytes());
    let sender = actix_web::rt::spawn(sender::run(
        push.clone(),
        store.clone(),
        sender::SenderConfig::new(&settings, "http://127.0.0.1:8080", vapid),
        feed,
    ));
    let total_users = options.notifications.max(options.subscribers + 1);
    let subscribing = Instant::now();
    subscribe(&push, &origin, total_users).context("subscribing")?;
    let subscribing = subscribing.elapsed();
    let thread = DocumentId::from_bytes([1; 16]);
    let mut rows = vec![(
        format!("subscribe {total_users} devices (64 at once, each flushed)"),
        format!(
            "{:.2} ms per subscription",
            subscribing.as_secs_f64() * 1e3 / total_users as f64
        ),
    )];

    // Throughput: one notification per device, all queued at once.
    let notices: Vec<Notice> = (0..options.notifications)
        .map(|user| Notice {
            recipient: format!("user-{user}"),
            document: thread,
            urgency: Urgency::Normal,
            title: "A reply".into(),
            body: "Somebody answered your question.".into(),
            path: recipients::post_path(&thread),
            alert_from: None,
        })
        .collect();
    let started = Instant::now();
    let cpu = cpu_time();
    push.send_now(notices)?;
    wait_for(&received, options.notifications).await?;
    let elapsed = started.elapsed();
    let cpu = cpu_time() - cpu;
    rows.push((
        format!(
            "throughput, {} notifications to {} devices",
            options.notifications, options.notifications
        ),
        format!(
            "{:.0} notifications/s",
            options.notifications as f64 / elapsed.as_secs_f64()
        ),
    ));
    rows.push((
        "CPU per notification (encrypt, sign, send, settle; sink included)".into(),
        format!(
            "{:.0} µs",
            cpu.as_secs_f64() * 1e6 / options.notifications as f64
        ),
    ));

    // Fan-out: everyone replied to user-0's thread; one more reply arrives.
    let subscribers = options.subscribers;
    let mut replies: Vec<ItemSummary> = (1..=subscribers)
        .map(|user| item(user, format!("user-{user}")))
        .collect();
    let post = |replies: Vec<ItemSummary>| {
        Summary::Post(PostSummary {
            author: "user-0".into(),
            status: "published".into(),
            title: "Busy thread".into(),
            created_at: 0,
            anonymous: false,
            locked: false,
            replies,
        })
    };
    let old = post(replies.clone());
    replies.push(item(subscribers + 1, format!("user-{}", subscribers + 1)));
    let new = post(replies);
    let before = received.load(Ordering::Relaxed);
    let started = Instant::now();
    let notices = recipients::notices(thread, Some(&old), &new, &HashSet::new(), &mut |user| {
        user.to_string()
    });
    let decided = started.elapsed();
    let (batch, keys) = push.queue(Batch::new(), notices)?;
    store.apply(batch)?;
    store.flush()?;
    let stored = started.elapsed();
    push.wake(keys);
    wait_for(&received, before + subscribers).await?;
    let delivered = started.elapsed();
    rows.push((
        format!("fan-out to {subscribers} subscribers: who hears it, per subscriber"),
        format!("{:.1} µs", decided.as_secs_f64() * 1e6 / subscribers as f64),
    ));
    rows.push((
        format!("fan-out to {subscribers} subscribers: outbox records stored and flushed"),
        format!(
            "{:.1} ms ({:.1} µs per subscriber)",
            stored.as_secs_f64() * 1e3,
            stored.as_secs_f64() * 1e6 / subscribers as f64
        ),
    ));
    rows.push((
        format!("fan-out to {subscribers} subscribers: all delivered"),
        format!(
            "{:.0} ms ({:.0} notifications/s)",
            delivered.as_secs_f64() * 1e3,
            subscribers as f64 / delivered.as_secs_f64()
        ),
    ));
    // Delivered records leave the outbox once their answer is settled.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = store
            .scan_prefix(backchannel::push::OUTBOX.as_bytes())?
            .len();
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{left} records still in the outbox after delivery"
        );
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    report(&rows);
    push.stop();
    let _ = sender.await;
    Ok(())
}
