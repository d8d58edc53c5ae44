//! `sync_load`: a load generator for the automerge-repo WebSocket sync
//! protocol that measures the *server*, not the clients.
//!
//! The Node benchmark (`tests/node/bench/sync-bench.mjs`) drives stock
//! automerge-repo clients, and 50 of them in one Node process saturate a core
//! long before either server does. This one uses light clients instead: the
//! `automerge` crate's sync state machine (`automerge::sync::{State, Message,
//! SyncDoc}`) plus the workspace's own wire codec (`backchannel_sync::Message`)
//! over tokio-tungstenite, thousands of them on one multi-thread runtime.
//!
//! Two targets, same run, same machine:
//! - `reference`: the stock automerge-repo sync server,
//!   `node tests/node/lib/reference-server.mjs --data <dir>` (needs `npm ci`
//!   in tests/node);
//! - `backchannel`: `target/release/backchannel serve --bind 127.0.0.1:0
//!   --data <dir>` (or `--binary`), one registered user per client.
//!
//! Phases (each figure is printed per target, then backchannel / reference):
//! 1. `idle`: server RSS per idle connection that completed the handshake
//!    (Backchannel is restarted after sign-ups so Argon2's memory is not
//!    counted).
//! 2. `throughput`: N clients × M changes on D shared documents (every client
//!    has every document open), as fast as the protocol allows; changes/s
//!    until every client has every reply, and server CPU seconds per 1,000
//!    changes. Applying a change costs automerge 0.12 a pass over the
//!    document, and every client applies every change, so the load
//!    generator's CPU is printed next to the server's: server CPU per 1,000
//!    changes is the figure that does not depend on the clients.
//! 3. `latency`: C connected clients on one document, W writers changing it
//!    every interval; edit-to-other-client latency p50 / p99, from the send
//!    time (ns on this process's clock) written in each reply's `body`. The
//!    clients that only read are `LightDoc` observers (no automerge document)
//!    unless `--full-observers`.
//! 4. `open`: time for a fresh client to open a document of 10,000 changes.
//!
//! Clients handle the messages already waiting on their socket as one batch
//! (one apply and one answer per document, `--batch`; `--batch 1` answers each
//! message on its own).
//!
//! ```sh
//! cargo build --release -p backchannel-server --bin backchannel
//! cargo build --release -p backchannel-tests --bin sync_load
//! target/release/sync_load --out sync-load.json      # both targets, defaults
//! target/release/sync_load --help                    # every parameter
//! ```
//!
//! Every client is a socket on both sides: keep `ulimit -n` above twice the
//! largest client count (the program checks and says so).

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{
    Automerge, ChangeHash, ObjId, ObjType, PatchAction, PatchLog, ROOT, ReadDoc, ScalarValue, Value,
};
use backchannel_sync::{DocMessage, DocumentId, Join, Message, PeerId, PeerMetadata};
use clap::{Parser, ValueEnum};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value as Json, json};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as Frame;

// ---------------------------------------------------------------------------
// options

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Reference,
    Backchannel,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Reference => "reference",
            Kind::Backchannel => "backchannel",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Idle,
    Throughput,
    Latency,
    Open,
}

/// Load generator for the automerge-repo WebSocket sync protocol: measures the
/// stock automerge-repo sync server and Backchannel with the same light Rust
/// clients. Progress goes to stderr, tables to stdout.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "sync_load")]
struct Args {
    /// Servers to measure, in this order.
    #[arg(long, value_delimiter = ',', default_value = "reference,backchannel")]
    targets: Vec<Kind>,
    /// Phases to run, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "idle,throughput,latency,open"
    )]
    phases: Vec<Phase>,
    /// Backchannel binary (default: `target/release/backchannel` in this repository).
    #[arg(long, env = "BACKCHANNEL_BIN")]
    binary: Option<PathBuf>,
    /// Repository root (holds tests/node) [default: the one this was built from].
    #[arg(long)]
    repo_root: Option<PathBuf>,
    /// Node.js executable for the reference server.
    #[arg(long, default_value = "node")]
    node: String,

    /// Throughput phase: clients. (200 x 50 changes on 20 documents is two
    /// million deliveries: the reference server needs far more than the
    /// default run's few minutes for it.)
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Throughput phase: changes per client.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Throughput phase: shared documents (every client has all of them open).
    #[arg(long, default_value_t = 10)]
    docs: usize,

    /// Latency phase: connected clients, all with the one shared document open.
    #[arg(long, default_value_t = 1000)]
    latency_clients: usize,
    /// Latency phase: how many of them write.
    #[arg(long, default_value_t = 5)]
    latency_writers: usize,
    /// Latency phase: each writer makes one change every this many ms.
    #[arg(long, default_value_t = 100)]
    latency_interval_ms: u64,
    /// Latency phase: how long the writers write, in seconds.
    #[arg(long, default_value_t = 10.0)]
    latency_secs: f64,

    /// Latency phase: the clients that only read hold a full automerge
    /// document and apply every change (by default they track change hashes
    /// only, see `LightDoc`, so that the figure measures the server).
    #[arg(long)]
    full_observers: bool,
    /// Latency phase: light observers announce the V2 sync message format,
    /// as automerge 0.12 and the stock JS client do (by default they announce
    /// nothing, so the server sends them changes, never whole documents).
    #[arg(long)]
    light_v2: bool,

    /// Memory phase: idle connections.
    #[arg(long, default_value_t = 1000)]
    idle: usize,

    /// Open phase: changes (separate transactions) in the big document.
    #[arg(long, default_value_t = 10_000)]
    big_changes: usize,
    /// Open phase: fresh clients that each open it (the median is reported).
    #[arg(long, default_value_t = 3)]
    open_repeats: usize,

    /// A client handles at most this many messages that are already waiting
    /// as one batch: one automerge apply and one answer per document. 1 makes
    /// every client apply and answer each message on its own.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Sign-ups in flight at once (Backchannel hashes a password for each).
    #[arg(long, default_value_t = 4)]
    register_concurrency: usize,
    /// WebSocket connects + handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Give up on a phase's wait after this many seconds.
    #[arg(long, default_value_t = 120)]
    phase_timeout: u64,
    /// Worker threads of the client runtime [default: one per core].
    #[arg(long)]
    threads: Option<usize>,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the servers' data folders (their paths are in the JSON).
    #[arg(long)]
    keep_data: bool,
}

impl Args {
    fn repo_root(&self) -> PathBuf {
        self.repo_root.clone().unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .to_path_buf()
        })
    }

    fn binary(&self) -> PathBuf {
        self.binary
            .clone()
            .unwrap_or_else(|| self.repo_root().join("target/release/backchannel"))
    }

    fn phase_timeout(&self) -> Duration {
        Duration::from_secs(self.phase_timeout)
    }

    fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    /// How many distinct users (client indices) the phases need.
    fn users_needed(&self) -> usize {
        let mut n = 0;
        if self.runs(Phase::Idle) {
            n = n.max(self.idle);
        }
        if self.runs(Phase::Throughput) {
            n = n.max(self.clients);
        }
        if self.runs(Phase::Latency) {
            n = n.max(self.latency_clients);
        }
        if self.runs(Phase::Open) {
            n = n.max(3);
        }
        n.max(1)
    }

    /// Sockets open at once on the client side.
    fn peak_connections(&self) -> usize {
        let mut n = 4;
        if self.runs(Phase::Idle) {
            n = n.max(self.idle + 1);
        }
        if self.runs(Phase::Throughput) {
            n = n.max(self.clients);
        }
        if self.runs(Phase::Latency) {
            n = n.max(self.latency_clients);
        }
        n
    }
}

// ---------------------------------------------------------------------------
// clock, progress, small helpers

static CLOCK: OnceLock<Instant> = OnceLock::new();
static RUN_ID: OnceLock<String> = OnceLock::new();
static NEXT_PEER: AtomicU64 = AtomicU64::new(0);

/// The one clock every client shares (they all run in this process).
fn clock() -> Instant {
    *CLOCK.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    clock().elapsed().as_nanos() as u64
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|error| anyhow!("getrandom failed: {error}"))?;
    Ok(bytes)
}

fn run_id() -> &'static str {
    RUN_ID.get_or_init(|| {
        let bytes = random_bytes::<4>().unwrap_or([0, 1, 2, 3]);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("[{:>7.1}s] {}", clock().elapsed().as_secs_f64(), format!($($arg)*))
    };
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0, 1)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Linear-interpolated quantile of sorted samples.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = (sorted.len() - 1) as f64 * q;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

fn median(xs: &[f64]) -> Option<f64> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

fn same_heads(a: &[ChangeHash], b: &[ChangeHash]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

/// The URL without its query (which holds the access token).
fn redact(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// /proc readers

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// CPU seconds of each thread of a process, summed by thread name.
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .map(|n| n.trim().to_string())
            .unwrap_or_default();
        if let Some(cpu) = cpu_seconds(&format!("{pid}/task/{tid}")) {
            *out.entry(name).or_insert(0.0) += cpu;
        }
    }
    out
}

/// The CPU each thread name used between two `thread_cpu` readings.
fn thread_cpu_delta(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> Json {
    let mut out = serde_json::Map::new();
    for (name, cpu) in after {
        let used = cpu - before.get(name).copied().unwrap_or(0.0);
        if used >= 0.01 {
            out.insert(name.clone(), json!(round(used, 2)));
        }
    }
    Json::Object(out)
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Median of 5 RSS samples 100 ms apart.
async fn rss_sample(pid: u32) -> Option<f64> {
    let mut xs = Vec::new();
    for k in 0..5 {
        if let Some(rss) = rss_bytes(pid) {
            xs.push(rss as f64);
        }
        if k < 4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    median(&xs)
}

fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

// ---------------------------------------------------------------------------
// server processes

#[derive(Default)]
struct ServerLog {
    tail: VecDeque<String>,
    lines: u64,
    warnings: u64,
    errors: u64,
    /// Lines at INFO that report a connection closed with an error.
    closed_with_error: u64,
    notable: Vec<String>,
}

impl ServerLog {
    fn add(&mut self, raw: &str, every_line_notable: bool) {
        let line = strip_ansi(raw);
        self.lines += 1;
        let warn = line.contains(" WARN ") || line.starts_with("WARN");
        let error = line.contains(" ERROR ") || line.starts_with("ERROR");
        let closed = line.contains("closed with an error");
        self.warnings += u64::from(warn);
        self.errors += u64::from(error);
        self.closed_with_error += u64::from(closed);
        if (warn || error || closed || every_line_notable) && self.notable.len() < 40 {
            self.notable.push(line.clone());
        }
        self.tail.push_back(line);
        if self.tail.len() > 200 {
            self.tail.pop_front();
        }
    }

    fn summary(&self) -> Json {
        json!({
            "lines": self.lines,
            "warnings": self.warnings,
            "errors": self.errors,
            "connections_closed_with_error": self.closed_with_error,
            "notable": self.notable,
            "tail": self.tail.iter().rev().take(40).rev().collect::<Vec<_>>(),
        })
    }
}

struct ServerProc {
    child: Child,
    pid: u32,
    log: Arc<Mutex<ServerLog>>,
}

/// Reads lines from a child's pipe on a thread, logging each; the first line
/// `detect` accepts is sent on `found`.
fn spawn_line_reader(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<ServerLog>>,
    every_line_notable: bool,
    detect: fn(&str) -> Option<String>,
    found: std::sync::mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(value) = detect(&line) {
                sent = found.send(value).is_ok();
            }
            if let Ok(mut log) = log.lock() {
                log.add(&line, every_line_notable);
            }
        }
    });
}

fn detect_nothing(_: &str) -> Option<String> {
    None
}

/// `listening on http://<addr>` in a Backchannel log line.
fn detect_listening(line: &str) -> Option<String> {
    let line = strip_ansi(line);
    let rest = line.split("listening on http://").nth(1)?;
    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
    (!addr.is_empty()).then_some(addr)
}

/// `{"port":N,"pid":N}` from the reference server.
fn detect_port(line: &str) -> Option<String> {
    let value: Json = serde_json::from_str(line.trim()).ok()?;
    value.get("port")?.as_u64().map(|p| p.to_string())
}

impl ServerProc {
    fn spawn(
        mut command: Command,
        what: &str,
        address_on_stdout: bool,
        detect: fn(&str) -> Option<String>,
    ) -> Result<(Self, String)> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {what}: {command:?}"))?;
        let pid = child.id();
        let log = Arc::new(Mutex::new(ServerLog::default()));
        let (found_tx, found_rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().context("child stdout")?;
        let stderr = child.stderr.take().context("child stderr")?;
        let every_stderr_line = address_on_stdout; // node prints nothing on stderr unless something is wrong
        if address_on_stdout {
            spawn_line_reader(stdout, log.clone(), false, detect, found_tx.clone());
            spawn_line_reader(
                stderr,
                log.clone(),
                every_stderr_line,
                detect_nothing,
                found_tx,
            );
        } else {
            spawn_line_reader(stderr, log.clone(), false, detect, found_tx.clone());
            spawn_line_reader(stdout, log.clone(), false, detect_nothing, found_tx);
        }
        let mut server = Self { child, pid, log };
        match found_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(address) => Ok((server, address)),
            Err(_) => {
                let status = server.stop();
                let tail = server.log_tail(30);
                bail!(
                    "{what} did not report its address within 30 s ({status}); its output:\n{tail}"
                )
            }
        }
    }

    fn log_tail(&self, n: usize) -> String {
        self.log
            .lock()
            .map(|log| {
                let skip = log.tail.len().saturating_sub(n);
                log.tail
                    .iter()
                    .skip(skip)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    fn log_summary(&self) -> Json {
        self.log
            .lock()
            .map(|log| log.summary())
            .unwrap_or(Json::Null)
    }

    fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(&self.pid.to_string())
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after 10 s. Returns how it ended.
    fn stop(&mut self) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("had already exited: {status}");
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return format!("stopped by SIGTERM: {status}"),
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        "did not stop within 10 s of SIGTERM; killed".into()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// targets

struct User {
    id: String,
    token: String,
}

struct Target {
    kind: Kind,
    server: ServerProc,
    addr: String,
    data_dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    users: Vec<User>,
    wire: Arc<WireStats>,
    restarts: u32,
}

impl Target {
    fn start(kind: Kind, args: &Args) -> Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix(&format!("sync-load-{}-", kind.name()))
            .tempdir()
            .context("creating a data folder")?;
        let data_dir = temp.path().join("data");
        std::fs::create_dir_all(&data_dir).context("creating the data folder")?;
        let (server, addr) = Self::spawn(kind, args, &data_dir)?;
        Ok(Self {
            kind,
            server,
            addr,
            data_dir,
            temp: Some(temp),
            users: Vec::new(),
            wire: Arc::new(WireStats::default()),
            restarts: 0,
        })
    }

    fn spawn(kind: Kind, args: &Args, data_dir: &Path) -> Result<(ServerProc, String)> {
        match kind {
            Kind::Reference => {
                let node_dir = args.repo_root().join("tests/node");
                let script = node_dir.join("lib/reference-server.mjs");
                if !node_dir.join("node_modules").exists() {
                    bail!(
                        "{} has no node_modules: run `npm ci` there first",
                        node_dir.display()
                    );
                }
                let mut command = Command::new(&args.node);
                command
                    .arg(&script)
                    .arg("--data")
                    .arg(data_dir)
                    .current_dir(&node_dir);
                let (server, port) =
                    ServerProc::spawn(command, "the reference server", true, detect_port)?;
                Ok((server, format!("127.0.0.1:{port}")))
            }
            Kind::Backchannel => {
                let binary = args.binary();
                if !binary.exists() {
                    bail!(
                        "no Backchannel binary at {}: build it with `cargo build --release -p backchannel-server --bin backchannel` or pass --binary",
                        binary.display()
                    );
                }
                let mut command = Command::new(&binary);
                command
                    .args(["serve", "--bind", "127.0.0.1:0", "--data"])
                    .arg(data_dir)
                    .current_dir(args.repo_root())
                    .env("RUST_LOG", "warn,backchannel=info")
                    .env("NO_COLOR", "1")
                    // Every simulated user signs up from 127.0.0.1.
                    .env("BACKCHANNEL_SIGNUPS_PER_ADDRESS", "0")
                    .env("BACKCHANNEL_PASSWORD_HASH_QUEUE", "100000")
                    .env("BACKCHANNEL_SYNC_CONNECTIONS_PER_ADDRESS", "0");
                ServerProc::spawn(command, "backchannel", false, detect_listening)
            }
        }
    }

    /// Waits until a client completes the handshake. The reference server
    /// prints its port before its Repo has attached the WebSocket adapter: a
    /// socket that arrives in between is never answered (and is terminated
    /// by the adapter's first keep-alive round, 5 s later).
    async fn wait_ready(&self) -> Result<Duration> {
        let t0 = Instant::now();
        let mut last_error = None;
        while t0.elapsed() < Duration::from_secs(30) {
            match Conn::connect_within(
                &self.ws_url(0),
                self.wire.clone(),
                Duration::from_millis(500),
            )
            .await
            {
                Ok(conn) => {
                    let waited = t0.elapsed();
                    conn.close().await;
                    return Ok(waited);
                }
                Err(error) => last_error = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no handshake")))
            .context("the server did not complete a handshake within 30 s")
    }

    /// Stops and starts the server on the same data folder (Backchannel:
    /// accounts, sessions and the token secret survive).
    fn restart(&mut self, args: &Args) -> Result<()> {
        let status = self.server.stop();
        progress!(
            "{}: restarted the server (old one {status})",
            self.kind.name()
        );
        let (server, addr) = Self::spawn(self.kind, args, &self.data_dir)?;
        self.server = server;
        self.addr = addr;
        self.restarts += 1;
        Ok(())
    }

    fn ws_url(&self, i: usize) -> String {
        match self.kind {
            Kind::Reference => format!("ws://{}", self.addr),
            Kind::Backchannel => {
                let token = self
                    .users
                    .get(i % self.users.len().max(1))
                    .map_or("", |u| u.token.as_str());
                format!("ws://{}/sync?token={token}", self.addr)
            }
        }
    }

    fn user_id(&self, i: usize) -> String {
        match self.kind {
            Kind::Reference => format!("load-user-{i}"),
            Kind::Backchannel => self
                .users
                .get(i % self.users.len().max(1))
                .map_or_else(|| format!("load-user-{i}"), |u| u.id.clone()),
        }
    }

    /// Registers users until there are `n` (Backchannel only).
    async fn register_users(&mut self, n: usize, concurrency: usize) -> Result<()> {
        if self.kind != Kind::Backchannel || self.users.len() >= n {
            return Ok(());
        }
        let client = reqwest::Client::new();
        let url = format!("http://{}/api/auth/register", self.addr);
        let from = self.users.len();
        let mut registered: Vec<(usize, User)> = futures_util::stream::iter(from..n)
            .map(|i| {
                let client = client.clone();
                let url = url.clone();
                async move {
                    let email = format!("load-{}-{i}@example.org", run_id());
                    let response = client
                        .post(&url)
                        .json(&json!({
                            "email": email,
                            "password": "load password 1",
                            "display_name": format!("Load {i}"),
                        }))
                        .send()
                        .await
                        .with_context(|| format!("POST {url}"))?;
                    let status = response.status();
                    let body = response
                        .text()
                        .await
                        .context("reading the sign-up answer")?;
                    if !status.is_success() {
                        bail!("sign-up of {email} failed: {status}: {body}");
                    }
                    let body: Json = serde_json::from_str(&body)
                        .with_context(|| format!("sign-up answer is not JSON: {body}"))?;
                    let id = body["user"]["id"]
                        .as_str()
                        .context("sign-up answer without user.id")?
                        .to_string();
                    let token = body["access_token"]
                        .as_str()
                        .context("sign-up answer without access_token")?
                        .to_string();
                    Ok((i, User { id, token }))
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<Result<(usize, User)>>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        registered.sort_by_key(|(i, _)| *i);
        self.users.extend(registered.into_iter().map(|(_, u)| u));
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.server.pid
    }
}

// ---------------------------------------------------------------------------
// the wire client

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Counters over every connection of one target.
#[derive(Default)]
struct WireStats {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    error_messages: AtomicU64,
    doc_unavailable: AtomicU64,
    /// Connections that ended while the phase still needed them.
    unexpected_closes: AtomicU64,
    error_texts: Mutex<Vec<String>>,
}

impl WireStats {
    fn note_error(&self, text: String) {
        self.error_messages.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut texts) = self.error_texts.lock()
            && texts.len() < 20
        {
            texts.push(text);
        }
    }

    fn snapshot(&self) -> Json {
        json!({
            "frames_sent": self.frames_sent.load(Ordering::Relaxed),
            "bytes_sent": self.bytes_sent.load(Ordering::Relaxed),
            "frames_received": self.frames_received.load(Ordering::Relaxed),
            "bytes_received": self.bytes_received.load(Ordering::Relaxed),
            "error_messages": self.error_messages.load(Ordering::Relaxed),
            "doc_unavailable": self.doc_unavailable.load(Ordering::Relaxed),
            "unexpected_closes": self.unexpected_closes.load(Ordering::Relaxed),
            "error_texts": self.error_texts.lock().map(|t| t.clone()).unwrap_or_default(),
        })
    }
}

enum Incoming {
    Message(Message),
    /// A ping or pong.
    Skip,
    /// No frame is waiting.
    Nothing,
    Closed,
}

/// One WebSocket connection that completed the `join` / `peer` handshake.
struct Conn {
    ws: Ws,
    me: PeerId,
    server: PeerId,
    wire: Arc<WireStats>,
}

impl Conn {
    async fn connect(url: &str, wire: Arc<WireStats>) -> Result<Conn> {
        Self::connect_within(url, wire, Duration::from_secs(30)).await
    }

    /// Connects and completes the handshake, giving the server `patience`
    /// to answer `join`.
    async fn connect_within(url: &str, wire: Arc<WireStats>, patience: Duration) -> Result<Conn> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .with_context(|| format!("WebSocket connect to {}", redact(url)))?;
        let me = PeerId::new(format!(
            "load-{}-{}",
            run_id(),
            NEXT_PEER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut conn = Conn {
            ws,
            me,
            server: PeerId::new(""),
            wire,
        };
        conn.send(&Message::Join(Join {
            sender_id: conn.me.clone(),
            peer_metadata: Some(PeerMetadata {
                storage_id: None,
                is_ephemeral: Some(true),
            }),
            supported_protocol_versions: Some(vec!["1".into()]),
        }))
        .await?;
        let answer = tokio::time::timeout(patience, async {
            loop {
                match conn.recv().await? {
                    Some(Message::Peer(peer)) => return Ok(peer.sender_id),
                    Some(Message::Error(error)) => {
                        bail!("the server refused the join: {}", error.message)
                    }
                    Some(_) => continue,
                    None => bail!("the server closed the connection during the handshake"),
                }
            }
        })
        .await
        .with_context(|| format!("no `peer` answer within {} ms", patience.as_millis()))??;
        conn.server = answer;
        Ok(conn)
    }

    async fn send(&mut self, message: &Message) -> Result<()> {
        let bytes = message.encode();
        self.wire.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.wire
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.ws
            .send(Frame::Binary(bytes.into()))
            .await
            .context("WebSocket write")
    }

    /// The next protocol message; `None` once the server closed. Cancel-safe:
    /// the only await is the stream's `next()`.
    async fn recv(&mut self) -> Result<Option<Message>> {
        loop {
            let frame = self.ws.next().await;
            match self.on_frame(frame)? {
                Incoming::Message(message) => return Ok(Some(message)),
                Incoming::Closed => return Ok(None),
                Incoming::Skip | Incoming::Nothing => continue,
            }
        }
    }

    /// A message that has already arrived, without waiting for one.
    ///
    /// Polling with a no-op waker replaces the task's read waker for a moment;
    /// callers always go back to `recv` before they sleep, which registers the
    /// real one again.
    fn ready_message(&mut self) -> Result<Incoming> {
        loop {
            let Some(frame) = self.ws.next().now_or_never() else {
                return Ok(Incoming::Nothing);
            };
            match self.on_frame(frame)? {
                Incoming::Skip => continue,
                other => return Ok(other),
            }
        }
    }

    fn on_frame(
        &mut self,
        frame: Option<Result<Frame, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<Incoming> {
        let Some(frame) = frame else {
            return Ok(Incoming::Closed);
        };
        match frame.context("WebSocket read")? {
            Frame::Binary(bytes) => {
                self.wire.frames_received.fetch_add(1, Ordering::Relaxed);
                self.wire
                    .bytes_received
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                let message = Message::decode(&bytes)
                    .map_err(|error| anyhow!("undecodable message from the server: {error}"))?;
                match &message {
                    Message::Error(error) => self.wire.note_error(error.message.clone()),
                    Message::DocUnavailable(_) => {
                        self.wire.doc_unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                Ok(Incoming::Message(message))
            }
            Frame::Close(_) => Ok(Incoming::Closed),
            Frame::Text(_) => bail!("the server sent a text frame"),
            _ => Ok(Incoming::Skip), // ping / pong (tungstenite answers pings itself)
        }
    }

    /// The closing handshake: our Close, then the server's.
    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.ws.close(None).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    fn doc_message(&self, document_id: DocumentId, data: Vec<u8>) -> DocMessage {
        DocMessage {
            sender_id: self.me.clone(),
            target_id: self.server.clone(),
            document_id,
            data,
        }
    }

    /// Sends this document's next sync message, if automerge has one.
    async fn push(&mut self, doc: &mut SyncedDoc) -> Result<()> {
        if let Some(data) = doc.next_message() {
            let message = self.doc_message(doc.id, data);
            let message = if doc.doc.get_heads().is_empty() {
                Message::Request(message)
            } else {
                Message::Sync(message)
            };
            self.send(&message).await?;
        }
        Ok(())
    }
}

/// Connects clients `indices` with at most `concurrency` handshakes in flight;
/// keeps the order.
async fn connect_many(
    target: &Target,
    indices: impl Iterator<Item = usize>,
    concurrency: usize,
) -> Result<Vec<Conn>> {
    let jobs: Vec<(usize, String)> = indices.map(|i| (i, target.ws_url(i))).collect();
    let wire = target.wire.clone();
    let mut conns: Vec<(usize, Conn)> = futures_util::stream::iter(jobs.into_iter().enumerate())
        .map(|(k, (i, url))| {
            let wire = wire.clone();
            async move {
                Conn::connect(&url, wire)
                    .await
                    .with_context(|| format!("client {i}"))
                    .map(|c| (k, c))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<Result<(usize, Conn)>>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    conns.sort_by_key(|(k, _)| *k);
    Ok(conns.into_iter().map(|(_, c)| c).collect())
}

// ---------------------------------------------------------------------------
// documents

/// One document as one client holds it, with its sync state towards the server.
struct SyncedDoc {
    id: DocumentId,
    doc: Automerge,
    state: sync::State,
    replies: Option<ObjId>,
}

impl SyncedDoc {
    /// A new post: `{type:"post", schema:1, author, created_at,
    /// status:"published", title, body, replies:[]}`, in one change.
    fn create(author: &str, title: &str) -> Result<Self> {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "type", "post")?;
        tx.put(ROOT, "schema", 1_i64)?;
        tx.put(ROOT, "author", author)?;
        tx.put(ROOT, "created_at", now_millis())?;
        tx.put(ROOT, "status", "published")?;
        tx.put(ROOT, "title", title)?;
        tx.put(ROOT, "body", "A post written by the sync load generator.")?;
        let replies = tx.put_object(ROOT, "replies", ObjType::List)?;
        tx.commit();
        Ok(Self {
            id: DocumentId::from_bytes(random_bytes::<16>()?),
            doc,
            state: sync::State::new(),
            replies: Some(replies),
        })
    }

    /// An empty local copy of a document to `request` from the server.
    fn open(id: DocumentId) -> Self {
        Self {
            id,
            doc: Automerge::new(),
            state: sync::State::new(),
            replies: None,
        }
    }

    fn replies(&mut self) -> Option<ObjId> {
        if self.replies.is_none()
            && let Ok(Some((Value::Object(ObjType::List), obj))) = self.doc.get(ROOT, "replies")
        {
            self.replies = Some(obj);
        }
        self.replies.clone()
    }

    fn reply_count(&mut self) -> usize {
        match self.replies() {
            Some(replies) => self.doc.length(&replies),
            None => 0,
        }
    }

    /// Appends `{id, author, created_at, body}` to `replies`, one transaction.
    fn add_reply(&mut self, id: &str, author: &str, body: &str) -> Result<()> {
        let replies = self.replies().context("the document has no replies list")?;
        let at = self.doc.length(&replies);
        let mut tx = self.doc.transaction();
        let reply = tx.insert_object(&replies, at, ObjType::Map)?;
        tx.put(&reply, "id", id)?;
        tx.put(&reply, "author", author)?;
        tx.put(&reply, "created_at", now_millis())?;
        tx.put(&reply, "body", body)?;
        tx.commit();
        Ok(())
    }

    fn next_message(&mut self) -> Option<Vec<u8>> {
        self.doc
            .generate_sync_message(&mut self.state)
            .map(|m| m.encode())
    }

    fn receive(&mut self, data: &[u8]) -> Result<()> {
        self.receive_all(&[data], false).map(|_| ())
    }

    /// Applies several sync messages from the server as one: every message's
    /// changes, and the last one's heads, have and need (what applying them
    /// one by one would leave in the sync state, at the cost of one pass over
    /// the document instead of one per message). With `want_replies`, returns
    /// `(id, body)` of every reply they inserted.
    fn receive_all(
        &mut self,
        datas: &[&[u8]],
        want_replies: bool,
    ) -> Result<Vec<(String, String)>> {
        let mut messages = datas
            .iter()
            .map(|data| sync::Message::decode(data))
            .collect::<Result<Vec<_>, _>>()
            .context("decoding an automerge sync message")?;
        let Some(mut message) = messages.pop() else {
            return Ok(Vec::new());
        };
        if !messages.is_empty() {
            let chunks: Vec<Vec<u8>> = messages
                .iter()
                .chain(std::iter::once(&message))
                .flat_map(|m| m.changes.iter().map(<[u8]>::to_vec))
                .collect();
            message.changes = sync::ChunkList::from(chunks);
        }
        if !want_replies {
            self.doc
                .receive_sync_message(&mut self.state, message)
                .context("applying an automerge sync message")?;
            return Ok(Vec::new());
        }
        let mut log = PatchLog::active();
        self.doc
            .receive_sync_message_log_patches(&mut self.state, message, &mut log)
            .context("applying an automerge sync message")?;
        let patches = self.doc.make_patches(&mut log);
        let replies = self.replies();
        let mut found = Vec::new();
        for patch in patches {
            if Some(&patch.obj) != replies.as_ref() {
                continue;
            }
            if let PatchAction::Insert { values, .. } = patch.action {
                for (value, obj, _) in values.iter() {
                    if !value.is_object() {
                        continue;
                    }
                    let text = |key: &str| {
                        self.doc
                            .get(obj, key)
                            .ok()
                            .flatten()
                            .and_then(|(v, _)| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    };
                    found.push((text("id"), text("body")));
                }
            }
        }
        Ok(found)
    }

    fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// The server told us it has our heads.
    fn server_has_ours(&self) -> bool {
        self.state
            .their_heads
            .as_deref()
            .is_some_and(|theirs| same_heads(theirs, &self.doc.get_heads()))
    }
}

/// Handles one incoming message for `docs` the plain way: apply, answer.
/// Returns the index of the document it touched.
async fn handle_message(
    conn: &mut Conn,
    docs: &mut [SyncedDoc],
    message: Message,
) -> Result<Option<usize>> {
    match message {
        Message::Sync(m) | Message::Request(m) => {
            let Some(k) = docs.iter().position(|d| d.id == m.document_id) else {
                return Ok(None);
            };
            docs[k].receive(&m.data)?;
            conn.push(&mut docs[k]).await?;
            Ok(Some(k))
        }
        Message::DocUnavailable(m) => {
            // The server does not have it (yet): ask again shortly.
            if let Some(k) = docs.iter().position(|d| d.id == m.document_id) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                docs[k].state = sync::State::new();
                conn.push(&mut docs[k]).await?;
            }
            Ok(None)
        }
        Message::Error(e) => bail!("the server sent an error: {}", e.message),
        _ => Ok(None),
    }
}

/// What one batch of incoming messages did.
struct Batch {
    /// Documents whose state changed.
    touched: Vec<usize>,
    /// `(id, body)` of the replies the batch inserted (if asked for).
    replies: Vec<(String, String)>,
    /// The server closed the connection after these messages.
    closed: bool,
}

/// Handles `first` and every message already waiting behind it (at most
/// `limit` in all): the sync messages for one document are applied together
/// and answered once, so a client that fell behind catches up in one pass
/// over the document instead of one per message. `limit` 1 answers every
/// message on its own.
async fn handle_batch(
    conn: &mut Conn,
    docs: &mut [SyncedDoc],
    first: Message,
    limit: usize,
    want_replies: bool,
) -> Result<Batch> {
    let mut per_doc: Vec<Vec<Vec<u8>>> = vec![Vec::new(); docs.len()];
    let mut others = Vec::new();
    let mut closed = false;
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(message) = next.take() {
        taken += 1;
        match message {
            Message::Sync(m) | Message::Request(m) => {
                if let Some(k) = docs.iter().position(|d| d.id == m.document_id) {
                    per_doc[k].push(m.data);
                }
            }
            other => others.push(other),
        }
        if taken < limit {
            match conn.ready_message()? {
                Incoming::Message(message) => next = Some(message),
                Incoming::Closed => closed = true,
                Incoming::Skip | Incoming::Nothing => {}
            }
        }
    }
    let mut batch = Batch {
        touched: Vec::new(),
        replies: Vec::new(),
        closed,
    };
    for (k, datas) in per_doc.iter().enumerate() {
        if datas.is_empty() {
            continue;
        }
        let datas: Vec<&[u8]> = datas.iter().map(Vec::as_slice).collect();
        batch
            .replies
            .extend(docs[k].receive_all(&datas, want_replies)?);
        if !closed {
            conn.push(&mut docs[k]).await?;
        }
        batch.touched.push(k);
    }
    for message in others {
        if !closed {
            handle_message(conn, docs, message).await?;
        }
    }
    Ok(batch)
}

/// `(id, body)` of replies.
type Replies = Vec<(String, String)>;

/// A protocol-level observer of one document, for the latency phase: it keeps
/// no automerge document (applying a change costs automerge 0.12 a pass over
/// the whole document, and a thousand clients doing that would measure this
/// process rather than the server), only the hashes of the changes it has
/// received. It reads each new reply's `id` and `body` from the change itself
/// and answers like a peer that applied it: its heads are the server's, and
/// its `have` is the empty summary since them.
struct LightDoc {
    id: DocumentId,
    seen: HashSet<ChangeHash>,
    heads: Vec<ChangeHash>,
    replies: usize,
    /// Announce the V2 message format (see `message`).
    v2: bool,
}

impl LightDoc {
    fn empty(id: DocumentId, v2: bool) -> Self {
        Self {
            id,
            seen: HashSet::new(),
            heads: Vec::new(),
            replies: 0,
            v2,
        }
    }

    /// A sync message saying: these are my heads, and I have nothing since.
    /// By default it carries no capability flags, as automerge peers before
    /// the V2 message format wrote it: the server then sends changes, never a
    /// whole document (a full load for this observer, and a save for the
    /// server, per message). With `v2` it announces what automerge 0.12 and
    /// the stock JS client (automerge 3.5) announce, V2 messages and sync
    /// reset; a server may then send a peer that fell behind by more than a
    /// third of the document the whole document instead of the changes.
    fn message(&self) -> Vec<u8> {
        let flags = self.v2.then(|| {
            let mut flags = sync::MessageFlags::new();
            flags.set(sync::MessageFlags::SUPPORTS_SYNC_RESET);
            flags
        });
        sync::Message {
            heads: self.heads.clone(),
            need: Vec::new(),
            have: vec![sync::Have {
                last_sync: self.heads.clone(),
                bloom: sync::BloomFilter::default(),
            }],
            changes: sync::ChunkList::empty(),
            flags,
            version: sync::MessageVersion::V1,
        }
        .encode()
    }

    /// Reads sync messages from the server; returns the replies they brought
    /// and the answer to send, if our heads moved.
    fn receive_all(&mut self, datas: &[&[u8]]) -> Result<(Replies, Option<Vec<u8>>)> {
        let mut found = Vec::new();
        let mut heads = None;
        for data in datas {
            let message =
                sync::Message::decode(data).context("decoding an automerge sync message")?;
            for chunk in message.changes.iter() {
                self.read_chunk(chunk, &mut found)?;
            }
            heads = Some(message.heads);
        }
        let Some(heads) = heads else {
            return Ok((found, None));
        };
        // Claim only heads we hold; the rest comes in a later message.
        if same_heads(&heads, &self.heads) || !heads.iter().all(|h| self.seen.contains(h)) {
            return Ok((found, None));
        }
        self.heads = heads;
        Ok((found, Some(self.message())))
    }

    /// The changes in a message's `changes` entry: automerge concatenates
    /// chunks there (change, compressed change, bundle, or a whole document,
    /// which it sends when the peer lacks more than a third of it).
    fn read_chunk(&mut self, bytes: &[u8], found: &mut Vec<(String, String)>) -> Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let (kind, chunk, after) = split_chunk(rest)?;
            rest = after;
            match kind {
                0 => {
                    let doc = Automerge::load(chunk).context("loading a document chunk")?;
                    for change in doc.get_changes(&[]) {
                        self.note(&change, found);
                    }
                }
                3 => {
                    let bundle = automerge::Bundle::try_from(chunk)
                        .map_err(|e| anyhow!("bad bundle chunk: {e}"))?;
                    let changes = bundle
                        .to_changes()
                        .map_err(|e| anyhow!("bad bundle chunk: {e}"))?;
                    for change in &changes {
                        self.note(change, found);
                    }
                }
                _ => {
                    let change = automerge::Change::try_from(chunk)
                        .map_err(|e| anyhow!("bad change chunk: {e}"))?;
                    self.note(&change, found);
                }
            }
        }
        Ok(())
    }

    fn note(&mut self, change: &automerge::Change, found: &mut Vec<(String, String)>) {
        if !self.seen.insert(change.hash()) {
            return;
        }
        let (mut id, mut body) = (None, None);
        for op in change.decode().operations {
            if let (
                automerge::legacy::Key::Map(key),
                automerge::legacy::OpType::Put(ScalarValue::Str(text)),
            ) = (&op.key, &op.action)
            {
                match key.as_str() {
                    "id" => id = Some(text.to_string()),
                    "body" => body = Some(text.to_string()),
                    _ => {}
                }
            }
        }
        if let Some(id) = id {
            self.replies += 1;
            found.push((id, body.unwrap_or_default()));
        }
    }
}

/// The first automerge chunk of `bytes`: its type, its bytes, and the rest.
/// A chunk is magic (4 bytes), checksum (4), type (1), length (ULEB128), data.
fn split_chunk(bytes: &[u8]) -> Result<(u8, &[u8], &[u8])> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    if bytes.len() < 10 || bytes[..4] != MAGIC {
        bail!("not an automerge chunk");
    }
    let kind = bytes[8];
    let (mut length, mut shift, mut at) = (0u64, 0u32, 9usize);
    loop {
        let byte = *bytes.get(at).context("truncated chunk length")?;
        at += 1;
        length |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            bail!("bad chunk length");
        }
    }
    let end = at
        .checked_add(usize::try_from(length).context("chunk too long")?)
        .filter(|end| *end <= bytes.len())
        .context("truncated chunk")?;
    Ok((kind, &bytes[..end], &bytes[end..]))
}

/// `handle_batch` for a light observer.
async fn handle_light_batch(
    conn: &mut Conn,
    doc: &mut LightDoc,
    first: Message,
    limit: usize,
) -> Result<Batch> {
    let mut datas = Vec::new();
    let mut closed = false;
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(message) = next.take() {
        taken += 1;
        if let Message::Sync(m) | Message::Request(m) = message
            && m.document_id == doc.id
        {
            datas.push(m.data);
        }
        if taken < limit {
            match conn.ready_message()? {
                Incoming::Message(message) => next = Some(message),
                Incoming::Closed => closed = true,
                Incoming::Skip | Incoming::Nothing => {}
            }
        }
    }
    let datas: Vec<&[u8]> = datas.iter().map(Vec::as_slice).collect();
    let (replies, answer) = doc.receive_all(&datas)?;
    if let Some(answer) = answer
        && !closed
    {
        let message = Message::Sync(conn.doc_message(doc.id, answer));
        conn.send(&message).await?;
    }
    Ok(Batch {
        touched: vec![0],
        replies,
        closed,
    })
}

/// Opens document `id` as a light observer on `conn`: `request`, then
/// answer until it holds `heads`.
async fn open_light(
    conn: &mut Conn,
    id: DocumentId,
    v2: bool,
    heads: &[ChangeHash],
    deadline: Instant,
) -> Result<LightDoc> {
    let mut doc = LightDoc::empty(id, v2);
    let request = Message::Request(conn.doc_message(id, doc.message()));
    conn.send(&request).await?;
    while !same_heads(&doc.heads, heads) {
        let message = match tokio::time::timeout_at(deadline.into(), conn.recv()).await {
            Err(_) => bail!("timed out waiting for the document"),
            Ok(message) => message?,
        };
        match message {
            None => {
                conn.wire.unexpected_closes.fetch_add(1, Ordering::Relaxed);
                bail!("the server closed the connection while the document was opening");
            }
            Some(Message::Sync(m) | Message::Request(m)) if m.document_id == id => {
                let (_, answer) = doc.receive_all(&[m.data.as_slice()])?;
                if let Some(answer) = answer {
                    let message = Message::Sync(conn.doc_message(id, answer));
                    conn.send(&message).await?;
                }
            }
            Some(Message::DocUnavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                doc = LightDoc::empty(id, v2);
                conn.send(&request).await?;
            }
            Some(Message::Error(e)) => bail!("the server sent an error: {}", e.message),
            Some(_) => {}
        }
    }
    Ok(doc)
}

/// Opens document `id` as a light observer on every connection, concurrently.
async fn open_light_everywhere(
    conns: Vec<Conn>,
    id: DocumentId,
    v2: bool,
    heads: &Arc<Vec<ChangeHash>>,
    deadline: Instant,
) -> Result<Vec<(Conn, LightDoc)>> {
    let mut set = JoinSet::new();
    for (k, mut conn) in conns.into_iter().enumerate() {
        let heads = heads.clone();
        set.spawn(async move {
            let doc = open_light(&mut conn, id, v2, &heads, deadline)
                .await
                .with_context(|| format!("observer {k} opening the document"))?;
            Ok::<_, anyhow::Error>((k, conn, doc))
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        out.push(joined.context("an observer task failed")??);
    }
    out.sort_by_key(|(k, _, _)| *k);
    Ok(out.into_iter().map(|(_, c, d)| (c, d)).collect())
}

/// Exchanges messages until `done(docs)` holds.
async fn pump_until(
    conn: &mut Conn,
    docs: &mut [SyncedDoc],
    deadline: Instant,
    what: &str,
    done: impl Fn(&mut [SyncedDoc]) -> bool,
) -> Result<()> {
    while !done(docs) {
        let message = match tokio::time::timeout_at(deadline.into(), conn.recv()).await {
            Err(_) => bail!("timed out waiting for {what}"),
            Ok(message) => message?,
        };
        let Some(message) = message else {
            conn.wire.unexpected_closes.fetch_add(1, Ordering::Relaxed);
            bail!("the server closed the connection while waiting for {what}");
        };
        handle_message(conn, docs, message).await?;
    }
    Ok(())
}

/// Creates `count` posts from `conn` and waits until the server acknowledged them.
async fn create_posts(
    conn: &mut Conn,
    author: &str,
    count: usize,
    deadline: Instant,
) -> Result<Vec<SyncedDoc>> {
    let mut docs = (0..count)
        .map(|d| SyncedDoc::create(author, &format!("load post {d}")))
        .collect::<Result<Vec<_>>>()?;
    for doc in &mut docs {
        conn.push(doc).await?;
    }
    pump_until(
        conn,
        &mut docs,
        deadline,
        "the server to acknowledge new documents",
        |docs| docs.iter().all(SyncedDoc::server_has_ours),
    )
    .await?;
    Ok(docs)
}

/// Requests documents `ids` on `conn` until each has `heads`.
async fn open_docs(
    conn: &mut Conn,
    ids: &[DocumentId],
    heads: &[Vec<ChangeHash>],
    deadline: Instant,
) -> Result<Vec<SyncedDoc>> {
    let mut docs: Vec<SyncedDoc> = ids.iter().copied().map(SyncedDoc::open).collect();
    for doc in &mut docs {
        conn.push(doc).await?;
    }
    pump_until(
        conn,
        &mut docs,
        deadline,
        "requested documents to arrive",
        |docs| {
            docs.iter()
                .zip(heads)
                .all(|(d, h)| same_heads(&d.heads(), h))
        },
    )
    .await?;
    Ok(docs)
}

/// Has every client open every document, concurrently; clients `1..` of
/// `conns` request them (client 0 created them).
async fn open_everywhere(
    conns: Vec<Conn>,
    ids: &Arc<Vec<DocumentId>>,
    heads: &Arc<Vec<Vec<ChangeHash>>>,
    deadline: Instant,
) -> Result<Vec<(Conn, Vec<SyncedDoc>)>> {
    let mut set = JoinSet::new();
    for (k, mut conn) in conns.into_iter().enumerate() {
        let ids = ids.clone();
        let heads = heads.clone();
        set.spawn(async move {
            let docs = open_docs(&mut conn, &ids, &heads, deadline)
                .await
                .with_context(|| format!("client {} opening the documents", k + 1))?;
            Ok::<_, anyhow::Error>((k, conn, docs))
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        out.push(joined.context("a client task failed")??);
    }
    out.sort_by_key(|(k, _, _)| *k);
    Ok(out.into_iter().map(|(_, c, d)| (c, d)).collect())
}

// ---------------------------------------------------------------------------
// phase: memory per idle connection

async fn idle_phase(target: &mut Target, args: &Args) -> Result<Json> {
    let k = args.idle;
    progress!("{}: idle phase, {k} connections", target.kind.name());
    // One connection opened and closed first, so lazy start-up costs are not counted.
    let warm = Conn::connect(&target.ws_url(0), target.wire.clone())
        .await
        .context("warm-up connection")?;
    warm.close().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = target.pid();
    let before = rss_sample(pid).await.context("reading the server's RSS")?;
    let t0 = Instant::now();
    let conns = connect_many(target, 0..k, args.connect_concurrency).await?;
    let connect_time = t0.elapsed();
    // Each idle client keeps reading, so pings are answered.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    for mut conn in conns {
        let mut stop = stop_rx.clone();
        set.spawn(async move {
            let closed_early = loop {
                tokio::select! {
                    message = conn.recv() => match message {
                        Ok(Some(_)) => continue,
                        Ok(None) | Err(_) => break true,
                    },
                    _ = stop.changed() => break false,
                }
            };
            if closed_early {
                conn.wire.unexpected_closes.fetch_add(1, Ordering::Relaxed);
            } else {
                conn.close().await;
            }
            closed_early
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = rss_sample(pid).await.context("reading the server's RSS")?;
    let _ = stop_tx.send(true);
    let mut closed_early = 0;
    while let Some(joined) = set.join_next().await {
        closed_early += usize::from(joined.unwrap_or(true));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per = (after - before) / k as f64;
    progress!(
        "{}: {:.1} KiB per idle connection ({:.1} -> {:.1} MiB)",
        target.kind.name(),
        per / 1024.0,
        before / 1048576.0,
        after / 1048576.0
    );
    Ok(json!({
        "connections": k,
        "connect_all_ms": ms(connect_time),
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_connection": round(per, 0),
        "closed_by_server_meanwhile": closed_early,
    }))
}

// ---------------------------------------------------------------------------
// phase: throughput

/// What the load and latency tasks share.
struct Progress {
    expected: Vec<usize>,
    /// (client, document) pairs that have not yet reached `expected`.
    remaining: AtomicUsize,
    converged: Notify,
    last_done_ns: AtomicU64,
    last_issued_ns: AtomicU64,
}

impl Progress {
    fn new(expected: Vec<usize>, clients: usize) -> Self {
        let remaining = clients * expected.len();
        Self {
            expected,
            remaining: AtomicUsize::new(remaining),
            converged: Notify::new(),
            last_done_ns: AtomicU64::new(0),
            last_issued_ns: AtomicU64::new(0),
        }
    }

    fn check(&self, d: usize, replies: usize, done: &mut [bool]) {
        if !done[d] && replies >= self.expected[d] {
            done[d] = true;
            self.last_done_ns.fetch_max(now_ns(), Ordering::Relaxed);
            if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.converged.notify_one();
            }
        }
    }
}

struct ClientEnd {
    counts: Vec<usize>,
    heads: Vec<Vec<ChangeHash>>,
    /// `(sent, latency)` in ns on the shared clock, per observed change.
    latencies_ns: Vec<(u64, u64)>,
    error: Option<String>,
}

/// Waits for the start signal; the instant it carries is when work begins.
async fn wait_start(start: &mut watch::Receiver<Option<Instant>>) -> Option<Instant> {
    loop {
        if let Some(at) = *start.borrow_and_update() {
            return Some(at);
        }
        if start.changed().await.is_err() {
            return None;
        }
    }
}

struct LoadClient {
    index: usize,
    author: String,
    conn: Conn,
    docs: Vec<SyncedDoc>,
    /// Document of each change this client makes, in order.
    plan: Vec<usize>,
    /// At most this many waiting messages are handled as one batch.
    batch: usize,
}

/// A throughput client: makes its changes back to back (one per turn,
/// interleaved at random with handling what arrives), and answers every
/// incoming sync message as the protocol says.
async fn load_client(
    mut c: LoadClient,
    progress: Arc<Progress>,
    mut start: watch::Receiver<Option<Instant>>,
    mut stop: watch::Receiver<bool>,
) -> ClientEnd {
    let mut done = vec![false; c.docs.len()];
    let mut next = 0;
    let error = if wait_start(&mut start).await.is_none() {
        Some("no start signal".to_string())
    } else {
        let outcome: Result<()> = async {
            loop {
                tokio::select! {
                    message = c.conn.recv() => {
                        let Some(message) = message? else {
                            c.conn.wire.unexpected_closes.fetch_add(1, Ordering::Relaxed);
                            bail!("the server closed the connection");
                        };
                        let batch = handle_batch(&mut c.conn, &mut c.docs, message, c.batch, false).await?;
                        for d in batch.touched {
                            progress.check(d, c.docs[d].reply_count(), &mut done);
                        }
                        if batch.closed {
                            c.conn.wire.unexpected_closes.fetch_add(1, Ordering::Relaxed);
                            bail!("the server closed the connection");
                        }
                    }
                    _ = std::future::ready(()), if next < c.plan.len() => {
                        let d = c.plan[next];
                        let id = format!("c{}-{next}", c.index);
                        c.docs[d].add_reply(&id, &c.author, &now_ns().to_string())?;
                        c.conn.push(&mut c.docs[d]).await?;
                        next += 1;
                        if next == c.plan.len() {
                            progress.last_issued_ns.fetch_max(now_ns(), Ordering::Relaxed);
                        }
                        progress.check(d, c.docs[d].reply_count(), &mut done);
                    }
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
        .await;
        outcome.err().map(|e| format!("client {}: {e:#}", c.index))
    };
    let counts = c.docs.iter_mut().map(SyncedDoc::reply_count).collect();
    let heads = c.docs.iter().map(SyncedDoc::heads).collect();
    c.conn.close().await;
    ClientEnd {
        counts,
        heads,
        latencies_ns: Vec::new(),
        error,
    }
}

async fn throughput_phase(target: &mut Target, args: &Args) -> Result<Json> {
    let (n, m, d) = (args.clients.max(1), args.changes, args.docs.max(1));
    let name = target.kind.name();
    progress!("{name}: throughput phase, {n} clients x {m} changes on {d} documents");
    let deadline = Instant::now() + args.phase_timeout();
    let mut conns = connect_many(target, 0..n, args.connect_concurrency).await?;
    progress!("{name}: {n} clients connected");
    let mut creator = conns.remove(0);
    let creator_docs = create_posts(&mut creator, &target.user_id(0), d, deadline).await?;
    let ids: Arc<Vec<DocumentId>> = Arc::new(creator_docs.iter().map(|x| x.id).collect());
    let heads: Arc<Vec<Vec<ChangeHash>>> =
        Arc::new(creator_docs.iter().map(SyncedDoc::heads).collect());
    let mut clients = vec![(creator, creator_docs)];
    clients.extend(open_everywhere(conns, &ids, &heads, deadline).await?);
    progress!("{name}: every client has the {d} documents");

    let mut expected = vec![0usize; d];
    let plans: Vec<Vec<usize>> = (0..n)
        .map(|i| (0..m).map(|k| (i + k) % d).collect())
        .collect();
    for plan in &plans {
        for &doc in plan {
            expected[doc] += 1;
        }
    }
    let progress = Arc::new(Progress::new(expected.clone(), n));
    let (start_tx, start_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    for (i, ((conn, docs), plan)) in clients.into_iter().zip(plans).enumerate() {
        let client = LoadClient {
            index: i,
            author: target.user_id(i),
            conn,
            docs,
            plan,
            batch: args.batch.max(1),
        };
        let progress = progress.clone();
        let (start, stop) = (start_rx.clone(), stop_rx.clone());
        set.spawn(async move { (i, load_client(client, progress, start, stop).await) });
    }
    let converged = progress.converged.notified();
    tokio::pin!(converged);
    converged.as_mut().enable();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let server_cpu0 = target.server.cpu_seconds();
    let threads0 = thread_cpu(target.pid());
    let self_cpu0 = cpu_seconds("self");
    let t0 = Instant::now();
    let t0_ns = now_ns();
    let _ = start_tx.send(Some(t0));
    let outcome = tokio::time::timeout(args.phase_timeout(), converged).await;
    let measured_at = Instant::now();
    let server_cpu1 = target.server.cpu_seconds();
    let threads1 = thread_cpu(target.pid());
    let self_cpu1 = cpu_seconds("self");
    let _ = stop_tx.send(true);
    let mut ends: Vec<(usize, ClientEnd)> = Vec::new();
    while let Some(joined) = set.join_next().await {
        ends.push(joined.context("a load client task failed")?);
    }
    ends.sort_by_key(|(i, _)| *i);
    let errors: Vec<String> = ends.iter().filter_map(|(_, e)| e.error.clone()).collect();
    if outcome.is_err() {
        let mut lagging: Vec<(usize, usize, usize)> = Vec::new();
        let (mut seen, mut wanted) = (0usize, 0usize);
        for (i, e) in &ends {
            for (doc, count) in e.counts.iter().enumerate() {
                seen += (*count).min(expected[doc]);
                wanted += expected[doc];
                if *count < expected[doc] {
                    lagging.push((*i, doc, *count));
                }
            }
        }
        lagging.sort_by_key(|(_, doc, count)| *count as i64 - expected[*doc] as i64);
        let examples: Vec<String> = lagging
            .iter()
            .take(8)
            .map(|(i, doc, count)| format!("c{i}/d{doc}:{count}/{}", expected[*doc]))
            .collect();
        bail!(
            "no convergence within {} s: {} of {n}x{d} client copies short, {seen} of {wanted} replies delivered; worst: {}; client errors: {}",
            args.phase_timeout,
            lagging.len(),
            examples.join(" "),
            errors
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let end_ns = progress.last_done_ns.load(Ordering::Relaxed);
    let elapsed = Duration::from_nanos(end_ns.saturating_sub(t0_ns));
    let issued = Duration::from_nanos(
        progress
            .last_issued_ns
            .load(Ordering::Relaxed)
            .saturating_sub(t0_ns),
    );
    let total = n * m;
    // Sanity: everyone ends with the same heads on every document.
    let mut heads_differ = 0;
    if let Some((_, first)) = ends.first() {
        for (_, e) in &ends {
            for (doc, h) in e.heads.iter().enumerate() {
                if !first.heads.get(doc).is_some_and(|f| same_heads(f, h)) {
                    heads_differ += 1;
                }
            }
        }
    }
    let server_cpu = match (server_cpu0, server_cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let self_cpu = match (self_cpu0, self_cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let per_sec = total as f64 / elapsed.as_secs_f64().max(1e-9);
    progress!(
        "{name}: {per_sec:.0} changes/s ({} ms to converge); server CPU {:.2} s, load generator CPU {:.2} s",
        ms(elapsed),
        server_cpu.unwrap_or(f64::NAN),
        self_cpu.unwrap_or(f64::NAN)
    );
    Ok(json!({
        "clients": n,
        "changes_per_client": m,
        "docs": d,
        "changes": total,
        "issue_ms": ms(issued),
        "converge_ms": ms(elapsed),
        "changes_per_sec": round(per_sec, 1),
        "server_cpu_s": server_cpu.map(|x| round(x, 2)),
        "server_cpu_s_per_1000_changes": server_cpu.map(|x| round(x * 1000.0 / total.max(1) as f64, 3)),
        "load_generator_cpu_s": self_cpu.map(|x| round(x, 2)),
        "server_threads_cpu_s": thread_cpu_delta(&threads0, &threads1),
        "cpu_window_ms": ms(measured_at - t0),
        "clients_with_other_heads": heads_differ,
        "client_errors": errors,
    }))
}

// ---------------------------------------------------------------------------
// phase: latency with many connected clients

/// A latency client's copy of the document.
enum Held {
    Full(Box<SyncedDoc>),
    Light(LightDoc),
}

impl Held {
    fn replies(&mut self) -> usize {
        match self {
            Held::Full(doc) => doc.reply_count(),
            Held::Light(doc) => doc.replies,
        }
    }

    fn heads(&self) -> Vec<ChangeHash> {
        match self {
            Held::Full(doc) => doc.heads(),
            Held::Light(doc) => doc.heads.clone(),
        }
    }
}

struct LatencyClient {
    index: usize,
    author: String,
    conn: Conn,
    doc: Held,
    /// Writer number, if this client writes.
    writer: Option<usize>,
    /// At most this many waiting messages are handled as one batch.
    batch: usize,
}

struct Schedule {
    writers: usize,
    interval: Duration,
    changes_per_writer: usize,
}

async fn latency_client(
    mut c: LatencyClient,
    schedule: Arc<Schedule>,
    progress: Arc<Progress>,
    mut start: watch::Receiver<Option<Instant>>,
    mut stop: watch::Receiver<bool>,
) -> ClientEnd {
    let mut done = [false];
    let mut latencies_ns = Vec::new();
    let mine = c.writer.map(|w| format!("w{w}-"));
    let error = match wait_start(&mut start).await {
        None => Some("no start signal".to_string()),
        Some(t_start) => {
            let mut written = 0usize;
            let writes = if c.writer.is_some() {
                schedule.changes_per_writer
            } else {
                0
            };
            let offset = c
                .writer
                .map(|w| schedule.interval * w as u32 / schedule.writers.max(1) as u32)
                .unwrap_or_default();
            let mut due = t_start + offset;
            let outcome: Result<()> = async {
                loop {
                    tokio::select! {
                        message = c.conn.recv() => {
                            let arrived = now_ns();
                            let Some(message) = message? else {
                                c.conn.wire.unexpected_closes.fetch_add(1, Ordering::Relaxed);
                                bail!("the server closed the connection");
                            };
                            let batch = match &mut c.doc {
                                Held::Full(doc) => {
                                    handle_batch(&mut c.conn, std::slice::from_mut(doc), message, c.batch, true)
                                        .await?
                                }
                                Held::Light(doc) => {
                                    handle_light_batch(&mut c.conn, doc, message, c.batch).await?
                                }
                            };
                            for (id, body) in batch.replies {
                                if mine.as_deref().is_some_and(|p| id.starts_with(p)) {
                                    continue;
                                }
                                if let Ok(sent) = body.parse::<u64>() {
                                    latencies_ns.push((sent, arrived.saturating_sub(sent)));
                                }
                            }
                            progress.check(0, c.doc.replies(), &mut done);
                            if batch.closed {
                                c.conn.wire.unexpected_closes.fetch_add(1, Ordering::Relaxed);
                                bail!("the server closed the connection");
                            }
                        }
                        _ = tokio::time::sleep_until(due.into()), if written < writes => {
                            let Held::Full(doc) = &mut c.doc else {
                                bail!("a writer needs a full document");
                            };
                            let w = c.writer.unwrap_or_default();
                            let sent = now_ns();
                            doc.add_reply(&format!("w{w}-{written}"), &c.author, &sent.to_string())?;
                            c.conn.push(doc).await?;
                            written += 1;
                            due += schedule.interval;
                            if written == writes {
                                progress.last_issued_ns.fetch_max(now_ns(), Ordering::Relaxed);
                            }
                            progress.check(0, c.doc.replies(), &mut done);
                        }
                        _ = stop.changed() => return Ok(()),
                    }
                }
            }
            .await;
            outcome.err().map(|e| format!("client {}: {e:#}", c.index))
        }
    };
    let counts = vec![c.doc.replies()];
    let heads = vec![c.doc.heads()];
    c.conn.close().await;
    ClientEnd {
        counts,
        heads,
        latencies_ns,
        error,
    }
}

async fn latency_phase(target: &mut Target, args: &Args) -> Result<Json> {
    let n = args.latency_clients.max(2);
    let w = args.latency_writers.clamp(1, n);
    let interval = Duration::from_millis(args.latency_interval_ms.max(1));
    let per_writer = ((args.latency_secs * 1000.0) / interval.as_millis() as f64).round() as usize;
    let name = target.kind.name();
    progress!(
        "{name}: latency phase, {n} clients on one document, {w} writers, one change each every {} ms for {} s",
        interval.as_millis(),
        args.latency_secs
    );
    let deadline = Instant::now() + args.phase_timeout();
    let t_connect = Instant::now();
    let mut conns = connect_many(target, 0..n, args.connect_concurrency).await?;
    let connect_time = t_connect.elapsed();
    progress!("{name}: {n} clients connected in {} ms", ms(connect_time));
    let mut creator = conns.remove(0);
    let mut created = create_posts(&mut creator, &target.user_id(0), 1, deadline).await?;
    let doc = created.pop().context("no document created")?;
    let ids = Arc::new(vec![doc.id]);
    let heads = Arc::new(vec![doc.heads()]);
    let t_open = Instant::now();
    // Writers (and, with --full-observers, everyone) hold a full document.
    let full = if args.full_observers { n } else { w };
    let observers = conns.split_off(full - 1);
    let mut clients: Vec<(Conn, Held)> = vec![(creator, Held::Full(Box::new(doc)))];
    for (conn, mut docs) in open_everywhere(conns, &ids, &heads, deadline).await? {
        let doc = docs.pop().context("client without the document")?;
        clients.push((conn, Held::Full(Box::new(doc))));
    }
    let light_heads = Arc::new(heads[0].clone());
    for (conn, doc) in
        open_light_everywhere(observers, ids[0], args.light_v2, &light_heads, deadline).await?
    {
        clients.push((conn, Held::Light(doc)));
    }
    let open_time = t_open.elapsed();
    progress!(
        "{name}: every client has the document ({} ms)",
        ms(open_time)
    );

    let schedule = Arc::new(Schedule {
        writers: w,
        interval,
        changes_per_writer: per_writer,
    });
    let progress = Arc::new(Progress::new(vec![w * per_writer], n));
    let (start_tx, start_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    for (i, (conn, doc)) in clients.into_iter().enumerate() {
        let client = LatencyClient {
            index: i,
            author: target.user_id(i),
            conn,
            doc,
            writer: (i < w).then_some(i),
            batch: args.batch.max(1),
        };
        let (schedule, progress) = (schedule.clone(), progress.clone());
        let (start, stop) = (start_rx.clone(), stop_rx.clone());
        set.spawn(async move {
            (
                i,
                latency_client(client, schedule, progress, start, stop).await,
            )
        });
    }
    let converged = progress.converged.notified();
    tokio::pin!(converged);
    converged.as_mut().enable();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server_cpu0 = target.server.cpu_seconds();
    let threads0 = thread_cpu(target.pid());
    let self_cpu0 = cpu_seconds("self");
    let t0 = Instant::now();
    let t0_ns = now_ns();
    let _ = start_tx.send(Some(t0 + Duration::from_millis(20)));
    let budget = args.phase_timeout() + Duration::from_secs_f64(args.latency_secs);
    let outcome = tokio::time::timeout(budget, converged).await;
    let window = t0.elapsed();
    let server_cpu1 = target.server.cpu_seconds();
    let threads1 = thread_cpu(target.pid());
    let self_cpu1 = cpu_seconds("self");
    let _ = stop_tx.send(true);
    let mut ends: Vec<(usize, ClientEnd)> = Vec::new();
    while let Some(joined) = set.join_next().await {
        ends.push(joined.context("a latency client task failed")?);
    }
    let errors: Vec<String> = ends.iter().filter_map(|(_, e)| e.error.clone()).collect();
    if outcome.is_err() {
        let lagging = ends
            .iter()
            .filter(|(_, e)| e.counts.first().copied().unwrap_or(0) < w * per_writer)
            .count();
        bail!(
            "{lagging} clients did not get every change within the time limit; client errors: {}",
            errors
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let mut samples: Vec<f64> = ends
        .iter()
        .flat_map(|(_, e)| e.latencies_ns.iter().map(|(_, ns)| *ns as f64 / 1e6))
        .collect();
    samples.sort_by(f64::total_cmp);
    // Latency by the second in which the change was made: shows stalls.
    let mut buckets: Vec<Vec<f64>> = Vec::new();
    for (_, e) in &ends {
        for (sent, ns) in &e.latencies_ns {
            let second = (sent.saturating_sub(t0_ns) / 1_000_000_000) as usize;
            if buckets.len() <= second {
                buckets.resize(second + 1, Vec::new());
            }
            buckets[second].push(*ns as f64 / 1e6);
        }
    }
    let timeline: Vec<Json> = buckets
        .iter_mut()
        .enumerate()
        .map(|(second, xs)| {
            xs.sort_by(f64::total_cmp);
            json!({
                "second": second,
                "samples": xs.len(),
                "p50_ms": quantile(xs, 0.5).map(|x| round(x, 1)),
                "max_ms": xs.last().map(|x| round(*x, 1)),
            })
        })
        .collect();
    progress!(
        "{name}: latency p50/max by the second the change was made: {}",
        buckets
            .iter()
            .map(|xs| format!(
                "{:.0}/{:.0}",
                quantile(xs, 0.5).unwrap_or(f64::NAN),
                xs.last().copied().unwrap_or(f64::NAN)
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let expected_samples = w * per_writer * (n - 1);
    let p50 = quantile(&samples, 0.5);
    let p99 = quantile(&samples, 0.99);
    let max = samples.last().copied();
    let cpu = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| round(b - a, 2));
    progress!(
        "{name}: latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples of {expected_samples})",
        p50.unwrap_or(f64::NAN),
        p99.unwrap_or(f64::NAN),
        max.unwrap_or(f64::NAN),
        samples.len()
    );
    Ok(json!({
        "clients": n,
        "writers": w,
        "interval_ms": interval.as_millis() as u64,
        "changes": w * per_writer,
        "connect_all_ms": ms(connect_time),
        "open_all_ms": ms(open_time),
        "samples": samples.len(),
        "expected_samples": expected_samples,
        "p50_ms": p50.map(|x| round(x, 2)),
        "p90_ms": quantile(&samples, 0.9).map(|x| round(x, 2)),
        "p99_ms": p99.map(|x| round(x, 2)),
        "max_ms": max.map(|x| round(x, 2)),
        "timeline": timeline,
        "converge_ms": ms(Duration::from_nanos(
            progress.last_done_ns.load(Ordering::Relaxed).saturating_sub(t0_ns)
        )),
        "cpu_window_ms": ms(window),
        "server_cpu_s": cpu(server_cpu0, server_cpu1),
        "load_generator_cpu_s": cpu(self_cpu0, self_cpu1),
        "server_threads_cpu_s": thread_cpu_delta(&threads0, &threads1),
        "client_errors": errors,
    }))
}

// ---------------------------------------------------------------------------
// phase: open a big document

async fn open_phase(target: &mut Target, args: &Args) -> Result<Json> {
    let c = args.big_changes;
    let name = target.kind.name();
    progress!("{name}: open phase, a document with {c} changes");
    let deadline = Instant::now() + args.phase_timeout();
    let author = target.user_id(0);
    let mut writer = Conn::connect(&target.ws_url(0), target.wire.clone()).await?;
    let b0 = Instant::now();
    let mut doc = SyncedDoc::create(&author, "big load post")?;
    for k in 0..c {
        doc.add_reply(&format!("big-{k}"), &author, "x")?;
    }
    let build = b0.elapsed();
    let heads = doc.heads();
    let bytes = doc.doc.save().len();
    progress!(
        "{name}: built it in {} ms ({} KiB saved)",
        ms(build),
        bytes / 1024
    );
    let u0 = Instant::now();
    writer.push(&mut doc).await?;
    let mut docs = vec![doc];
    pump_until(
        &mut writer,
        &mut docs,
        deadline,
        "the server to acknowledge the big document",
        |d| d[0].server_has_ours(),
    )
    .await?;
    let acked = u0.elapsed();
    // A second client must get it from the server before timing starts.
    let mut check = Conn::connect(&target.ws_url(1), target.wire.clone()).await?;
    open_docs(
        &mut check,
        &[docs[0].id],
        std::slice::from_ref(&heads),
        deadline,
    )
    .await
    .context("a second client fetching the big document")?;
    let uploaded = u0.elapsed();
    check.close().await;
    writer.close().await;
    progress!(
        "{name}: the server acknowledged it after {} ms, served it after {} ms",
        ms(acked),
        ms(uploaded)
    );

    let id = docs[0].id;
    let mut runs = Vec::new();
    for r in 0..args.open_repeats.max(1) {
        let c0 = Instant::now();
        let mut conn = Conn::connect(&target.ws_url(2 + r), target.wire.clone()).await?;
        let connect = c0.elapsed();
        let t0 = Instant::now();
        let mut opened = open_docs(&mut conn, &[id], std::slice::from_ref(&heads), deadline)
            .await
            .context("a fresh client opening the big document")?;
        let open = t0.elapsed();
        let replies = opened[0].reply_count();
        let c1 = Instant::now();
        conn.close().await;
        let close = c1.elapsed();
        if replies != c {
            bail!("the opened document has {replies} replies, expected {c}");
        }
        progress!("{name}: open #{} took {} ms", r + 1, ms(open));
        runs.push(json!({
            "connect_ms": ms(connect),
            "open_ms": ms(open),
            // Our Close, then until the server closes the TCP connection.
            "close_ms": ms(close),
        }));
    }
    let opens: Vec<f64> = runs.iter().filter_map(|r| r["open_ms"].as_f64()).collect();
    Ok(json!({
        "changes": c,
        "saved_bytes": bytes,
        "build_ms": ms(build),
        "server_acked_ms": ms(acked),
        "upload_ms": ms(uploaded),
        "repeats": runs,
        "open_ms_median": median(&opens).map(|x| round(x, 1)),
        "open_ms_min": opens.iter().copied().reduce(f64::min),
    }))
}

// ---------------------------------------------------------------------------
// running a target

async fn run_target(kind: Kind, args: &Args) -> Json {
    let name = kind.name();
    progress!("{name}: starting the server");
    let mut target = match Target::start(kind, args) {
        Ok(target) => target,
        Err(error) => {
            progress!("{name}: FAILED to start: {error:#}");
            return json!({ "name": name, "error": format!("{error:#}") });
        }
    };
    let mut result = serde_json::Map::new();
    result.insert("name".into(), json!(name));
    result.insert(
        "data_dir".into(),
        json!(target.data_dir.display().to_string()),
    );
    result.insert("addr".into(), json!(target.addr));
    let mut errors = serde_json::Map::new();

    if kind == Kind::Backchannel {
        let users = args.users_needed();
        progress!("{name}: registering {users} users");
        let t0 = Instant::now();
        match target
            .register_users(users, args.register_concurrency)
            .await
        {
            Ok(()) => {
                progress!(
                    "{name}: {users} users registered in {} ms",
                    ms(t0.elapsed())
                );
                result.insert(
                    "registration".into(),
                    json!({ "users": users, "ms": ms(t0.elapsed()) }),
                );
                // Sign-up hashes passwords (Argon2 keeps ~19 MiB per hash in
                // the allocator): start afresh on the same data folder.
                if let Err(error) = target.restart(args) {
                    progress!("{name}: FAILED to restart: {error:#}");
                    result.insert("error".into(), json!(format!("{error:#}")));
                    return Json::Object(result);
                }
            }
            Err(error) => {
                progress!("{name}: FAILED to register users: {error:#}");
                result.insert("error".into(), json!(format!("registration: {error:#}")));
                result.insert("server_log".into(), target.server.log_summary());
                return Json::Object(result);
            }
        }
    }
    match target.wait_ready().await {
        Ok(waited) => {
            progress!("{name}: first handshake after {} ms", ms(waited));
            result.insert("first_handshake_ms".into(), json!(ms(waited)));
        }
        Err(error) => {
            progress!("{name}: FAILED: {error:#}");
            result.insert("error".into(), json!(format!("{error:#}")));
            result.insert("server_log".into(), target.server.log_summary());
            return Json::Object(result);
        }
    }
    result.insert("pid".into(), json!(target.pid()));
    result.insert("rss_start_bytes".into(), json!(rss_bytes(target.pid())));

    for &phase in &args.phases {
        if !target.server.running() {
            errors.insert(
                format!("{phase:?}").to_lowercase(),
                json!("the server is not running"),
            );
            continue;
        }
        let (key, outcome) = match phase {
            Phase::Idle => ("idle", idle_phase(&mut target, args).await),
            Phase::Throughput => ("throughput", throughput_phase(&mut target, args).await),
            Phase::Latency => ("latency", latency_phase(&mut target, args).await),
            Phase::Open => ("open", open_phase(&mut target, args).await),
        };
        match outcome {
            Ok(value) => {
                result.insert(key.into(), value);
            }
            Err(error) => {
                progress!("{name}: {key} phase FAILED: {error:#}");
                errors.insert(key.into(), json!(format!("{error:#}")));
            }
        }
        // Let the server settle (closed sockets, flushes) before the next phase.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    result.insert("rss_end_bytes".into(), json!(rss_bytes(target.pid())));
    result.insert("wire".into(), target.wire.snapshot());
    let exit = target.server.stop();
    result.insert("server_exit".into(), json!(exit));
    result.insert("server_log".into(), target.server.log_summary());
    result.insert("restarts".into(), json!(target.restarts));
    if !errors.is_empty() {
        result.insert("errors".into(), Json::Object(errors));
    }
    if args.keep_data {
        if let Some(temp) = target.temp.take() {
            let kept = temp.keep();
            progress!("{name}: data kept in {}", kept.display());
        }
    } else {
        drop(target.temp.take());
    }
    Json::Object(result)
}

// ---------------------------------------------------------------------------
// report

fn num(v: &Json, path: &[&str]) -> Option<f64> {
    let mut v = v;
    for key in path {
        v = v.get(*key)?;
    }
    v.as_f64()
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

fn rows(r: &Json, args: &Args) -> Vec<(String, String)> {
    let t = |p: &[&str], d| fmt(num(r, p), d);
    let kib = |p: &[&str]| fmt(num(r, p).map(|b| b / 1024.0), 1);
    let mib = |p: &[&str]| fmt(num(r, p).map(|b| b / 1048576.0), 1);
    let opens = r["open"]["repeats"]
        .as_array()
        .map(|runs| {
            runs.iter()
                .map(|x| fmt(x["open_ms"].as_f64(), 1))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "-".into());
    vec![
        (
            format!(
                "throughput (changes/s, end to end; {} clients x {} changes, {} docs)",
                args.clients, args.changes, args.docs
            ),
            t(&["throughput", "changes_per_sec"], 1),
        ),
        (
            "  time to converge / all changes issued (ms)".into(),
            format!(
                "{} / {}",
                t(&["throughput", "converge_ms"], 1),
                t(&["throughput", "issue_ms"], 1)
            ),
        ),
        (
            "  server CPU s per 1,000 changes".into(),
            t(&["throughput", "server_cpu_s_per_1000_changes"], 3),
        ),
        (
            "  CPU s in that time: server / load generator".into(),
            format!(
                "{} / {}",
                t(&["throughput", "server_cpu_s"], 2),
                t(&["throughput", "load_generator_cpu_s"], 2)
            ),
        ),
        (
            format!(
                "edit-to-other-client latency p50 / p99 (ms; {} clients, {} writers every {} ms)",
                args.latency_clients, args.latency_writers, args.latency_interval_ms
            ),
            format!(
                "{} / {}",
                t(&["latency", "p50_ms"], 1),
                t(&["latency", "p99_ms"], 1)
            ),
        ),
        (
            "  max (ms) / samples / expected".into(),
            format!(
                "{} / {} / {}",
                t(&["latency", "max_ms"], 1),
                t(&["latency", "samples"], 0),
                t(&["latency", "expected_samples"], 0)
            ),
        ),
        (
            "  CPU s in that time: server / load generator".into(),
            format!(
                "{} / {}",
                t(&["latency", "server_cpu_s"], 2),
                t(&["latency", "load_generator_cpu_s"], 2)
            ),
        ),
        (
            format!(
                "server memory per idle connection (KiB; {} idle)",
                args.idle
            ),
            kib(&["idle", "bytes_per_connection"]),
        ),
        (
            "  RSS before / after (MiB)".into(),
            format!(
                "{} / {}",
                mib(&["idle", "rss_before_bytes"]),
                mib(&["idle", "rss_after_bytes"])
            ),
        ),
        (
            format!("open a {}-change doc, median (ms)", args.big_changes),
            t(&["open", "open_ms_median"], 1),
        ),
        ("  each open (ms)".into(), opens),
        (
            "  upload until served to another client (ms)".into(),
            t(&["open", "upload_ms"], 1),
        ),
        (
            "server RSS start / end (MiB)".into(),
            format!(
                "{} / {}",
                mib(&["rss_start_bytes"]),
                mib(&["rss_end_bytes"])
            ),
        ),
        (
            "connections the server closed / error messages / doc-unavailable".into(),
            format!(
                "{} / {} / {}",
                t(&["wire", "unexpected_closes"], 0),
                t(&["wire", "error_messages"], 0),
                t(&["wire", "doc_unavailable"], 0)
            ),
        ),
        (
            "server log: lines / WARN / ERROR".into(),
            format!(
                "{} / {} / {}",
                t(&["server_log", "lines"], 0),
                t(&["server_log", "warnings"], 0),
                t(&["server_log", "errors"], 0)
            ),
        ),
    ]
}

#[allow(clippy::print_stdout)]
fn print_table(title: &str, lines: &[(String, String)]) {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("\n== {title}");
    for (k, v) in lines {
        println!("{k:width$}  {v}");
    }
}

fn ratio(b: Option<f64>, r: Option<f64>) -> Option<f64> {
    match (b, r) {
        (Some(b), Some(r)) if r != 0.0 && b.is_finite() && r.is_finite() => Some(round(b / r, 2)),
        _ => None,
    }
}

fn ratios(b: &Json, r: &Json) -> Json {
    let of = |p: &[&str]| ratio(num(b, p), num(r, p));
    json!({
        "throughput": of(&["throughput", "changes_per_sec"]),
        "server_cpu_per_1000_changes": of(&["throughput", "server_cpu_s_per_1000_changes"]),
        "latency_p50": of(&["latency", "p50_ms"]),
        "latency_p99": of(&["latency", "p99_ms"]),
        "memory_per_idle_connection": of(&["idle", "bytes_per_connection"]),
        "open_time": of(&["open", "open_ms_median"]),
    })
}

fn ratio_rows(ratios: &Json) -> Vec<(String, String)> {
    let x = |k: &str| {
        ratios[k]
            .as_f64()
            .map_or_else(|| "-".into(), |v| format!("{v:.2}x"))
    };
    vec![
        ("throughput (higher is better)".into(), x("throughput")),
        (
            "server CPU per 1,000 changes (lower is better)".into(),
            x("server_cpu_per_1000_changes"),
        ),
        ("latency p50 (lower is better)".into(), x("latency_p50")),
        ("latency p99 (lower is better)".into(), x("latency_p99")),
        (
            "memory per idle connection (lower is better)".into(),
            x("memory_per_idle_connection"),
        ),
        ("open time (lower is better)".into(), x("open_time")),
    ]
}

// ---------------------------------------------------------------------------
// main

#[path = "sync_load/honest_worker.rs"]
mod honest_worker;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("honest-worker") {
        let outcome = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")
            .and_then(|runtime| runtime.block_on(honest_worker::run()));
        if let Err(error) = outcome {
            eprintln!("sync_load honest-worker: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    let args = Args::parse();
    clock();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let outcome = runtime
        .build()
        .context("starting the tokio runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    if let Err(error) = outcome {
        eprintln!("sync_load: {error:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let needed = (args.peak_connections() as u64) * 2 + 256;
    match open_file_limit() {
        Some(limit) if limit < needed => bail!(
            "the open-file limit is {limit}, below the {needed} this run needs (client and server sockets on this machine): raise it with `ulimit -n {needed}` first, or lower --idle / --latency-clients / --clients"
        ),
        Some(limit) => progress!("open-file limit {limit} (need about {needed})"),
        None => progress!("could not read the open-file limit; this run needs about {needed}"),
    }
    progress!(
        "targets {:?}; phases {:?}; throughput {} clients x {} changes on {} docs; latency {} clients, {} writers; {} idle; {}-change doc; CLK_TCK {}",
        args.targets,
        args.phases,
        args.clients,
        args.changes,
        args.docs,
        args.latency_clients,
        args.latency_writers,
        args.idle,
        args.big_changes,
        clock_ticks()
    );
    let started = Instant::now();
    let mut targets = serde_json::Map::new();
    for &kind in &args.targets {
        let result = run_target(kind, &args).await;
        targets.insert(kind.name().into(), result);
    }
    for (name, r) in &targets {
        let title = match r.get("error").and_then(Json::as_str) {
            Some(error) => format!("{name} (FAILED: {error})"),
            None => name.clone(),
        };
        print_table(&title, &rows(r, &args));
        if let Some(errors) = r.get("errors").and_then(Json::as_object) {
            for (phase, error) in errors {
                print_table(
                    &format!("{name}: {phase} phase failed"),
                    &[(
                        String::new(),
                        error.as_str().unwrap_or_default().to_string(),
                    )],
                );
            }
        }
    }
    let ratios = match (targets.get("backchannel"), targets.get("reference")) {
        (Some(b), Some(r)) => {
            let ratios = ratios(b, r);
            print_table("backchannel / reference", &ratio_rows(&ratios));
            ratios
        }
        _ => Json::Null,
    };
    let failed = targets
        .values()
        .any(|r| r.get("error").is_some() || r.get("errors").is_some());
    let results = json!({
        "meta": {
            "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "clock_ticks": clock_ticks(),
            "total_ms": ms(started.elapsed()),
            "options": &args,
        },
        "targets": targets,
        "ratios": ratios,
    });
    if let Some(out) = &args.out {
        let text = serde_json::to_string_pretty(&results).context("encoding the results")?;
        std::fs::write(out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
        progress!("results written to {}", out.display());
    }
    progress!("done in {:.1} s", started.elapsed().as_secs_f64());
    if failed {
        bail!("a target or a phase failed (see above)");
    }
    Ok(())
}
