//! What does summarizing a post cost after one more reply, as it grows?
//!
//! The engine summarizes a post after every durable change, for the index,
//! the inboxes, the weekly figures and push. Read whole, a summary reads
//! every reply's fields (microseconds each); the policy's memo reads only
//! what the new change touched. At each size this appends replies the way
//! the stock client does (a map with `id`, `author`, `created_at` and a
//! `body` text) and times both, and the append alone for scale. The last
//! columns are what the projector then does with the summary: it encodes
//! the new catalog entry as JSON, whole, on every change; it decodes the
//! previous one only when it is not among the entries it keeps in memory
//! (after a restart, or for a thread not seen for a while).
//!
//! `cargo run --release -p backchannel-tests --bin summary_bench -- --replies 10000`

use std::time::{Duration, Instant};

use anyhow::Context;
use automerge::transaction::Transactable;
use automerge::{Automerge, Change, ObjId, ObjType, ROOT};
use backchannel::community::{At, DocumentMemo, Summary, summarize};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Measures the cost of a post's summary after each reply, as the post grows")]
struct Options {
    /// The longest thread, in replies.
    #[arg(long, default_value_t = 10_000)]
    replies: usize,
    /// Measured replies at each size.
    #[arg(long, default_value_t = 20)]
    samples: usize,
}

fn new_post() -> anyhow::Result<(Automerge, ObjId)> {
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(ROOT, "type", "post")?;
    tx.put(ROOT, "schema", 1)?;
    tx.put(ROOT, "author", "ada")?;
    tx.put(ROOT, "status", "published")?;
    let title = tx.put_object(ROOT, "title", ObjType::Text)?;
    tx.splice_text(&title, 0, 0, "Where is the meetup?")?;
    tx.put(ROOT, "created_at", 1_000)?;
    let replies = tx.put_object(ROOT, "replies", ObjType::List)?;
    tx.commit();
    Ok((doc, replies))
}

fn reply(doc: &mut Automerge, replies: &ObjId, number: usize) -> anyhow::Result<Change> {
    let mut tx = doc.transaction();
    let item = tx.insert_object(replies, number, ObjType::Map)?;
    tx.put(&item, "id", format!("reply-{number}"))?;
    tx.put(&item, "author", "bob")?;
    tx.put(&item, "created_at", 2_000 + number as i64)?;
    let body = tx.put_object(&item, "body", ObjType::Text)?;
    tx.splice_text(&body, 0, 0, "It is in the library, second floor.")?;
    tx.commit();
    doc.get_last_local_change()
        .context("the reply made no change")
}

fn per_op(total: Duration, count: usize) -> f64 {
    total.as_secs_f64() * 1000.0 / count.max(1) as f64
}

#[allow(clippy::print_stdout)] // the figures are the output
fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let (mut doc, replies) = new_post()?;
    let mut memo = DocumentMemo::default();
    memo.summarize(&doc, &[]);
    let mut sizes: Vec<usize> = [100, 1_000, 3_000, 10_000]
        .into_iter()
        .filter(|size| *size < options.replies)
        .collect();
    sizes.push(options.replies);
    println!(
        "replies  append ms  whole reading ms  memo ms  whole/memo  catalog encode ms  decode ms"
    );
    let mut count = 0;
    for size in sizes {
        while count < size {
            let change = reply(&mut doc, &replies, count)?;
            memo.summarize(&doc, &[change]);
            count += 1;
        }
        let (mut append, mut whole, mut followed) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let (mut encode, mut decode) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..options.samples {
            let started = Instant::now();
            let change = reply(&mut doc, &replies, count)?;
            append += started.elapsed();
            count += 1;
            let started = Instant::now();
            let from_memo = memo.summarize(&doc, &[change]);
            followed += started.elapsed();
            let started = Instant::now();
            let read = summarize(At::now(&doc));
            whole += started.elapsed();
            anyhow::ensure!(
                from_memo == read,
                "the memo's summary differs at {count} replies"
            );
            let started = Instant::now();
            let stored = serde_json::to_vec(&from_memo)?;
            encode += started.elapsed();
            let started = Instant::now();
            let _previous: Option<Summary> = serde_json::from_slice(&stored)?;
            decode += started.elapsed();
        }
        let (append, whole, followed) = (
            per_op(append, options.samples),
            per_op(whole, options.samples),
            per_op(followed, options.samples),
        );
        let (encode, decode) = (
            per_op(encode, options.samples),
            per_op(decode, options.samples),
        );
        println!(
            "{size:>7}  {append:>9.3}  {whole:>16.3}  {followed:>7.3}  {:>10.0}  {encode:>17.3}  {decode:>9.3}",
            whole / followed
        );
    }
    Ok(())
}
