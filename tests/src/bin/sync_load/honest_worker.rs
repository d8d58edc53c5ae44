//! `sync_load honest-worker`: a share of the abuse bench's honest clients
//! (tests/node/bench/abuse-bench.mjs) as light Rust clients instead of stock
//! automerge-repo ones, so that 200 of them leave this 2-core machine's CPU to
//! the server. Same behaviour as bench/abuse/honest.mjs: each client has its
//! post and the common post open and appends a reply to its post about once a
//! second during a phase; a client the server disconnects connects again.
//!
//! The parent writes JSON lines on stdin (`{id, type, value, now}`) and reads
//! answers (`{reply, value}` or `{reply, error}`) on stdout. Times are the
//! parent's monotonic milliseconds: each request carries the parent's `now`,
//! from which the worker keeps the offset to its own clock.

use super::*;

#[derive(serde::Deserialize, Clone)]
struct Spec {
    i: usize,
    url: String,
    #[serde(rename = "userId")]
    user_id: String,
    #[serde(rename = "postUrl")]
    post_url: String,
    #[serde(rename = "commonUrl")]
    common_url: String,
}

#[derive(Default)]
struct Totals {
    sent: Mutex<Vec<(String, f64)>>,
    errors: AtomicU64,
    disconnects: AtomicU64,
    refused: AtomicU64,
}

/// The parent's monotonic clock, read through this process's.
#[derive(Clone, Copy)]
struct ParentClock {
    at: Instant,
    parent_ms: f64,
}

impl ParentClock {
    fn now(&self) -> f64 {
        self.parent_ms + ms(self.at.elapsed())
    }

    fn instant_of(&self, parent_ms: f64) -> Instant {
        let ahead = (parent_ms - self.now()).max(0.0);
        Instant::now() + Duration::from_secs_f64(ahead / 1000.0)
    }
}

type PhaseWindow = Option<(Instant, ParentClock)>;

pub(super) async fn run() -> Result<()> {
    let totals = Arc::new(Totals::default());
    let delays = Arc::new(Mutex::new(Vec::<f64>::new()));
    tokio::spawn(measure_scheduling_delay(delays.clone()));
    let (phase_tx, phase_rx) = watch::channel::<PhaseWindow>(None);
    let mut clock = ParentClock {
        at: Instant::now(),
        parent_ms: 0.0,
    };
    let mut clients = JoinSet::new();
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let request: Json =
            serde_json::from_str(&line).context("a request line from the parent")?;
        let id = request["id"].clone();
        if let Some(now) = request["now"].as_f64() {
            clock = ParentClock {
                at: Instant::now(),
                parent_ms: now,
            };
        }
        let value = &request["value"];
        let answer = match request["type"].as_str().unwrap_or("") {
            "connect" => connect(value, &totals, &phase_rx, &mut clients).await,
            "phase" => phase(value, clock, &totals, &phase_tx).await,
            "loopDelay" => {
                let mut sorted = std::mem::take(&mut *lock(&delays)?);
                sorted.sort_by(f64::total_cmp);
                Ok(json!({
                    "p99_ms": quantile(&sorted, 0.99).unwrap_or(0.0),
                    "max_ms": sorted.last().copied().unwrap_or(0.0),
                }))
            }
            "shutdown" => {
                clients.abort_all();
                reply(&id, Ok(json!(true)));
                return Ok(());
            }
            other => Err(anyhow!("no handler for {other}")),
        };
        reply(&id, answer);
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| anyhow!("a client task panicked"))
}

/// stdout is the answer channel to the parent.
#[allow(clippy::print_stdout)]
fn reply(id: &Json, answer: Result<Json>) {
    let line = match answer {
        Ok(value) => json!({ "reply": id, "value": value }),
        Err(error) => json!({ "reply": id, "error": format!("{error:#}") }),
    };
    println!("{line}");
}

/// Starts the clients of `value.specs`; answers with their number once every
/// one has both documents.
async fn connect(
    value: &Json,
    totals: &Arc<Totals>,
    phase_rx: &watch::Receiver<PhaseWindow>,
    clients: &mut JoinSet<()>,
) -> Result<Json> {
    let specs: Vec<Spec> =
        serde_json::from_value(value["specs"].clone()).context("connect specs")?;
    let count = specs.len();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<()>>(count.max(1));
    let handshakes = Arc::new(tokio::sync::Semaphore::new(10));
    for spec in specs {
        clients.spawn(honest_client(
            spec,
            totals.clone(),
            phase_rx.clone(),
            ready_tx.clone(),
            handshakes.clone(),
        ));
    }
    for _ in 0..count {
        ready_rx
            .recv()
            .await
            .unwrap_or_else(|| Err(anyhow!("a client ended before it was ready")))?;
    }
    Ok(json!(count))
}

/// Honest load until `value.endAt`: what was sent, when, and what went wrong.
async fn phase(
    value: &Json,
    clock: ParentClock,
    totals: &Totals,
    phase_tx: &watch::Sender<PhaseWindow>,
) -> Result<Json> {
    let end_at = value["endAt"].as_f64().context("phase endAt")?;
    let counters = [&totals.errors, &totals.disconnects, &totals.refused];
    let before = counters.map(|c| c.load(Ordering::Relaxed));
    lock(&totals.sent)?.clear();
    let end = clock.instant_of(end_at);
    phase_tx.send_replace(Some((end, clock)));
    tokio::time::sleep_until(end.into()).await;
    phase_tx.send_replace(None);
    let sent = std::mem::take(&mut *lock(&totals.sent)?);
    let [errors, disconnects, refused] =
        std::array::from_fn(|k| counters[k].load(Ordering::Relaxed) - before[k]);
    Ok(json!({
        "sent": sent.into_iter().map(|(id, t)| json!([id, t])).collect::<Vec<_>>(),
        "errors": errors,
        "disconnects": disconnects,
        "refused": refused,
    }))
}

/// How late a 10 ms timer fires: this process's counterpart of Node's
/// event-loop delay, a sign that the clients themselves are saturated.
async fn measure_scheduling_delay(delays: Arc<Mutex<Vec<f64>>>) {
    let period = Duration::from_millis(10);
    loop {
        let start = Instant::now();
        tokio::time::sleep(period).await;
        let late = ms(start.elapsed().saturating_sub(period));
        if let Ok(mut d) = delays.lock()
            && d.len() < 1_000_000
        {
            d.push(late);
        }
    }
}

async fn honest_client(
    spec: Spec,
    totals: Arc<Totals>,
    mut phase: watch::Receiver<PhaseWindow>,
    ready: tokio::sync::mpsc::Sender<Result<()>>,
    handshakes: Arc<tokio::sync::Semaphore>,
) {
    let (Ok(post), Ok(common)) = (
        DocumentId::parse_url_or_id(&spec.post_url),
        DocumentId::parse_url_or_id(&spec.common_url),
    ) else {
        let _ = ready
            .send(Err(anyhow!("client {}: unreadable document urls", spec.i)))
            .await;
        return;
    };
    let mut docs = Docs {
        own: vec![SyncedDoc::open(post)],
        common: (common != post).then(|| LightDoc::empty(common, true)),
    };
    let wire = Arc::new(WireStats::default());
    let mut first = Some(ready);
    loop {
        let opened = {
            let _permit = handshakes.acquire().await;
            open_all(&spec.url, wire.clone(), &mut docs).await
        };
        let mut conn = match opened {
            Ok(conn) => conn,
            Err(error) => {
                if let Some(ready) = first.take() {
                    let _ = ready
                        .send(Err(error.context(format!("client {}", spec.i))))
                        .await;
                    return;
                }
                totals.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Some(ready) = first.take() {
            let _ = ready.send(Ok(())).await;
        }
        if write_while_connected(&spec, &mut conn, &mut docs, &totals, &mut phase)
            .await
            .is_err()
        {
            totals.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        docs.own[0].state = sync::State::new();
        if let Some(light) = &mut docs.common {
            *light = LightDoc::empty(light.id, true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client's documents: its own post, which it writes to and so holds in
/// full, and the common post, which it only reads. That one is a
/// `LightDoc`: it answers the server as a peer that applied every change,
/// without applying them, so that 200 clients reading every reply of the
/// common post cost this machine little (the server's work is the same).
struct Docs {
    own: Vec<SyncedDoc>,
    common: Option<LightDoc>,
}

impl Docs {
    fn opened(&mut self) -> bool {
        self.own[0].replies().is_some() && self.common.as_ref().is_none_or(|c| !c.heads.is_empty())
    }
}

async fn on_message(conn: &mut Conn, docs: &mut Docs, message: Message) -> Result<()> {
    if let (Some(light), Message::Sync(m) | Message::Request(m)) = (&mut docs.common, &message)
        && m.document_id == light.id
    {
        let (_, answer) = light.receive_all(&[m.data.as_slice()])?;
        if let Some(answer) = answer {
            let message = Message::Sync(conn.doc_message(light.id, answer));
            conn.send(&message).await?;
        }
        return Ok(());
    }
    handle_message(conn, &mut docs.own, message)
        .await
        .map(|_| ())
}

/// Connects and syncs both documents until the own post has its replies list
/// and the common post its heads.
async fn open_all(url: &str, wire: Arc<WireStats>, docs: &mut Docs) -> Result<Conn> {
    let mut conn = Conn::connect(url, wire).await?;
    conn.push(&mut docs.own[0]).await?;
    if let Some(light) = &docs.common {
        let request = Message::Request(conn.doc_message(light.id, light.message()));
        conn.send(&request).await?;
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        while !docs.opened() {
            let message = conn
                .recv()
                .await?
                .context("the server closed while the documents were opening")?;
            on_message(&mut conn, docs, message).await?;
        }
        Ok::<(), anyhow::Error>(())
    })
    .await
    .context("opening the documents took over 60 s")??;
    Ok(conn)
}

/// Answers the server and, while a phase runs, appends a reply to the
/// client's post every 0.8–1.2 s (the first within a second). Returns when
/// the connection ends.
async fn write_while_connected(
    spec: &Spec,
    conn: &mut Conn,
    docs: &mut Docs,
    totals: &Totals,
    phase: &mut watch::Receiver<PhaseWindow>,
) -> Result<()> {
    let mut next_write: Option<Instant> = None;
    loop {
        let window = *phase.borrow_and_update();
        match (window, next_write) {
            (Some(_), None) => {
                next_write = Some(Instant::now() + Duration::from_secs_f64(rand_unit()));
            }
            (None, Some(_)) => next_write = None,
            _ => {}
        }
        let wake = next_write.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            message = conn.recv() => {
                let message = message?.context("the server closed the connection")?;
                on_message(conn, docs, message).await?;
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                let Some((end, clock)) = window else { continue };
                if Instant::now() >= end {
                    next_write = Some(end + Duration::from_secs(3600));
                    continue;
                }
                let id = format!("{:032x}", u128::from_le_bytes(random_bytes::<16>()?));
                lock(&totals.sent)?.push((id.clone(), clock.now()));
                if add_reply_as_stock(&mut docs.own[0], &id, &spec.user_id, "honest reply").is_err() {
                    totals.errors.fetch_add(1, Ordering::Relaxed);
                }
                conn.push(&mut docs.own[0]).await?;
                next_write = Some(Instant::now() + Duration::from_secs_f64(0.8 + 0.4 * rand_unit()));
            }
        }
    }
}

/// Appends `{id, author, created_at, body}` to `replies` as the stock client's
/// `doc.replies.push({...})` does: its strings are text objects.
fn add_reply_as_stock(doc: &mut SyncedDoc, id: &str, author: &str, body: &str) -> Result<()> {
    let replies = doc.replies().context("the document has no replies list")?;
    let at = doc.doc.length(&replies);
    let mut tx = doc.doc.transaction();
    let reply = tx.insert_object(&replies, at, ObjType::Map)?;
    for (key, value) in [("id", id), ("author", author), ("body", body)] {
        let text = tx.put_object(&reply, key, ObjType::Text)?;
        tx.splice_text(&text, 0, 0, value)?;
    }
    tx.put(&reply, "created_at", now_millis())?;
    tx.commit();
    Ok(())
}

fn rand_unit() -> f64 {
    random_bytes::<4>().map_or(0.5, |b| {
        f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
    })
}
