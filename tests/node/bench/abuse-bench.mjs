#!/usr/bin/env node
// Load-and-abuse benchmark (issue 10): while N honest stock automerge-repo
// clients sync, one attacker runs each abuse in turn; for each phase it
// reports the honest clients' latency and the server's RSS, side by side
// with the quiet phase.
//
//   node bench/abuse-bench.mjs [--honest 200] [--seconds 10]
//        [--abuses ephemeral-flood,big-messages,...] [--binary PATH] [--out file.json]
//
// Goal (issue 10): honest p99 within 2x of the quiet p99, and server RSS
// growth under 100 MiB, during every abuse. See docs/PERFORMANCE.md
// ("Abuse benchmark"). Progress goes to stderr, the table to stdout.

import crypto from "node:crypto"
import events from "node:events"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import { performance } from "node:perf_hooks"
import { parseArgs } from "node:util"

import * as A from "@automerge/automerge"
import { Encoder, decode } from "cbor-x"
import WebSocket from "ws"

import { ForgedClient, newDocumentId } from "../lib/forged-client.mjs"
import {
  captureRefusedUpgrades,
  defaultBackchannelBinary,
  makeClient,
  randomId,
  readRssBytes,
  registerUser,
  shutdownAll,
  sleep,
  startBackchannelServer,
  waitForPeer,
  waitUntilServerAcked,
  withTimeout,
} from "../lib/servers.mjs"
import { mapLimit, quantile, range, yieldToLoop } from "./helpers.mjs"

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
    abuses: { type: "string", default: ALL_ABUSES.join(",") },
    "per-user": { type: "string", default: "5" },
    "per-post": { type: "string", default: "10" },
    binary: { type: "string" },
    out: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
})

if (argv.help) {
  console.log(`usage: node bench/abuse-bench.mjs [options]
  --honest N      honest stock clients (default 200)
  --seconds S     length of each phase (default 10)
  --abuses LIST   comma-separated, from ${ALL_ABUSES.join(",")} (default all)
  --per-user K    honest clients sharing one user (default 5; the server allows 32 sockets per user)
  --per-post P    honest clients writing to one post (default 10)
  --binary PATH   Backchannel binary (default $BACKCHANNEL_BIN or target/release/backchannel)
  --out FILE      also write the results as JSON to FILE`)
  process.exit(0)
}

const opts = {
  honest: Number(argv.honest),
  seconds: Number(argv.seconds),
  perUser: Number(argv["per-user"]),
  perPost: Number(argv["per-post"]),
  abuses: argv.abuses.split(",").map(s => s.trim()).filter(Boolean),
  binary: argv.binary ? path.resolve(argv.binary) : defaultBackchannelBinary(),
}
for (const a of opts.abuses) {
  if (!ALL_ABUSES.includes(a)) {
    console.error(`unknown abuse ${a}: choose from ${ALL_ABUSES.join(", ")}`)
    process.exit(2)
  }
}
for (const k of ["honest", "seconds", "perUser", "perPost"]) {
  if (!Number.isInteger(opts[k]) || opts[k] < 1) {
    console.error(`--${k} must be a positive integer`)
    process.exit(2)
  }
}

const cbor = new Encoder({ tagUint8Array: false, useRecords: false })
const T0 = performance.now()
function log(...args) {
  console.error(`[${((performance.now() - T0) / 1000).toFixed(1).padStart(6)}s]`, ...args)
}
const MiB = 1024 * 1024
const mib = b => (Number.isFinite(b) ? Math.round((b / MiB) * 10) / 10 : null)
const round = (x, d = 1) => (Number.isFinite(x) ? Math.round(x * 10 ** d) / 10 ** d : null)

// ---------------------------------------------------------------------------
// the attacker's raw socket: join, then send anything

class RawSocket {
  constructor(url) {
    this.url = url
    this.peerId = `attacker-${randomId(10)}`
    this.closed = false
    this.serverPeerId = "server"
    this.received = 0
  }

  /** Opens and joins; resolves this, or rejects (refused upgrade, timeout). */
  async open({ pauseAfterJoin = false, timeoutMs = 10_000 } = {}) {
    const socket = new WebSocket(this.url)
    socket.binaryType = "nodebuffer"
    this.socket = socket
    this.ended = new Promise(resolve => socket.once("close", () => ((this.closed = true), resolve())))
    socket.on("error", () => {})
    let gotPeer
    const peer = new Promise(resolve => (gotPeer = resolve))
    socket.on("message", data => {
      this.received++
      if (this.serverPeerId === "server") {
        try {
          const m = decode(data)
          if (m?.type === "peer") {
            this.serverPeerId = m.senderId
            gotPeer()
          }
        } catch {
          // ignored
        }
      }
    })
    await withTimeout(
      new Promise((resolve, reject) => {
        socket.once("open", resolve)
        socket.once("unexpected-response", (_req, res) => {
          res.resume()
          reject(Object.assign(new Error(`upgrade refused with ${res.statusCode}`), { status: res.statusCode }))
        })
        socket.once("error", reject)
        socket.once("close", () => reject(new Error("closed before open")))
      }),
      timeoutMs,
      "attacker socket open",
    )
    this.send({ type: "join", senderId: this.peerId, peerMetadata: { isEphemeral: true }, supportedProtocolVersions: ["1"] })
    await withTimeout(Promise.race([peer, this.ended]), timeoutMs, "attacker join")
    if (this.closed) throw new Error("closed during join")
    if (pauseAfterJoin) socket._socket.pause()
    return this
  }

  /** Sends a message (object, or pre-encoded bytes); false once closed. */
  send(message) {
    if (this.closed || this.socket.readyState !== WebSocket.OPEN) return false
    this.socket.send(message instanceof Uint8Array ? message : cbor.encode(message))
    return true
  }

  /** Bytes the socket library still holds for sending. */
  get buffered() {
    return this.socket?.bufferedAmount ?? 0
  }

  close() {
    try {
      this.socket?.terminate()
    } catch {
      // already gone
    }
  }
}

// ---------------------------------------------------------------------------
// the abuses. Each is run(ctx, stats, signal) and loops until signal.aborted,
// reconnecting whenever the server closes it (stats.closed counts that).

const emptyRequest = () => A.generateSyncMessage(A.init(), A.initSyncState())[1]

/** Runs body(socket) over and over on fresh joined sockets until aborted. */
async function withReconnects(ctx, stats, signal, body, openOptions) {
  while (!signal.aborted) {
    const s = new RawSocket(ctx.attackerUrl())
    try {
      await s.open(openOptions)
    } catch (err) {
      stats.refused++
      stats.lastError = err.message
      await sleep(100)
      continue
    }
    ctx.live.add(s)
    try {
      await body(s)
    } catch (err) {
      stats.lastError = err.message
    }
    if (s.closed && !signal.aborted) stats.closed++
    s.close()
    ctx.live.delete(s)
    if (!signal.aborted) await sleep(50)
  }
}

/** Paces a loop: sends while the socket's own buffer is small, else waits. */
async function drain(s, limit = 4 * MiB) {
  while (!s.closed && s.buffered > limit) await sleep(10)
}

const abuses = {
  // Ephemerals of 15 KiB (just under the 16 KiB limit) and beyond the rate
  // limit to the common post every honest client has open: relayed to each
  // reader until the server closes the sender.
  "ephemeral-flood": async (ctx, stats, signal) => {
    const data = cbor.encode({ typing: "x".repeat(15 * 1024) })
    await withReconnects(ctx, stats, signal, async s => {
      const sessionId = randomId(16)
      let count = 0
      while (!signal.aborted && !s.closed) {
        for (let k = 0; k < 20 && !s.closed; k++) {
          if (s.send({ type: "ephemeral", senderId: s.peerId, targetId: s.serverPeerId, documentId: ctx.commonPostId, sessionId, count: ++count, data }))
            stats.sent++
        }
        await sleep(50)
        await drain(s)
      }
    })
  },

  // Sync messages of ~7.5 MiB (the limit is 8 MiB), each a change creating a
  // fresh document with an incompressible blob, one after another.
  "big-messages": async (ctx, stats, signal) => {
    const blob = crypto.randomBytes(Math.floor(7.5 * MiB))
    const change = A.getLastLocalChange(A.change(A.init(), d => (d.blob = blob)))
    await withReconnects(ctx, stats, signal, async s => {
      while (!signal.aborted && !s.closed) {
        const data = A.encodeSyncMessage({ heads: [A.decodeChange(change).hash], need: [], have: [], changes: [change] })
        if (s.send({ type: "sync", senderId: s.peerId, targetId: s.serverPeerId, documentId: newDocumentId(), data })) stats.sent++
        await drain(s, 8 * MiB)
        await sleep(100)
      }
    })
  },

  // Changes whose dependencies do not exist, to the common post, alternating
  // between two connections: each change depends on a change never sent.
  "missing-deps": async (ctx, stats, signal) => {
    const orphan = () => {
      const base = A.change(A.init(), d => (d.pad = randomId(8)))
      // 4 KiB of bytes: one op (a 4 KiB string would be 4,096 text ops, slow
      // to build in this process, which the honest clients share).
      const next = A.change(base, d => {
        d.blob = crypto.randomBytes(4096)
      })
      const change = A.getLastLocalChange(next)
      return A.encodeSyncMessage({ heads: [A.decodeChange(change).hash], need: [], have: [], changes: [change] })
    }
    const sockets = [null, null]
    const open = async k => {
      for (;;) {
        if (signal.aborted) return null
        const s = new RawSocket(ctx.attackerUrl())
        try {
          await s.open()
          ctx.live.add(s)
          s.ended.then(() => {
            if (!signal.aborted) stats.closed++
          })
          return s
        } catch (err) {
          stats.refused++
          stats.lastError = err.message
          await sleep(100)
        }
      }
    }
    let k = 0
    while (!signal.aborted) {
      const i = k++ % 2
      if (!sockets[i] || sockets[i].closed) {
        if (sockets[i]) ctx.live.delete(sockets[i])
        sockets[i] = await open(i)
        if (!sockets[i]) break
      }
      const s = sockets[i]
      if (s.send({ type: "sync", senderId: s.peerId, targetId: s.serverPeerId, documentId: ctx.commonPostId, data: orphan() })) stats.sent++
      if (k % 20 === 0) {
        await drain(s)
        await sleep(5)
      }
    }
  },

  // `request`s for random document ids nobody created, as fast as the
  // socket takes them (the server slows, then closes, a flooder).
  "request-flood": async (ctx, stats, signal) => {
    const data = emptyRequest()
    await withReconnects(ctx, stats, signal, async s => {
      while (!signal.aborted && !s.closed) {
        for (let k = 0; k < 200 && !s.closed; k++) {
          if (s.send({ type: "request", senderId: s.peerId, targetId: s.serverPeerId, documentId: newDocumentId(), data })) stats.sent++
        }
        await drain(s, 1 * MiB)
        await yieldToLoop()
      }
    })
  },

  // A connection that asks for the large documents (and the posts) again and
  // again, with fresh sync states, and never reads its socket.
  "stalled-reader": async (ctx, stats, signal) => {
    const data = emptyRequest()
    const ids = [...ctx.largeDocIds, ...ctx.postIds]
    await withReconnects(
      ctx,
      stats,
      signal,
      async s => {
        while (!signal.aborted && !s.closed) {
          for (const documentId of ids) {
            if (s.send({ type: "request", senderId: s.peerId, targetId: s.serverPeerId, documentId, data })) stats.sent++
          }
          await sleep(500)
        }
      },
      { pauseAfterJoin: true },
    )
  },

  // Changes the rules refuse (another user's post retitled) with the forged
  // client: the server sends `error` and closes; the attacker reconnects.
  "refused-changes": async (ctx, stats, signal) => {
    while (!signal.aborted) {
      let client
      try {
        client = await ForgedClient.connect(ctx.attackerUrl(), { name: "attacker" })
        ctx.liveForged.add(client)
        await client.request(ctx.commonPostId, { timeoutMs: 10_000, quietMs: 50 })
        const hash = client.change(ctx.commonPostId, d => {
          d.title = `pwned ${randomId(6)}`
        })
        await client.outcome(ctx.commonPostId, hash, { timeoutMs: 10_000 })
        stats.sent += client.sent.length
        if (client.closed) stats.closed++
      } catch (err) {
        stats.lastError = err.message
        if (/refused with/.test(err.message)) stats.refused++
        await sleep(100)
      } finally {
        if (client) {
          await client.close()
          ctx.liveForged.delete(client)
        }
      }
    }
  },

  // Many sockets for the attacker's one user: 64 at a time (the server
  // allows 32 per user), each reopened as soon as it ends or is refused.
  "connection-flood": async (ctx, stats, signal) => {
    await Promise.all(
      range(64).map(async () => {
        while (!signal.aborted) {
          const s = new RawSocket(ctx.attackerUrl())
          stats.sent++
          try {
            await s.open({ timeoutMs: 5000 })
          } catch (err) {
            stats.refused++
            stats.lastError = err.message
            s.close()
            await sleep(20)
            continue
          }
          ctx.live.add(s)
          // (The abort may have come while this socket was opening.)
          if (!signal.aborted) await Promise.race([s.ended, new Promise(resolve => signal.addEventListener("abort", resolve, { once: true }))])
          if (s.closed && !signal.aborted) stats.closed++
          s.close()
          ctx.live.delete(s)
        }
      }),
    )
  },
}

// ---------------------------------------------------------------------------
// setup

function postShape(author, title) {
  return { type: "post", schema: 1, author, created_at: Date.now(), status: "published", title, body: "bench", replies: [] }
}

async function setup(server) {
  const N = opts.honest
  const users = Math.ceil(N / opts.perUser)
  const posts = Math.max(1, Math.ceil(N / opts.perPost))
  const run = randomId(6)
  log(`registering ${users} honest users and the attacker`)
  const accounts = await mapLimit(range(users + 1), 4, i =>
    registerUser(server.httpUrl, { email: `abuse-${run}-${i}@example.org`, password: "abuse bench password", display_name: `Abuse ${i}` }),
  )
  const attacker = accounts.pop()

  // The posts (the first is "common": every honest client reads it) and a
  // few large documents for the stalled reader, created by a setup client.
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
  log(`${posts} posts and ${large.length} large documents on the server`)

  // Honest clients: client i is user floor(i / perUser), writes to post i % posts,
  // and also has the common post (0) open.
  const clients = range(N).map(i => {
    const account = accounts[Math.floor(i / opts.perUser)]
    const repo = makeClient(server.syncUrl(account.access_token))
    return { i, repo, userId: account.user.id, post: i % posts, disconnects: 0, errors: 0 }
  })
  for (let start = 0; start < N; start += 25) {
    await Promise.all(clients.slice(start, start + 25).map(c => waitForPeer(c.repo, 60_000)))
  }
  for (const c of clients) c.repo.networkSubsystem.on("peer-disconnected", () => c.disconnects++)
  log(`${N} honest clients connected`)
  await mapLimit(clients, 20, async c => {
    c.handle = await withTimeout(c.repo.find(postHandles[c.post].url), 60_000, `client ${c.i} finding its post`)
    c.common = c.post === 0 ? c.handle : await withTimeout(c.repo.find(postHandles[0].url), 60_000, `client ${c.i} finding the common post`)
  })
  log(`every honest client has its post and the common post`)

  // One observer per post (its own user): the latency of a reply is the
  // time from the writer's change to the reply's arrival at the observer.
  const observerAccount = await registerUser(server.httpUrl, { email: `abuse-${run}-observer@example.org`, password: "abuse bench password", display_name: "Observer" })
  const observer = makeClient(server.syncUrl(observerAccount.access_token))
  await waitForPeer(observer, 30_000)
  const sent = new Map()
  for (const h of postHandles) {
    const oh = await observer.find(h.url)
    const seen = new Set()
    oh.on("change", ({ doc, patches }) => {
      const now = performance.now()
      let from = Infinity
      for (const p of patches) {
        if (p.path[0] !== "replies") continue
        if (p.path.length === 1) from = 0
        else if (p.path.length === 2 && p.action === "insert") from = Math.min(from, p.path[1])
      }
      if (from === Infinity) return
      for (let k = from; k < doc.replies.length; k++) {
        const id = doc.replies[k].id
        if (seen.has(id)) continue
        seen.add(id)
        const s = sent.get(id)
        if (s && s.arrived === undefined) s.arrived = now
      }
    })
  }

  return {
    server,
    clients,
    observer,
    setupRepo,
    sent,
    postIds: postHandles.map(h => h.documentId),
    commonPostId: postHandles[0].documentId,
    largeDocIds: large.map(h => h.documentId),
    attackerId: attacker.user.id,
    attackerUrl: () => server.syncUrl(attacker.access_token),
    live: new Set(),
    liveForged: new Set(),
  }
}

// ---------------------------------------------------------------------------
// one phase: honest load for opts.seconds, with the abuse (if any) beside it

async function phase(ctx, name) {
  const { clients, sent, server } = ctx
  const stats = { sent: 0, closed: 0, refused: 0, lastError: undefined }
  const rss = { start: readRssBytes(server.pid), peak: 0 }
  rss.peak = rss.start
  const sampler = setInterval(() => {
    const v = readRssBytes(server.pid)
    if (v > rss.peak) rss.peak = v
  }, 100)
  const disc0 = clients.reduce((n, c) => n + c.disconnects, 0)
  const cpu0 = { server: server.cpuSeconds(), client: process.cpuUsage() }
  const controller = new AbortController()
  events.setMaxListeners(200, controller.signal)
  log(`phase ${name}: start (server RSS ${mib(rss.start)} MiB)`)
  const attack = name === "quiet" ? Promise.resolve() : abuses[name](ctx, stats, controller.signal).catch(err => (stats.lastError = err.message))

  // Honest load: every client appends a reply about once a second (jittered).
  const ids = []
  const t0 = performance.now()
  const end = t0 + opts.seconds * 1000
  let honestErrors = 0
  await Promise.all(
    clients.map(async c => {
      await sleep(Math.random() * 1000)
      while (performance.now() < end) {
        const id = randomId(16)
        sent.set(id, { t: performance.now() })
        ids.push(id)
        try {
          c.handle.change(doc => {
            doc.replies.push({ id, author: c.userId, created_at: Date.now(), body: "honest reply" })
          })
        } catch {
          honestErrors++
        }
        await sleep(800 + Math.random() * 400)
      }
    }),
  )
  controller.abort()
  await attack
  for (const s of ctx.live) s.close()
  ctx.live.clear()
  await Promise.all([...ctx.liveForged].map(c => c.close()))
  // Let the last replies arrive (up to 10 s), then count the lost ones.
  const graceEnd = performance.now() + 10_000
  while (performance.now() < graceEnd && ids.some(id => sent.get(id).arrived === undefined)) await sleep(100)
  // Settle between phases (the server frees what the abuse held), still
  // sampling RSS: growth that shows only after the abuse counts too.
  await sleep(2000)
  clearInterval(sampler)
  const lat = Float64Array.from(ids.map(id => sent.get(id)).filter(s => s.arrived !== undefined).map(s => s.arrived - s.t)).sort()
  const clientCpu = process.cpuUsage(cpu0.client)
  const result = {
    phase: name,
    replies: ids.length,
    delivered: lat.length,
    lost: ids.length - lat.length,
    p50_ms: round(quantile(lat, 0.5)),
    p99_ms: round(quantile(lat, 0.99)),
    max_ms: round(lat.length ? lat[lat.length - 1] : NaN),
    rss_start_bytes: rss.start,
    rss_peak_bytes: rss.peak,
    rss_growth_bytes: rss.peak - rss.start,
    attacker_sent: stats.sent,
    attacker_closed: stats.closed,
    attacker_refused: stats.refused,
    attacker_last_error: stats.lastError,
    honest_errors: honestErrors,
    honest_disconnects: clients.reduce((n, c) => n + c.disconnects, 0) - disc0,
    server_cpu_s: round(server.cpuSeconds() - cpu0.server, 2),
    client_cpu_s: round((clientCpu.user + clientCpu.system) / 1e6, 2),
  }
  log(
    `phase ${name}: p50 ${result.p50_ms} ms p99 ${result.p99_ms} ms, ${result.lost} lost, RSS ${mib(rss.start)} -> peak ${mib(rss.peak)} MiB, attacker sent ${stats.sent} closed ${stats.closed} refused ${stats.refused}`,
  )
  return result
}

// ---------------------------------------------------------------------------
// run

let refusals = 0
captureRefusedUpgrades({
  onRefused: e => {
    if (refusals++ < 3) log(`a stock client's upgrade was refused: ${e.message}`)
  },
})

const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "abuse-bench-"))
log(`${opts.honest} honest clients, ${opts.seconds} s per phase, abuses ${opts.abuses.join(", ")}; binary ${opts.binary}`)
const server = await startBackchannelServer({ binary: opts.binary, dataDir })
const results = {
  meta: { date: new Date().toISOString(), node: process.version, cpus: os.cpus().length, cpu_model: os.cpus()[0]?.model, options: opts },
  phases: [],
}
let ctx
let failed = false
try {
  ctx = await setup(server)
  for (const name of ["quiet", ...opts.abuses]) results.phases.push(await phase(ctx, name))
} catch (err) {
  failed = true
  log(`FAILED: ${err.stack ?? err}`)
  results.error = String(err.stack ?? err)
  results.server_stderr_tail = server.stderrText().slice(-4000)
} finally {
  if (ctx) {
    for (const s of ctx.live) s.close()
    const repos = [...ctx.clients.map(c => c.repo), ctx.observer, ctx.setupRepo]
    for (const repo of repos) {
      for (const adapter of repo.networkSubsystem.adapters) {
        adapter.retryInterval = 0
        adapter.connect = () => {}
      }
    }
    await shutdownAll(repos)
  }
  results.server_exit = await server.stop()
  fs.rmSync(dataDir, { recursive: true, force: true })
}

const quiet = results.phases.find(p => p.phase === "quiet")
const header = ["phase", "p50 ms", "p99 ms", "p99/quiet", "RSS start MiB", "RSS peak MiB", "growth MiB", "attacker sent", "closed", "refused", "lost", "disconnects", "CPU s server/bench", "goals"]
const lines = results.phases.map(p => {
  const ratio = quiet?.p99_ms ? round(p.p99_ms / quiet.p99_ms, 2) : null
  p.p99_ratio = ratio
  const latencyOk = p.phase === "quiet" || (ratio !== null && ratio <= 2)
  const rssOk = p.rss_growth_bytes < 100 * MiB
  p.goal_latency_met = latencyOk
  p.goal_rss_met = rssOk
  const goals = p.phase === "quiet" ? "-" : `${latencyOk ? "p99 ok" : "p99 MISSED"}, ${rssOk ? "RSS ok" : "RSS MISSED"}`
  return [p.phase, p.p50_ms, p.p99_ms, ratio, mib(p.rss_start_bytes), mib(p.rss_peak_bytes), mib(p.rss_growth_bytes), p.attacker_sent, p.attacker_closed, p.attacker_refused, p.lost, p.honest_disconnects, `${p.server_cpu_s}/${p.client_cpu_s}`, goals].map(
    v => (v === null || v === undefined ? "-" : String(v)),
  )
})
console.log(`| ${header.join(" | ")} |`)
console.log(`|${header.map(() => "---").join("|")}|`)
for (const l of lines) console.log(`| ${l.join(" | ")} |`)

if (argv.out) {
  fs.writeFileSync(argv.out, JSON.stringify(results, null, 2) + "\n")
  log(`results written to ${argv.out}`)
}
process.exitCode = failed ? 1 : 0
