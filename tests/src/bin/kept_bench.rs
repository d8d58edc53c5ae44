//! Does keeping the community index cost more as the community grows?
//!
//! Runs the server's own sync hub and projector on a temporary sled store,
//! fills the community with published posts (through the same server edits
//! that promote uses, so every post goes through summaries, the catalog and
//! the index), and at each size measures how long one post's change takes
//! to show in the index, and the CPU it costs.
//!
//! `cargo run --release -p backchannel-tests --bin kept_bench -- --posts 10000`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use backchannel::auth::{Auth, NewAccount, Role, TokenKeys};
use backchannel::community::At;
use backchannel::config::{Limits, PushSettings};
use backchannel::hub::SyncHub;
use backchannel::kept::{self, KeptDocs};
use backchannel::push::Push;
use backchannel::store::{SledStore, Store};
use backchannel_sync::DocumentId;
use backchannel_tests::cpu_time;
use clap::Parser;
use futures_util::future::join_all;

#[derive(Parser)]
#[command(about = "Measures the cost of keeping the community index as it grows")]
struct Options {
    /// The largest community, in published posts.
    #[arg(long, default_value_t = 10_000)]
    posts: usize,
    /// Measured updates at each size.
    #[arg(long, default_value_t = 100)]
    updates: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn publish(hub: &SyncHub, author: &str, title: String) -> anyhow::Result<DocumentId> {
    let id = kept::random_document_id();
    let author_field = author.to_string();
    hub.edit_durably(
        id,
        author,
        Box::new(move |tx| {
            kept::put_text(tx, &ROOT, "type", "post")?;
            tx.put(ROOT, "schema", 1)?;
            kept::put_text(tx, &ROOT, "author", &author_field)?;
            tx.put(ROOT, "created_at", kept::now())?;
            kept::put_text(tx, &ROOT, "status", "published")?;
            kept::put_text(tx, &ROOT, "title", &title)?;
            kept::put_text(tx, &ROOT, "body", "benchmark")?;
            tx.put_object(ROOT, "replies", ObjType::List)?;
            Ok(())
        }),
    )
    .await
    .map_err(|error| anyhow!(error))?;
    Ok(id)
}

async fn index_title(hub: &SyncHub, index: DocumentId, post: DocumentId) -> Option<String> {
    hub.read(index, move |tx| {
        let at = At::now(tx);
        let posts = at.object(&ROOT, "posts", ObjType::Map)?;
        let entry = at.object(&posts, post.to_string().as_str(), ObjType::Map)?;
        at.text(&entry, "title")
    })
    .await
    .ok()
    .flatten()
}

async fn index_size(hub: &SyncHub, index: DocumentId) -> usize {
    hub.read(index, |tx| match tx.get(ROOT, "posts") {
        Ok(Some((_, posts))) => tx.length(&posts),
        _ => 0,
    })
    .await
    .unwrap_or(0)
}

/// (posts, fill seconds, p50, p95, CPU ms per update, wall ms per update)
type Row = (usize, f64, Duration, Duration, f64, f64);

/// The report is the benchmark's output: standard output, as a table.
#[allow(clippy::print_stdout)]
fn print_report(rows: &[Row]) {
    println!(
        "posts in the index | fill (s) | change → index p50 | p95 | CPU per update | wall per update"
    );
    for (size, fill, p50, p95, cpu, wall) in rows {
        println!(
            "{size:>18} | {fill:>8.1} | {:>15.2} ms | {:>6.2} ms | {cpu:>11.2} ms | {wall:>12.2} ms",
            p50.as_secs_f64() * 1000.0,
            p95.as_secs_f64() * 1000.0,
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        println!(
            "ratio {} posts / {} posts: p50 latency {:.2}×, CPU per update {:.2}×",
            last.0,
            first.0,
            last.2.as_secs_f64() / first.2.as_secs_f64(),
            last.4 / first.4.max(f64::EPSILON),
        );
    }
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let folder = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(folder.path())?);
    let auth = Arc::new(Auth::new(
        store.clone(),
        TokenKeys::from_secret(&[7; 64]),
        Limits::default(),
    ));
    let author = auth
        .create_user(
            NewAccount {
                email: "bench@example.org".into(),
                password: "benchmark password".into(),
                display_name: "Bench".into(),
            },
            Role::Member,
        )
        .context("creating the author")?;
    let (projector, feed) = std::sync::mpsc::channel();
    let hub = Arc::new(SyncHub::start(
        store.clone(),
        2,
        &Limits::default(),
        kept::summary_sink(projector.clone()),
    )?);
    // Nobody subscribes in this benchmark: the push side only looks.
    let (push, _push_feed) = Push::new(
        store.clone(),
        &PushSettings::default(),
        "http://127.0.0.1",
        Box::new(|_, _| false),
    );
    let kept = KeptDocs::start(store.clone(), hub.clone(), auth, push, projector, feed).await?;
    let index = kept.index_id()?;

    let mut sizes: Vec<usize> = [100, 1_000, 10_000, 100_000]
        .into_iter()
        .filter(|&n| n < options.posts)
        .collect();
    sizes.push(options.posts);
    let mut posts: Vec<DocumentId> = Vec::new();
    let mut rows = Vec::new();
    for size in sizes {
        let filling = Instant::now();
        while posts.len() < size {
            let batch = (size - posts.len()).min(256);
            let made = join_all(
                (0..batch).map(|n| publish(&hub, &author.id, format!("post {}", posts.len() + n))),
            )
            .await;
            for id in made {
                posts.push(id?);
            }
        }
        while index_size(&hub, index).await < size {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let fill_secs = filling.elapsed().as_secs_f64();

        let mut latencies = Vec::with_capacity(options.updates);
        let cpu_before = cpu_time();
        let wall_before = Instant::now();
        for update in 0..options.updates {
            let post = posts[(update * 7919) % posts.len()];
            let title = format!("renamed {size}/{update}");
            let expected = title.clone();
            let started = Instant::now();
            hub.edit_durably(
                post,
                &author.id,
                Box::new(move |tx| {
                    let id = tx.put_object(ROOT, "title", ObjType::Text)?;
                    tx.splice_text(&id, 0, 0, &title)
                }),
            )
            .await
            .map_err(|error| anyhow!(error))?;
            while index_title(&hub, index, post).await.as_deref() != Some(expected.as_str()) {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            latencies.push(started.elapsed());
        }
        let cpu = cpu_time().saturating_sub(cpu_before);
        let wall = wall_before.elapsed();
        latencies.sort();
        rows.push((
            size,
            fill_secs,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.95),
            cpu.as_secs_f64() * 1000.0 / options.updates as f64,
            wall.as_secs_f64() * 1000.0 / options.updates as f64,
        ));
    }

    print_report(&rows);
    kept.stop();
    hub.shutdown();
    Ok(())
}
