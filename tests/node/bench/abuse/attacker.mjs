// The abuse bench's attacker, in its own process (forked by
// bench/abuse-bench.mjs) so that the honest clients never starve it: it
// runs one abuse at a time, between the parent's `start` and `stop`.

import crypto from "node:crypto"
import events from "node:events"

import * as A from "@automerge/automerge"
import { Encoder, decode } from "cbor-x"
import WebSocket from "ws"

import { ForgedClient, newDocumentId } from "../../lib/forged-client.mjs"
import { randomId, sleep, withTimeout } from "../../lib/servers.mjs"
import { range, serveRole, yieldToLoop } from "../helpers.mjs"

const cbor = new Encoder({ tagUint8Array: false, useRecords: false })
const MiB = 1024 * 1024

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
      // to build; this process used to be the honest clients' too).
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
// the parent's requests

let ctx
let running
await serveRole({
  /** spec: { attackerUrl, commonPostId, postIds, largeDocIds } */
  setup(spec) {
    ctx = { ...spec, attackerUrl: () => spec.attackerUrl, live: new Set(), liveForged: new Set() }
    return true
  },
  /** Starts abuse `name`; answers at once. */
  start({ name }) {
    if (running) throw new Error(`abuse ${running.name} still running`)
    if (!abuses[name]) throw new Error(`unknown abuse ${name}`)
    const stats = { sent: 0, closed: 0, refused: 0, lastError: undefined }
    const controller = new AbortController()
    events.setMaxListeners(200, controller.signal)
    const done = abuses[name](ctx, stats, controller.signal).catch(err => (stats.lastError = err.message))
    running = { name, stats, controller, done }
    return true
  },
  /** Stops the abuse, closes its sockets; answers its stats. */
  async stop() {
    if (!running) return null
    const { stats, controller, done } = running
    controller.abort()
    await done
    for (const s of ctx.live) s.close()
    ctx.live.clear()
    await Promise.all([...ctx.liveForged].map(c => c.close()))
    ctx.liveForged.clear()
    running = undefined
    return stats
  },
})
