#!/usr/bin/env node
// Load-and-abuse benchmark (issue 10): while N honest clients sync, one
// attacker runs each abuse in turn; for each phase it reports the honest
// clients' latency and the server's RSS, side by side with the quiet phase
// before it.
//
//   node bench/abuse-bench.mjs [--honest 200] [--seconds 10] [--workers 4]
//        [--repeat 3] [--abuses ephemeral-flood,big-messages,...]
//        [--binary PATH] [--server-env K=V,...] [--out file.json]
//
// The honest clients run in --workers child processes: light Rust clients
// (`sync_load honest-worker`, the default) or stock automerge-repo ones
// (bench/abuse/honest.mjs, with --honest-clients stock);
// the observer and the attacker each in their own (bench/abuse/observer.mjs,
// bench/abuse/attacker.mjs); this process starts the server, sets up the
// accounts and posts, samples the server's RSS and CPU and runs the phases.
//
// Goal (issue 10): honest p99 within 2x of the quiet p99, and server RSS
// growth under 100 MiB, during every abuse. See docs/PERFORMANCE.md
// ("Abuse benchmark"). Progress goes to stderr, the tables to stdout.

import { execFileSync } from "node:child_process"
import crypto from "node:crypto"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"

import {
  REPO_ROOT,
  defaultBackchannelBinary,
  makeClient,
  randomId,
  readCpuSeconds,
  readRssBytes,
  registerUser,
  shutdownAll,
  sleep,
  startBackchannelServer,
  waitForPeer,
  waitUntilServerAcked,
} from "../lib/servers.mjs"
import { forkRole, spawnRole, mapLimit, median, monoNow, quantile, range } from "./helpers.mjs"

const HERE = path.dirname(fileURLToPath(import.meta.url))
const ALL_ABUSES = [
  "ephemeral-flood",
  "big-messages",
  "missing-deps",
  "request-flood",
  "stalled-reader",
  "refused-changes",
  "connection-flood",
]

const { values: argv } = parseArgs({
  options: {
    honest: { type: "string", default: "200" },
    seconds: { type: "string", default: "10" },
    workers: { type: "string", default: "4" },
    repeat: { type: "string", default: "1" },
    settle: { type: "string", default: "2" },
    warmup: { type: "string", default: "5" },
    "honest-nice": { type: "string", default: "0" },
    "honest-clients": { type: "string", default: "rust" },
    "quiet-before": { type: "string", default: "each" },
    "load-binary": { type: "string" },
    abuses: { type: "string", default: ALL_ABUSES.join(",") },
    "per-user": { type: "string", default: "5" },
    "per-post": { type: "string", default: "10" },
    binary: { type: "string" },
    "server-env": { type: "string", multiple: true },
    out: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
})

if (argv.help) {
  console.log(`usage: node bench/abuse-bench.mjs [options]
  --honest N      honest clients (default 200)
  --seconds S     length of each phase (default 10)
  --workers W     child processes the honest clients are shared among (default 4)
  --repeat R      run the whole phase sequence R times, each against a fresh
                  server, and report the median per phase (default 1)
  --settle S      seconds to go on sampling RSS after each phase's last replies (default 2)
  --warmup S      seconds of honest load, not measured, before the quiet phase (default 5)
  --honest-nice N nice value for the honest worker processes (default 0: as the rest)
  --honest-clients rust|stock
                  rust (default): light Rust clients (\`sync_load honest-worker\`),
                  so the clients leave the machine's CPU to the server; stock:
                  @automerge/automerge-repo clients (bench/abuse/honest.mjs)
  --quiet-before each|first
                  each (default): a quiet phase just before every abuse, which
                  the abuse's latency is compared with; first: one at the start
  --load-binary P the sync_load binary for rust clients (default $SYNC_LOAD_BIN or
                  target/release/sync_load; build it with
                  \`cargo build --release -p backchannel-tests --bin sync_load\`)
  --abuses LIST   comma-separated, from ${ALL_ABUSES.join(",")} (default all)
  --per-user K    honest clients sharing one user (default 5; the server allows 32 sockets per user)
  --per-post P    honest clients writing to one post (default 10)
  --binary PATH   Backchannel binary (default $BACKCHANNEL_BIN or target/release/backchannel)
  --server-env E  extra environment for the server, K=V[,K=V...] ("default": none);
                  give it several times to compare variants side by side: each
                  repeat then runs every variant in turn
  --out FILE      also write the results as JSON to FILE`)
  process.exit(0)
}

const opts = {
  honest: Number(argv.honest),
  seconds: Number(argv.seconds),
  workers: Number(argv.workers),
  repeat: Number(argv.repeat),
  settle: Number(argv.settle),
  warmup: Number(argv.warmup),
  honestNice: Number(argv["honest-nice"]),
  honestClients: argv["honest-clients"],
  quietBefore: argv["quiet-before"],
  loadBinary: path.resolve(argv["load-binary"] ?? process.env.SYNC_LOAD_BIN ?? path.join(REPO_ROOT, "target/release/sync_load")),
  perUser: Number(argv["per-user"]),
  perPost: Number(argv["per-post"]),
  abuses: argv.abuses.split(",").map(s => s.trim()).filter(Boolean),
  binary: argv.binary ? path.resolve(argv.binary) : defaultBackchannelBinary(),
  serverEnvs: argv["server-env"]?.length ? argv["server-env"] : ["default"],
}
for (const a of opts.abuses) {
  if (!ALL_ABUSES.includes(a)) {
    console.error(`unknown abuse ${a}: choose from ${ALL_ABUSES.join(", ")}`)
    process.exit(2)
  }
}
for (const k of ["honest", "seconds", "workers", "repeat", "perUser", "perPost"]) {
  if (!Number.isInteger(opts[k]) || opts[k] < 1) {
    console.error(`--${k} must be a positive integer`)
    process.exit(2)
  }
}
if (!Number.isInteger(opts.honestNice) || opts.honestNice < 0 || opts.honestNice > 19) {
  console.error("--honest-nice must be an integer from 0 to 19")
  process.exit(2)
}
for (const k of ["settle", "warmup"]) {
  if (!Number.isFinite(opts[k]) || opts[k] < 0) {
    console.error(`--${k} must be a number of seconds`)
    process.exit(2)
  }
}
opts.workers = Math.min(opts.workers, opts.honest)
if (!["each", "first"].includes(opts.quietBefore)) {
  console.error("--quiet-before must be each or first")
  process.exit(2)
}
if (!["rust", "stock"].includes(opts.honestClients)) {
  console.error("--honest-clients must be rust or stock")
  process.exit(2)
}
if (opts.honestClients === "rust" && !fs.existsSync(opts.loadBinary)) {
  console.error(`${opts.loadBinary} not found: build it with \`cargo build --release -p backchannel-tests --bin sync_load\` (or give --honest-clients stock)`)
  process.exit(2)
}

/** "K=V,K2=V2" (or "default") as an env object. */
function parseEnv(spec) {
  if (!spec || spec === "default") return {}
  const env = {}
  for (const part of spec.split(",")) {
    const eq = part.indexOf("=")
    if (eq < 1) {
      console.error(`--server-env ${spec}: expected K=V[,K=V...]`)
      process.exit(2)
    }
    env[part.slice(0, eq).trim()] = part.slice(eq + 1)
  }
  return env
}
const variants = opts.serverEnvs.map(spec => ({ name: spec, env: parseEnv(spec) }))

const T0 = monoNow()
function log(...args) {
  console.error(`[${((monoNow() - T0) / 1000).toFixed(1).padStart(6)}s]`, ...args)
}
const MiB = 1024 * 1024
const mib = b => (Number.isFinite(b) ? Math.round((b / MiB) * 10) / 10 : null)
const round = (x, d = 1) => (Number.isFinite(x) ? Math.round(x * 10 ** d) / 10 ** d : null)
/** RssAnon and RssFile of a process, in bytes (NaN if gone). */
function readRssParts(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, "utf8")
    const kb = name => Number(new RegExp(`^${name}:\\s+(\\d+)\\s+kB`, "m").exec(status)?.[1]) * 1024
    return { anon: kb("RssAnon"), file: kb("RssFile") }
  } catch {
    return { anon: NaN, file: NaN }
  }
}
const selfCpuSeconds = () => {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1e6
}

// ---------------------------------------------------------------------------
// setup: accounts and posts from this process, then the child processes

function postShape(author, title) {
  return { type: "post", schema: 1, author, created_at: Date.now(), status: "published", title, body: "bench", replies: [] }
}

async function setup(server) {
  const N = opts.honest
  const users = Math.ceil(N / opts.perUser)
  const posts = Math.max(1, Math.ceil(N / opts.perPost))
  const run = randomId(6)
  log(`registering ${users} honest users, the observer and the attacker`)
  const accounts = await mapLimit(range(users + 2), 4, i =>
    registerUser(server.httpUrl, { email: `abuse-${run}-${i}@example.org`, password: "abuse bench password", display_name: `Abuse ${i}` }),
  )
  const observerAccount = accounts.pop()
  const attacker = accounts.pop()

  // The posts (the first is "common": every honest client reads it) and a
  // few large documents for the stalled reader, created by a setup client
  // (the first honest user's), which leaves once the server has them all.
  const setupRepo = makeClient(server.syncUrl(accounts[0].access_token))
  await waitForPeer(setupRepo, 30_000)
  const postHandles = range(posts).map(p => setupRepo.create(postShape(accounts[0].user.id, `abuse bench ${p}`)))
  const large = []
  for (let i = 0; i < 4; i++) {
    const blob = new Uint8Array(3 * MiB)
    for (let o = 0; o < blob.length; o += 65536) crypto.getRandomValues(blob.subarray(o, o + 65536))
    large.push(setupRepo.create({ blob }))
  }
  for (const h of [...postHandles, ...large]) await waitUntilServerAcked(setupRepo, h, 60_000)
  await shutdownAll([setupRepo])
  log(`${posts} posts and ${large.length} large documents on the server`)

  // Children. Any of them dying ends the run.
  const onArrival = new Map()
  const children = []
  const adopt = role => {
    children.push(role)
    role.exited.then(({ code, signal }) => {
      if (!role.stopping) log(`${role.name} exited unexpectedly (code ${code}, signal ${signal})`)
    })
    return role
  }
  const fork = async (script, name) =>
    adopt(
      await forkRole(path.join(HERE, "abuse", script), {
        name,
        onEvent: (event, value) => {
          if (event === "arrivals") for (const [id, t] of value) if (!onArrival.has(id)) onArrival.set(id, t)
        },
      }),
    )
  const spawnHonest = async name => adopt(await spawnRole(opts.loadBinary, ["honest-worker"], { name }))

  // Honest clients: client i is user floor(i / perUser), writes to post i % posts,
  // and also has the common post (0) open. Worker w runs clients i with i % W == w.
  const specs = range(N).map(i => {
    const account = accounts[Math.floor(i / opts.perUser)]
    return { i, url: server.syncUrl(account.access_token), userId: account.user.id, postUrl: postHandles[i % posts].url, commonUrl: postHandles[0].url }
  })
  const workers = await Promise.all(
    range(opts.workers).map(w => (opts.honestClients === "rust" ? spawnHonest(`honest worker ${w}`) : fork("honest.mjs", `honest worker ${w}`))),
  )
  if (opts.honestNice) for (const w of workers) os.setPriority(w.pid, opts.honestNice)
  const counts = await Promise.all(workers.map((w, k) => w.request("connect", { specs: specs.filter(s => s.i % opts.workers === k) })))
  log(`${counts.reduce((a, b) => a + b, 0)} honest clients connected in ${workers.length} processes, each with its post and the common post`)

  // The observer (its own user) has every post open: the latency of a reply
  // is the time from the writer's change to the reply's arrival there.
  const observer = await fork("observer.mjs", "observer")
  await observer.request("connect", { url: server.syncUrl(observerAccount.access_token), postUrls: postHandles.map(h => h.url) })
  const attackerRole = await fork("attacker.mjs", "attacker")
  await attackerRole.request("setup", {
    attackerUrl: server.syncUrl(attacker.access_token),
    postIds: postHandles.map(h => h.documentId),
    commonPostId: postHandles[0].documentId,
    largeDocIds: large.map(h => h.documentId),
  })
  log(`observer and attacker ready`)

  return { server, workers, observer, attacker: attackerRole, children, arrivals: onArrival }
}

async function teardown(ctx) {
  await Promise.all(
    ctx.children.map(async c => {
      c.stopping = true
      try {
        await Promise.race([c.request("shutdown"), sleep(15_000)])
      } catch {
        // gone already
      }
      await Promise.race([c.exited, sleep(5_000)])
      c.kill()
    }),
  )
}

// ---------------------------------------------------------------------------
// one phase: honest load for opts.seconds, with the abuse (if any) beside it

function cpuSnapshot(ctx) {
  return {
    server: ctx.server.cpuSeconds(),
    parent: selfCpuSeconds(),
    workers: ctx.workers.map(w => readCpuSeconds(w.pid)),
    observer: readCpuSeconds(ctx.observer.pid),
    attacker: readCpuSeconds(ctx.attacker.pid),
  }
}

async function phase(ctx, name) {
  const { server, workers, observer, attacker, arrivals } = ctx
  const rss = { start: readRssBytes(server.pid), peak: 0 }
  rss.peak = rss.start
  const sampler = setInterval(() => {
    const v = readRssBytes(server.pid)
    if (v > rss.peak) rss.peak = v
  }, 100)
  const cpu0 = cpuSnapshot(ctx)
  const wall0 = monoNow()
  await Promise.all(ctx.children.map(c => c.request("loopDelay", { reset: true })))
  log(`phase ${name}: start (server RSS ${mib(rss.start)} MiB)`)
  if (!isQuiet(name)) await attacker.request("start", { name })

  const endAt = monoNow() + opts.seconds * 1000
  const honest = await Promise.all(workers.map(w => w.request("phase", { endAt })))
  const workerDelay = await Promise.all(workers.map(w => w.request("loopDelay")))
  const attackerDelay = await attacker.request("loopDelay")
  const stats = isQuiet(name) ? { sent: 0, closed: 0, refused: 0 } : await attacker.request("stop")

  // Let the last replies arrive (up to 10 s), then count the lost ones.
  const sent = honest.flatMap(h => h.sent)
  const graceEnd = monoNow() + 10_000
  for (;;) {
    await observer.request("flush")
    if (monoNow() >= graceEnd || sent.every(([id]) => arrivals.has(id))) break
    await sleep(100)
  }
  const observerDelay = await observer.request("loopDelay")
  // Settle between phases (the server frees what the abuse held), still
  // sampling RSS: growth that shows only after the abuse counts too.
  await sleep(opts.settle * 1000)
  clearInterval(sampler)
  const rssEnd = readRssBytes(server.pid)
  const rssParts = readRssParts(server.pid)
  const wall = (monoNow() - wall0) / 1000
  const cpu1 = cpuSnapshot(ctx)

  const lat = Float64Array.from(sent.filter(([id]) => arrivals.has(id)).map(([id, t]) => arrivals.get(id) - t)).sort()
  const d = (a, b) => round(b - a, 2)
  const benchCpu = {
    parent: d(cpu0.parent, cpu1.parent),
    honest_workers: cpu1.workers.map((v, k) => d(cpu0.workers[k], v)),
    observer: d(cpu0.observer, cpu1.observer),
    attacker: d(cpu0.attacker, cpu1.attacker),
  }
  const perProcess = [
    ["parent", benchCpu.parent],
    ...benchCpu.honest_workers.map((v, k) => [`honest ${k}`, v]),
    ["observer", benchCpu.observer],
    ["attacker", benchCpu.attacker],
  ]
  const busiest = perProcess.reduce((a, b) => (b[1] > a[1] ? b : a))
  const result = {
    phase: name,
    replies: sent.length,
    delivered: lat.length,
    lost: sent.length - lat.length,
    p50_ms: round(quantile(lat, 0.5)),
    p99_ms: round(quantile(lat, 0.99)),
    max_ms: round(lat.length ? lat[lat.length - 1] : NaN),
    rss_start_bytes: rss.start,
    rss_peak_bytes: rss.peak,
    rss_end_bytes: rssEnd,
    rss_growth_bytes: rss.peak - rss.start,
    // RssAnon (heap, mmapped allocations) and RssFile (the binary, mapped files) at the end.
    rss_anon_end_bytes: rssParts.anon,
    rss_file_end_bytes: rssParts.file,
    attacker_sent: stats.sent,
    attacker_closed: stats.closed,
    attacker_refused: stats.refused,
    attacker_last_error: stats.lastError,
    honest_errors: honest.reduce((n, h) => n + h.errors, 0),
    honest_disconnects: honest.reduce((n, h) => n + h.disconnects, 0),
    honest_refused_upgrades: honest.reduce((n, h) => n + h.refused, 0),
    wall_s: round(wall, 2),
    server_cpu_s: d(cpu0.server, cpu1.server),
    // Every bench process together (this one, the honest workers, the
    // observer and the attacker), and each on its own.
    client_cpu_s: round(perProcess.reduce((n, [, v]) => n + v, 0), 2),
    bench_cpu_s: benchCpu,
    busiest_bench_process: busiest[0],
    busiest_bench_cpu_pct: round((busiest[1] / wall) * 100, 0),
    server_cpu_pct: round(((cpu1.server - cpu0.server) / wall) * 100, 0),
    loop_delay_p99_ms: {
      honest_max: round(Math.max(...workerDelay.map(x => x.p99_ms))),
      observer: round(observerDelay.p99_ms),
      attacker: round(attackerDelay.p99_ms),
    },
  }
  log(
    `phase ${name}: p50 ${result.p50_ms} ms p99 ${result.p99_ms} ms, ${result.lost} lost, RSS ${mib(rss.start)} -> peak ${mib(rss.peak)} -> ${mib(rssEnd)} MiB, attacker sent ${stats.sent} closed ${stats.closed} refused ${stats.refused}; CPU s server ${result.server_cpu_s} bench ${result.client_cpu_s} (busiest ${busiest[0]} ${result.busiest_bench_cpu_pct}%), loop p99 ms honest ${result.loop_delay_p99_ms.honest_max} observer ${result.loop_delay_p99_ms.observer} attacker ${result.loop_delay_p99_ms.attacker}`,
  )
  return result
}

/**
 * Honest load that is not measured, so that the quiet phase, the reference,
 * does not carry the clients' first edits (JIT warm-up, first syncs).
 */
async function warmup(ctx) {
  if (opts.warmup <= 0) return
  log(`warm-up: ${opts.warmup} s of honest load, not measured`)
  const endAt = monoNow() + opts.warmup * 1000
  const sent = (await Promise.all(ctx.workers.map(w => w.request("phase", { endAt })))).flatMap(h => h.sent)
  const graceEnd = monoNow() + 10_000
  while (monoNow() < graceEnd && !sent.every(([id]) => ctx.arrivals.has(id))) await sleep(100)
  await sleep(1000)
}

const isQuiet = name => name.startsWith("quiet")

/**
 * The phases of one run: with --quiet-before each, a quiet phase just before
 * every abuse (the posts grow during a run, and with them the cost of a
 * reply, so each abuse is compared with the quiet load of the same moment);
 * with first, one quiet phase at the start.
 */
function phaseNames() {
  if (opts.quietBefore === "first") return ["quiet", ...opts.abuses]
  return opts.abuses.flatMap(a => [`quiet before ${a}`, a])
}

/** Adds the ratio to the quiet phase before it and the goal verdicts to a run's phases. */
function judge(phases) {
  let quiet
  for (const p of phases) {
    if (isQuiet(p.phase)) quiet = p
    p.p99_ratio = quiet?.p99_ms ? round(p.p99_ms / quiet.p99_ms, 2) : null
    p.goal_latency_met = isQuiet(p.phase) || (p.p99_ratio !== null && p.p99_ratio <= 2)
    p.goal_rss_met = p.rss_growth_bytes < 100 * MiB
  }
  return phases
}

async function runOnce(variant, k) {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "abuse-bench-"))
  log(`run ${k + 1}/${opts.repeat}, server env ${variant.name}: starting a fresh server`)
  const server = await startBackchannelServer({ binary: opts.binary, dataDir, env: variant.env })
  const out = { run: k + 1, server_env: variant.name, phases: [] }
  let ctx
  try {
    ctx = await setup(server)
    await warmup(ctx)
    for (const name of phaseNames()) out.phases.push(await phase(ctx, name))
  } catch (err) {
    out.error = String(err.stack ?? err)
    out.server_stderr_tail = server.stderrText().slice(-4000)
    log(`FAILED: ${out.error}`)
  } finally {
    if (ctx) await teardown(ctx)
    out.server_exit = await server.stop()
    fs.rmSync(dataDir, { recursive: true, force: true })
  }
  judge(out.phases)
  return out
}

// ---------------------------------------------------------------------------
// medians over the runs

const MEDIAN_FIELDS = [
  "replies",
  "delivered",
  "lost",
  "p50_ms",
  "p99_ms",
  "max_ms",
  "p99_ratio",
  "rss_start_bytes",
  "rss_peak_bytes",
  "rss_end_bytes",
  "rss_growth_bytes",
  "attacker_sent",
  "attacker_closed",
  "attacker_refused",
  "honest_errors",
  "honest_disconnects",
  "wall_s",
  "server_cpu_s",
  "client_cpu_s",
  "server_cpu_pct",
  "busiest_bench_cpu_pct",
]

function medianPhases(runs) {
  const names = []
  for (const r of runs) for (const p of r.phases) if (!names.includes(p.phase)) names.push(p.phase)
  return names.map(name => {
    const ps = runs.map(r => r.phases.find(p => p.phase === name)).filter(Boolean)
    const m = { phase: name, runs: ps.length }
    for (const f of MEDIAN_FIELDS) m[f] = median(ps.map(p => p[f]))
    m.p99_ratio = round(m.p99_ratio, 2)
    m.loop_delay_p99_ms = { honest_max: median(ps.map(p => p.loop_delay_p99_ms.honest_max)), attacker: median(ps.map(p => p.loop_delay_p99_ms.attacker)) }
    m.goal_latency_met = isQuiet(name) || m.p99_ratio <= 2
    m.goal_rss_met = m.rss_growth_bytes < 100 * MiB
    m.latency_met_runs = ps.filter(p => p.goal_latency_met).length
    m.rss_met_runs = ps.filter(p => p.goal_rss_met).length
    m.worst_p99_ratio = Math.max(...ps.map(p => p.p99_ratio ?? NaN))
    m.worst_rss_growth_bytes = Math.max(...ps.map(p => p.rss_growth_bytes))
    return m
  })
}

const HEADER = ["phase", "p50 ms", "p99 ms", "p99/quiet", "RSS start MiB", "RSS peak MiB", "growth MiB", "RSS after MiB", "attacker sent", "closed", "refused", "lost", "disconnects", "CPU s server/bench", "busiest bench proc %", "goal p99 ≤ 2× quiet", "goal growth < 100 MiB"]

function table(phases, { ofRuns } = {}) {
  const verdict = (met, n) => (met ? "met" : "**missed**") + (ofRuns > 1 ? ` (${n}/${ofRuns} runs)` : "")
  const lines = phases.map(p =>
    [
      p.phase,
      round(p.p50_ms),
      round(p.p99_ms),
      p.p99_ratio,
      mib(p.rss_start_bytes),
      mib(p.rss_peak_bytes),
      mib(p.rss_growth_bytes),
      mib(p.rss_end_bytes),
      p.attacker_sent,
      p.attacker_closed,
      p.attacker_refused,
      p.lost,
      p.honest_disconnects,
      `${round(p.server_cpu_s, 2)}/${round(p.client_cpu_s, 2)}`,
      p.busiest_bench_cpu_pct,
      isQuiet(p.phase) ? "-" : verdict(p.goal_latency_met, p.latency_met_runs),
      verdict(p.goal_rss_met, p.rss_met_runs),
    ].map(v => (v === null || v === undefined || Number.isNaN(v) ? "-" : String(v))),
  )
  return [`| ${HEADER.join(" | ")} |`, `|${HEADER.map(() => "---").join("|")}|`, ...lines.map(l => `| ${l.join(" | ")} |`)].join("\n")
}

// ---------------------------------------------------------------------------
// run

let gitCommit = null
try {
  gitCommit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: REPO_ROOT, encoding: "utf8" }).trim()
} catch {
  // not a checkout
}
const results = {
  meta: {
    date: new Date().toISOString(),
    node: process.version,
    cpus: os.cpus().length,
    cpu_model: os.cpus()[0]?.model,
    loadavg_at_start: os.loadavg(),
    git_commit: gitCommit,
    binary_is_release: /\/release\//.test(opts.binary),
    options: opts,
  },
  runs: [],
  variants: [],
}
log(
  `${opts.honest} honest ${opts.honestClients} clients in ${opts.workers} processes, ${opts.seconds} s per phase, ${opts.repeat} run(s), abuses ${opts.abuses.join(", ")}; binary ${opts.binary}; server env ${variants.map(v => v.name).join(" | ")}`,
)
let failed = false
for (let k = 0; k < opts.repeat; k++) {
  for (const variant of variants) {
    const r = await runOnce(variant, k)
    if (r.error) failed = true
    results.runs.push(r)
  }
}

for (const variant of variants) {
  const runs = results.runs.filter(r => r.server_env === variant.name)
  const title = variants.length > 1 ? ` (server env ${variant.name})` : ""
  if (opts.repeat > 1) {
    for (const r of runs) console.log(`\nrun ${r.run}/${opts.repeat}${title}:\n\n${table(r.phases)}`)
  }
  const med = opts.repeat > 1 ? medianPhases(runs) : runs[0].phases
  results.variants.push({ server_env: variant.name, phases: med })
  console.log(`\n${opts.repeat > 1 ? `median of ${runs.length} runs` : "one run"}${title}, ${opts.honest} honest ${opts.honestClients} clients, ${opts.seconds} s phases:\n\n${table(med, { ofRuns: opts.repeat })}`)
}
// `phases`, as before: the (median) figures of the first variant.
results.phases = results.variants[0]?.phases ?? []

if (argv.out) {
  fs.writeFileSync(argv.out, JSON.stringify(results, null, 2) + "\n")
  log(`results written to ${argv.out}`)
}
process.exitCode = failed ? 1 : 0
