#!/usr/bin/env node
// Sync benchmark: the same load, from stock @automerge/automerge-repo 2.5.x
// clients in this process, against the reference automerge-repo sync server
// and/or the Backchannel server, on this machine, in one run.
//
//   node bench/sync-bench.mjs [--clients 50] [--changes 20] [--docs 5]
//        [--idle 200] [--big-changes 10000] [--targets reference,backchannel]
//        [--out results.json]
//
// See ../README.md for what each figure means. Progress goes to stderr, the
// tables to stdout.

import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import { performance } from "node:perf_hooks"
import { parseArgs } from "node:util"
import { next as A } from "@automerge/automerge"
import {
  captureRefusedUpgrades,
  defaultBackchannelBinary,
  headsEqual,
  makeClient,
  randomId,
  shutdownAll,
  sleep,
  startTarget,
  verifyServerHas,
  waitFor,
  waitForHeads,
  waitForPeer,
  waitUntilServerAcked,
  withTimeout,
} from "../lib/servers.mjs"
import { mapLimit, quantile, range, yieldToLoop } from "./helpers.mjs"

// ---------------------------------------------------------------------------
// options

const { values: argv } = parseArgs({
  options: {
    clients: { type: "string", default: "50" },
    changes: { type: "string", default: "20" },
    docs: { type: "string", default: "5" },
    idle: { type: "string", default: "200" },
    "big-changes": { type: "string", default: "10000" },
    "open-repeats": { type: "string", default: "3" },
    "latency-changes": { type: "string", default: "2" },
    "latency-rate": { type: "string", default: "10" },
    burst: { type: "string", default: "1" },
    targets: { type: "string", default: "reference,backchannel" },
    binary: { type: "string" },
    out: { type: "string" },
    "phase-timeout": { type: "string", default: "120" },
    "keep-data": { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
})

if (argv.help) {
  console.log(`usage: node bench/sync-bench.mjs [options]
  --clients N          load clients (default 50)
  --changes M          changes per load client in the throughput phase (default 20)
  --burst B            changes a client makes per turn in that phase (default 1)
  --docs D             shared documents (default 5)
  --idle K             idle connections for the memory figure (default 200)
  --big-changes C      changes in the big document for the open-time figure (default 10000)
  --open-repeats R     fresh clients that each open the big document (default 3)
  --latency-changes L  changes per client in the paced latency phase (default 2; 0 skips it)
  --latency-rate R     changes per second, all clients together, in that phase (default 10)
  --targets LIST       reference,backchannel (default both)
  --binary PATH        Backchannel binary (default $BACKCHANNEL_BIN or target/release/backchannel)
  --out FILE           also write the results as JSON to FILE
  --phase-timeout S    give up on a phase after S seconds (default 120)
  --keep-data          keep the servers' data folders`)
  process.exit(0)
}

function posInt(name, min = 1) {
  const n = Number(argv[name])
  if (!Number.isInteger(n) || n < min) {
    console.error(`--${name} must be an integer >= ${min}, got ${argv[name]}`)
    process.exit(2)
  }
  return n
}

const opts = {
  clients: posInt("clients", 2),
  changes: posInt("changes"),
  docs: posInt("docs"),
  idle: posInt("idle"),
  bigChanges: posInt("big-changes"),
  openRepeats: posInt("open-repeats"),
  latencyChanges: posInt("latency-changes", 0),
  latencyRate: posInt("latency-rate"),
  burst: posInt("burst"),
  phaseTimeoutMs: posInt("phase-timeout") * 1000,
  targets: argv.targets.split(",").map(s => s.trim()).filter(Boolean),
  binary: argv.binary ? path.resolve(argv.binary) : defaultBackchannelBinary(),
}
for (const t of opts.targets) {
  if (t !== "reference" && t !== "backchannel") {
    console.error(`unknown target ${t}: use reference and/or backchannel`)
    process.exit(2)
  }
}

// Identity indices: load clients are 0..N-1; the others are far apart so that
// on Backchannel every role is its own user.
const IDLE_BASE = 100_000
const WRITER = 200_000

// ---------------------------------------------------------------------------
// small helpers

const T0 = performance.now()
function log(...args) {
  const s = ((performance.now() - T0) / 1000).toFixed(1).padStart(6)
  console.error(`[${s}s]`, ...args)
}

function summarize(samples) {
  const s = Float64Array.from(samples).sort()
  return {
    samples: s.length,
    p50_ms: round(quantile(s, 0.5)),
    p99_ms: round(quantile(s, 0.99)),
    max_ms: round(s.length ? s[s.length - 1] : NaN),
  }
}

function round(x, digits = 1) {
  if (!Number.isFinite(x)) return null
  const f = 10 ** digits
  return Math.round(x * f) / f
}

function median(xs) {
  return quantile(Float64Array.from(xs).sort(), 0.5)
}

async function rssSample(target, n = 5, gapMs = 100) {
  const xs = []
  for (let k = 0; k < n; k++) {
    xs.push(target.rssBytes())
    if (k + 1 < n) await sleep(gapMs)
  }
  return median(xs)
}

function postShape(author) {
  return {
    type: "post",
    schema: 1,
    author,
    created_at: Date.now(),
    status: "published",
    title: "bench",
    body: "bench",
    replies: [],
  }
}

// ---------------------------------------------------------------------------
// phase 1: memory per idle connection

async function idlePhase(target) {
  const K = opts.idle
  log(`${target.name}: idle phase, ${K} connections`)
  // Register / resolve every identity first: on Backchannel, sign-up hashes a
  // password, which must not land in the memory figure.
  const ids = await mapLimit(range(K), 4, i => target.identity(IDLE_BASE + i))
  if (target.restart) await target.restart()
  // One connection opened and closed first, so lazy start-up costs are not counted.
  const warm = makeClient(ids[0].url)
  await waitForPeer(warm, 30_000)
  await shutdownAll([warm])
  await sleep(1000)
  const before = await rssSample(target)
  const repos = []
  const t0 = performance.now()
  try {
    for (let start = 0; start < K; start += 25) {
      const batch = ids.slice(start, start + 25).map(id => makeClient(id.url))
      repos.push(...batch)
      await Promise.all(batch.map(r => waitForPeer(r, 30_000)))
    }
    const connectMs = performance.now() - t0
    await sleep(1500)
    const after = await rssSample(target)
    return {
      connections: K,
      connect_all_ms: round(connectMs),
      rss_before_bytes: before,
      rss_after_bytes: after,
      bytes_per_connection: round((after - before) / K, 0),
    }
  } finally {
    await shutdownAll(repos)
    await sleep(500)
  }
}

// ---------------------------------------------------------------------------
// phase 2: throughput and latency with N clients on D shared documents

async function loadPhase(target) {
  const { clients: N, changes: M, docs: D } = opts
  log(`${target.name}: load phase, ${N} clients x ${M} changes on ${D} docs`)
  const ids = await mapLimit(range(N), 4, i => target.identity(i))
  const authors = ids.map((id, i) => id.userId ?? `bench-${i}`)
  const repos = ids.map(id => makeClient(id.url))
  try {
    await Promise.all(repos.map(r => waitForPeer(r, 30_000)))
    log(`${target.name}: ${N} clients connected`)
    // Lost connections during the phase (the stock server drops a client
    // that misses a keep-alive ping; the stock client reconnects after 5 s).
    const disconnects = { count: 0 }
    for (const r of repos) r.networkSubsystem.on("peer-disconnected", () => disconnects.count++)

    // Client 0 creates the documents; the server must have them before the
    // others can find them (else they come back "unavailable").
    const created = range(D).map(() => repos[0].create(postShape(ids[0].userId ?? "bench")))
    for (const h of created) {
      await waitUntilServerAcked(repos[0], h, 30_000)
      await verifyServerHas(() => target.connectUrl(0), h.url, h.heads(), { timeoutMs: 30_000 })
    }
    const urls = created.map(h => h.url)
    const handles = [created]
    const others = await Promise.all(
      range(N - 1).map(k =>
        withTimeout(Promise.all(urls.map(u => repos[k + 1].find(u))), 60_000, `client ${k + 1} finding the documents`),
      ),
    )
    handles.push(...others)
    log(`${target.name}: every client has the ${D} documents`)

    // Tracking: `sent` maps reply id -> send time and sender; each client's
    // handle scans the replies a change inserted and records arrival times.
    const sent = new Map()
    const latencies = { load: [], paced: [] }
    const counts = range(N).map(() => new Array(D).fill(0))
    let waiter = null
    for (const i of range(N)) {
      for (const d of range(D)) {
        const seen = new Set()
        handles[i][d].on("change", ({ doc, patches }) => {
          const now = performance.now()
          let from = Infinity
          for (const p of patches) {
            if (p.path[0] !== "replies") continue
            if (p.path.length === 1) from = 0
            else if (p.path.length === 2 && p.action === "insert") from = Math.min(from, p.path[1])
          }
          const replies = doc.replies
          if (from !== Infinity) {
            for (let k = from; k < replies.length; k++) {
              const id = replies[k].id
              if (seen.has(id)) continue
              seen.add(id)
              const s = sent.get(id)
              if (s && s.from !== i) latencies[s.phase].push(now - s.t)
            }
          }
          counts[i][d] = replies.length
          if (waiter && !waiter.done[i][d] && replies.length >= waiter.expected[d]) {
            waiter.done[i][d] = true
            if (--waiter.remaining === 0) waiter.resolve(now)
          }
        })
      }
    }
    const expected = new Array(D).fill(0)
    /** Resolves with the time every client has every doc at `expected` replies. */
    const converged = () => {
      const w = { expected: [...expected], done: range(N).map(() => new Array(D).fill(false)), remaining: N * D }
      for (const i of range(N)) {
        for (const d of range(D)) {
          if (counts[i][d] >= w.expected[d]) {
            w.done[i][d] = true
            w.remaining--
          }
        }
      }
      const p = new Promise(resolve => {
        w.resolve = resolve
      })
      if (w.remaining === 0) w.resolve(performance.now())
      waiter = w
      return withTimeout(p, opts.phaseTimeoutMs, "convergence").finally(() => {
        waiter = null
      })
    }
    const missing = () => {
      const lagging = []
      for (const i of range(N)) for (const d of range(D)) if (counts[i][d] < expected[d]) lagging.push(`c${i}/d${d}:${counts[i][d]}/${expected[d]}`)
      return lagging
    }
    const change = (i, d, phase) => {
      const id = randomId(16)
      sent.set(id, { t: performance.now(), from: i, phase })
      handles[i][d].change(doc => {
        doc.replies.push({ id, author: authors[i], created_at: Date.now(), body: "x" })
      })
    }

    // 2a. Throughput: the clients take turns, each making `burst` changes
    // per turn, with one turn of the event loop (network I/O) between turns,
    // until every client has made M changes. The load is closed-loop by
    // nature: the turns slow down when this process is busy applying
    // incoming changes, so the figure is what the whole system sustains.
    for (const i of range(N)) for (let k = 0; k < M; k++) expected[(i + k) % D]++
    const done = converged()
    const cpu0 = { server: target.cpuSeconds(), clients: process.cpuUsage() }
    const disconnects0 = disconnects.count
    const t0 = performance.now()
    for (let k0 = 0; k0 < M; k0 += opts.burst) {
      for (const i of range(N)) {
        for (let k = k0; k < Math.min(M, k0 + opts.burst); k++) change(i, (i + k) % D, "load")
        await yieldToLoop()
      }
    }
    const tIssued = performance.now()
    let tEnd
    try {
      tEnd = await done
    } catch (err) {
      throw new Error(`${err.message}; lagging: ${missing().slice(0, 10).join(" ")}`)
    }
    const total = N * M
    const clientCpu = process.cpuUsage(cpu0.clients)
    const throughput = {
      changes: total,
      issue_ms: round(tIssued - t0),
      converge_ms: round(tEnd - t0),
      changes_per_sec: round(total / ((tEnd - t0) / 1000)),
      latency_under_load: summarize(latencies.load),
      // Where the time went: CPU seconds of the server process and of this
      // (client) process over the phase; both share the machine's cores.
      server_cpu_s: round(target.cpuSeconds() - cpu0.server, 2),
      clients_cpu_s: round((clientCpu.user + clientCpu.system) / 1e6, 2),
      disconnects: disconnects.count - disconnects0,
    }
    log(`${target.name}: throughput ${throughput.changes_per_sec} changes/s (${throughput.converge_ms} ms)`)

    // 2b. Latency: a paced stream of changes from random clients to random
    // docs at latencyRate changes/s in total.
    let paced = null
    const L = opts.latencyChanges
    if (L > 0) {
      const order = range(N * L).map(j => j % N)
      for (let j = order.length - 1; j > 0; j--) {
        const r = Math.floor(Math.random() * (j + 1))
        ;[order[j], order[r]] = [order[r], order[j]]
      }
      const plan = order.map(i => ({ i, d: Math.floor(Math.random() * D) }))
      for (const { d } of plan) expected[d]++
      const pacedDone = converged()
      const disconnectsPaced0 = disconnects.count
      const interval = 1000 / opts.latencyRate
      const p0 = performance.now()
      for (const [j, { i, d }] of plan.entries()) {
        const due = p0 + j * interval
        const wait = due - performance.now()
        if (wait > 1) await sleep(wait)
        change(i, d, "paced")
      }
      try {
        await pacedDone
      } catch (err) {
        throw new Error(`${err.message}; lagging: ${missing().slice(0, 10).join(" ")}`)
      }
      paced = {
        changes: plan.length,
        rate_per_sec: opts.latencyRate,
        ...summarize(latencies.paced),
        disconnects: disconnects.count - disconnectsPaced0,
      }
      log(`${target.name}: paced latency p50 ${paced.p50_ms} ms p99 ${paced.p99_ms} ms`)
    }

    // Sanity: every client ends with the same heads on every doc.
    for (const d of range(D)) {
      await waitFor(() => handles.every(hs => headsEqual(hs[d].heads(), handles[0][d].heads())), {
        timeoutMs: 30_000,
        what: `equal heads on doc ${d}`,
      })
    }
    const rssAfterLoad = target.rssBytes()
    await sleep(500) // let the last sync messages go out before closing
    return { throughput, latency: paced, rss_after_load_bytes: rssAfterLoad }
  } finally {
    await shutdownAll(repos)
    await sleep(500)
  }
}

// ---------------------------------------------------------------------------
// phase 3: time for a fresh client to open a document with many changes

async function openPhase(target) {
  const C = opts.bigChanges
  log(`${target.name}: open phase, a document with ${C} changes`)
  const id = await target.identity(WRITER)
  const writer = makeClient(id.url)
  let url
  let heads
  let build
  try {
    await waitForPeer(writer, 30_000)
    const author = id.userId ?? "bench-writer"
    const h = writer.create(postShape(author))
    const b0 = performance.now()
    for (let k = 0; k < C; k++) {
      h.change(doc => {
        doc.replies.push({ id: randomId(16), author, created_at: Date.now(), body: "x" })
      })
      if (k % 500 === 499) await yieldToLoop()
    }
    const b1 = performance.now()
    heads = h.heads()
    url = h.url
    const acked = await waitUntilServerAcked(writer, h, opts.phaseTimeoutMs)
    await verifyServerHas(() => target.connectUrl(WRITER), url, heads, { timeoutMs: opts.phaseTimeoutMs })
    const b2 = performance.now()
    build = { changes: C, write_ms: round(b1 - b0), upload_ms: round(b2 - b1), server_acked_via_storage_id: acked }
    log(`${target.name}: big doc written in ${build.write_ms} ms, on the server after ${build.upload_ms} ms more`)
  } finally {
    await shutdownAll([writer])
  }

  const runs = []
  for (let r = 0; r < opts.openRepeats; r++) {
    const repo = makeClient(await target.connectUrl(WRITER))
    try {
      const c0 = performance.now()
      await waitForPeer(repo, 30_000)
      const t0 = performance.now()
      const handle = await withTimeout(repo.find(url), opts.phaseTimeoutMs, "find of the big document")
      await handle.whenReady()
      await waitForHeads(handle, heads, opts.phaseTimeoutMs)
      const t1 = performance.now()
      const n = handle.doc().replies.length
      if (n !== C) throw new Error(`opened big document has ${n} replies, expected ${C}`)
      runs.push({ connect_ms: round(t0 - c0), open_ms: round(t1 - t0) })
    } finally {
      await shutdownAll([repo])
    }
  }
  const open = {
    ...build,
    repeats: runs,
    open_ms_median: round(median(runs.map(r => r.open_ms))),
    open_ms_min: round(Math.min(...runs.map(r => r.open_ms))),
  }
  log(`${target.name}: open ${open.open_ms_median} ms (median of ${runs.length})`)
  return open
}

// ---------------------------------------------------------------------------
// run

/**
 * Warms this process up (JIT, the automerge WASM module) before the first
 * target, so the first target measured is not penalised: the same work the
 * clients do (changes, sync messages both ways, diffs), locally, no server.
 */
function warmUp() {
  const t0 = performance.now()
  let a = A.from(postShape("warm"))
  let b = A.clone(a)
  let sa = A.initSyncState()
  let sb = A.initSyncState()
  for (let k = 0; k < 1500; k++) {
    a = A.change(a, d => {
      d.replies.push({ id: randomId(16), author: "warm", created_at: Date.now(), body: "x" })
    })
    if (k % 10 === 9) {
      const before = A.getHeads(b)
      for (let round = 0; round < 4; round++) {
        let m
        ;[sa, m] = A.generateSyncMessage(a, sa)
        if (m) [b, sb] = A.receiveSyncMessage(b, sb, m)
        ;[sb, m] = A.generateSyncMessage(b, sb)
        if (m) [a, sa] = A.receiveSyncMessage(a, sa, m)
      }
      A.diff(b, before, A.getHeads(b))
    }
  }
  log(`client warm-up took ${round(performance.now() - t0, 0)} ms`)
}

async function runTarget(name) {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `bench-${name}-`))
  const result = { name, data_dir: dataDir }
  let target
  try {
    log(`${name}: starting server (data in ${dataDir})`)
    target = await startTarget(name, { dataDir, binary: opts.binary })
    result.pid = target.pid
    result.rss_start_bytes = target.rssBytes()
    result.idle = await idlePhase(target)
    const load = await loadPhase(target)
    result.throughput = load.throughput
    result.latency = load.latency
    result.rss_after_load_bytes = load.rss_after_load_bytes
    result.open = await openPhase(target)
    result.rss_end_bytes = target.rssBytes()
  } catch (err) {
    log(`${name}: FAILED: ${err.stack ?? err}`)
    result.error = String(err.stack ?? err)
    if (target?.server?.stderrText) result.server_stderr_tail = target.server.stderrText().slice(-4000)
  } finally {
    if (target) {
      const exit = await target.stop()
      result.server_exit = exit
    }
    if (!argv["keep-data"]) fs.rmSync(dataDir, { recursive: true, force: true })
  }
  return result
}

const fmt = (x, unit = "") => (x === null || x === undefined || Number.isNaN(x) ? "-" : `${x}${unit}`)
const mib = b => (Number.isFinite(b) ? round(b / 1048576, 1) : null)
const kib = b => (Number.isFinite(b) ? round(b / 1024, 1) : null)

function rows(r) {
  return [
    ["throughput (changes/s, end to end)", fmt(r.throughput?.changes_per_sec)],
    ["  time to converge (ms)", fmt(r.throughput?.converge_ms)],
    ["  CPU s in that time: server / clients", `${fmt(r.throughput?.server_cpu_s)} / ${fmt(r.throughput?.clients_cpu_s)}`],
    ["  lost connections during load / paced phase", `${fmt(r.throughput?.disconnects)} / ${fmt(r.latency?.disconnects)}`],
    ["  latency under that load p50 / p99 (ms)", `${fmt(r.throughput?.latency_under_load?.p50_ms)} / ${fmt(r.throughput?.latency_under_load?.p99_ms)}`],
    [`edit-to-other-client latency p50 / p99 (ms, ${opts.latencyRate}/s)`, `${fmt(r.latency?.p50_ms)} / ${fmt(r.latency?.p99_ms)}`],
    ["  latency samples", fmt(r.latency?.samples)],
    ["server memory per idle connection (KiB)", fmt(kib(r.idle?.bytes_per_connection))],
    [`  RSS before / after ${opts.idle} idle (MiB)`, `${fmt(mib(r.idle?.rss_before_bytes))} / ${fmt(mib(r.idle?.rss_after_bytes))}`],
    [`open a ${opts.bigChanges}-change doc, median (ms)`, fmt(r.open?.open_ms_median)],
    ["  each open (ms)", r.open?.repeats?.map(x => x.open_ms).join(", ") ?? "-"],
    ["  upload of that doc to the server (ms)", fmt(r.open?.upload_ms)],
    ["server RSS start / after load / end (MiB)", `${fmt(mib(r.rss_start_bytes))} / ${fmt(mib(r.rss_after_load_bytes))} / ${fmt(mib(r.rss_end_bytes))}`],
  ]
}

function printTable(title, lines) {
  const w = Math.max(...lines.map(([k]) => k.length))
  console.log(`\n== ${title}`)
  for (const [k, v] of lines) console.log(`${k.padEnd(w)}  ${v}`)
}

function ratio(a, b) {
  return Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? round(a / b, 2) : null
}

const results = {
  meta: {
    date: new Date().toISOString(),
    node: process.version,
    cpus: os.cpus().length,
    cpu_model: os.cpus()[0]?.model,
    total_mem_bytes: os.totalmem(),
    options: { ...opts },
  },
  targets: {},
  ratios: null,
}

log(`targets ${opts.targets.join(", ")}; ${opts.clients} clients x ${opts.changes} changes on ${opts.docs} docs; ${opts.idle} idle; ${opts.bigChanges}-change doc`)
// A refused upgrade (say a 401 for a token the server rejects) would otherwise
// crash this process from inside the stock client adapter; log it instead and
// let the phase time out with a readable error.
let refusals = 0
captureRefusedUpgrades({
  onRefused: e => {
    if (refusals++ < 3) log(`the server refused a WebSocket upgrade: ${e.message}`)
  },
})

warmUp()
for (const name of opts.targets) {
  results.targets[name] = await runTarget(name)
}

for (const [name, r] of Object.entries(results.targets)) {
  printTable(r.error ? `${name} (FAILED: ${r.error.split("\n")[0]})` : name, rows(r))
}

const b = results.targets.backchannel
const ref = results.targets.reference
if (b && ref && !b.error && !ref.error) {
  results.ratios = {
    throughput: ratio(b.throughput?.changes_per_sec, ref.throughput?.changes_per_sec),
    latency_p50: ratio(b.latency?.p50_ms, ref.latency?.p50_ms),
    latency_p99: ratio(b.latency?.p99_ms, ref.latency?.p99_ms),
    memory_per_idle_connection: ratio(b.idle?.bytes_per_connection, ref.idle?.bytes_per_connection),
    open_time: ratio(b.open?.open_ms_median, ref.open?.open_ms_median),
    server_cpu_during_load: ratio(b.throughput?.server_cpu_s, ref.throughput?.server_cpu_s),
  }
  printTable("backchannel / reference", [
    ["throughput (higher is better)", fmt(results.ratios.throughput, "x")],
    ["latency p50 (lower is better)", fmt(results.ratios.latency_p50, "x")],
    ["latency p99 (lower is better)", fmt(results.ratios.latency_p99, "x")],
    ["memory per idle connection (lower is better)", fmt(results.ratios.memory_per_idle_connection, "x")],
    ["open time (lower is better)", fmt(results.ratios.open_time, "x")],
    ["server CPU s for the same load (lower is better)", fmt(results.ratios.server_cpu_during_load, "x")],
  ])
}

if (argv.out) {
  fs.writeFileSync(argv.out, JSON.stringify(results, null, 2) + "\n")
  log(`results written to ${argv.out}`)
}

const failed = Object.values(results.targets).some(r => r.error)
process.exitCode = failed ? 1 : 0
