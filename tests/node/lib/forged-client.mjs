// A hand-made automerge-repo sync client, for tests that must send what the
// stock client never would (another user's actor, a reply in someone else's
// name, a change built on chosen heads) and see exactly what comes back.
//
// It speaks the automerge-repo WebSocket protocol (docs/SYNC_PROTOCOL.md) with
// nothing but `ws`, `cbor-x` and the low-level @automerge/automerge API:
// `join` → `peer`, then one automerge sync state per document, and the usual
// loop (receive → generate → send) until the server has nothing more to say.
// Every frame the server sends is kept, raw and decoded, so a test can assert
// that no byte of a private document ever reached this client.
//
// Usage:
//   const client = await ForgedClient.connect(server.syncUrl(token))
//   const { available } = await client.request(documentId)
//   const hash = client.change(documentId, doc => { doc.title = "x" }, { actor })
//   const outcome = await client.outcome(documentId, hash)   // {accepted} or {refused, closeCode}

import crypto from "node:crypto"

import * as A from "@automerge/automerge"
import bs58check from "bs58check"
import { Encoder, decode } from "cbor-x"
import WebSocket from "ws"

// The stock client's encoder settings (automerge-repo helpers/cbor.ts).
const cbor = new Encoder({ tagUint8Array: false, useRecords: false })

/** A fresh automerge-repo document id: bs58check of 16 random bytes. */
export function newDocumentId() {
  return bs58check.encode(crypto.randomBytes(16))
}

/** The bare document id of an `automerge:<id>` URL (heads suffix dropped), or the id itself. */
export function documentIdOf(urlOrId) {
  const bare = String(urlOrId).replace(/^automerge:/, "").replace(/#.*$/, "")
  if (!bs58check.decodeUnsafe(bare)) throw new Error(`not an automerge document id: ${urlOrId}`)
  return bare
}

/** The `automerge:<id>` URL of a document id. */
export function documentUrlOf(documentId) {
  return `automerge:${documentIdOf(documentId)}`
}

/** A random automerge actor id (16 bytes, hex), as the stock client makes them. */
export function randomActor() {
  return crypto.randomBytes(16).toString("hex")
}

/** The actor ids of every change in `doc` (hex), with the hashes of their changes. */
export function actorsOf(doc) {
  const actors = new Map()
  for (const meta of A.getChangesMetaSince(doc, [])) {
    if (!actors.has(meta.actor)) actors.set(meta.actor, [])
    actors.get(meta.actor).push(meta.hash)
  }
  return actors
}

/** The text of every string (values and map keys) an automerge change carries, in op order. */
function stringsOfChange(decoded) {
  const parts = []
  for (const op of decoded.ops) {
    parts.push(typeof op.value === "string" ? op.value : "\u0000")
    if (typeof op.key === "string") parts.push("\u0000", op.key, "\u0000")
  }
  return parts.join("")
}

/**
 * What an automerge sync message carries: the hashes of its changes and the
 * text of every string in them. Since automerge 3 (sync message v2) the
 * "changes" of a first sync may be one whole saved document instead of
 * separate changes: those are loaded and unpacked too.
 */
function payloadOfSyncMessage(data) {
  const hashes = []
  const texts = []
  let decoded
  try {
    decoded = A.decodeSyncMessage(data)
  } catch {
    return { hashes, text: "" }
  }
  for (const bytes of decoded.changes) {
    try {
      const change = A.decodeChange(bytes)
      hashes.push(change.hash)
      texts.push(stringsOfChange(change))
      continue
    } catch {
      // not a single change: a whole document?
    }
    try {
      const doc = A.load(bytes)
      for (const change of A.getAllChanges(doc)) {
        const one = A.decodeChange(change)
        hashes.push(one.hash)
        texts.push(stringsOfChange(one))
      }
      texts.push(JSON.stringify(A.toJS(doc)))
    } catch {
      // neither: only the raw-byte checks apply
    }
  }
  return { hashes, text: texts.join("\u0000") }
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

/**
 * One WebSocket to /sync, one automerge doc and sync state per document.
 * Create with `await ForgedClient.connect(url)`.
 */
export class ForgedClient {
  /**
   * Opens the socket, sends `join`, and resolves once the server answers `peer`.
   * Options: peerId, storageId (announced in peerMetadata), actor (default
   * actor for this client's own changes), timeoutMs, name (for messages).
   */
  static async connect(url, { peerId, storageId, actor, timeoutMs = 10_000, name } = {}) {
    const client = new ForgedClient(url, { peerId, storageId, actor, name })
    await client.#open(timeoutMs)
    return client
  }

  constructor(url, { peerId, storageId, actor, name } = {}) {
    this.url = url
    this.name = name ?? "forged client"
    this.peerId = peerId ?? `forged-${crypto.randomBytes(6).toString("hex")}`
    this.storageId = storageId
    this.actor = actor ?? randomActor()
    /** Every frame the server sent: { at, bytes (Buffer), message (decoded, or undefined) }. */
    this.frames = []
    /** Every message this client sent, decoded: { at, message }. */
    this.sent = []
    /** documentId → { doc, syncState, unavailable, serverHeads, lastActivity } */
    this.documents = new Map()
    this.serverPeerId = undefined
    this.serverMetadata = undefined
    /** The first `error` message the server sent, or undefined. */
    this.error = undefined
    this.closed = false
    this.closeCode = undefined
    this.closeReason = undefined
    this.#listeners = new Set()
  }

  #socket
  #listeners
  #ended

  async #open(timeoutMs) {
    const socket = new WebSocket(this.url)
    socket.binaryType = "nodebuffer"
    this.#socket = socket
    this.#ended = new Promise(resolve => {
      socket.once("close", (code, reason) => {
        this.closed = true
        this.closeCode = code
        this.closeReason = reason?.toString()
        this.#notify()
        resolve()
      })
    })
    // A refused upgrade or a reset connection must not become an uncaught exception.
    socket.on("error", error => {
      this.socketError = error
      this.#notify()
    })
    socket.on("message", (data, isBinary) => this.#onFrame(Buffer.from(data), isBinary))
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name}: no WebSocket open within ${timeoutMs} ms`)), timeoutMs)
      socket.once("open", () => {
        clearTimeout(timer)
        resolve()
      })
      socket.once("unexpected-response", (_request, response) => {
        clearTimeout(timer)
        let body = ""
        response.on("data", chunk => (body += chunk))
        response.on("end", () =>
          reject(Object.assign(new Error(`${this.name}: upgrade refused with ${response.statusCode}: ${body}`), { status: response.statusCode, body })),
        )
      })
      socket.once("error", error => {
        clearTimeout(timer)
        reject(error)
      })
    })
    this.#send({
      type: "join",
      senderId: this.peerId,
      peerMetadata: { storageId: this.storageId, isEphemeral: true },
      supportedProtocolVersions: ["1"],
    })
    await this.#until(() => this.serverPeerId !== undefined, timeoutMs, "the server's peer message")
  }

  // -------------------------------------------------------------------------
  // frames

  #send(message) {
    if (this.closed || this.#socket.readyState !== WebSocket.OPEN) {
      throw new Error(`${this.name}: cannot send ${message.type}: the connection is closed${this.#why()}`)
    }
    this.sent.push({ at: Date.now(), message })
    this.#socket.send(cbor.encode(message))
  }

  #onFrame(bytes, isBinary) {
    let message
    if (isBinary) {
      try {
        message = decode(bytes)
      } catch {
        message = undefined
      }
    }
    this.frames.push({ at: Date.now(), bytes, message })
    if (message && typeof message === "object") this.#onMessage(message)
    this.#notify()
  }

  #onMessage(message) {
    switch (message.type) {
      case "peer":
        this.serverPeerId = message.senderId
        this.serverMetadata = message.peerMetadata
        break
      case "error":
        this.error ??= message.message
        break
      case "doc-unavailable": {
        const entry = this.#entry(message.documentId)
        entry.unavailable = true
        entry.answers += 1
        entry.lastActivity = Date.now()
        break
      }
      case "sync":
      case "request": {
        const entry = this.#entry(message.documentId)
        entry.unavailable = false
        entry.answers += 1
        entry.lastActivity = Date.now()
        const data = new Uint8Array(message.data)
        try {
          entry.serverHeads = A.decodeSyncMessage(data).heads
          ;[entry.doc, entry.syncState] = A.receiveSyncMessage(entry.doc, entry.syncState, data)
        } catch (error) {
          entry.failure = error
          break
        }
        this.#pump(message.documentId)
        break
      }
      default:
        // ephemeral, remote-heads-changed and the like: recorded, not acted on.
        break
    }
  }

  #entry(documentId) {
    let entry = this.documents.get(documentId)
    if (!entry) {
      entry = {
        doc: A.init({ actor: this.actor }),
        syncState: A.initSyncState(),
        unavailable: false,
        serverHeads: undefined,
        // How many sync/request/doc-unavailable messages arrived for it.
        answers: 0,
        lastActivity: Date.now(),
      }
      this.documents.set(documentId, entry)
    }
    return entry
  }

  /** Sends the next automerge sync message for a document, if there is one. */
  #pump(documentId, type = "sync") {
    const entry = this.#entry(documentId)
    const [syncState, data] = A.generateSyncMessage(entry.doc, entry.syncState)
    entry.syncState = syncState
    if (!data) return false
    // The server may still be sending while it closes the connection.
    if (this.closed || this.#socket.readyState !== WebSocket.OPEN) return false
    entry.lastActivity = Date.now()
    this.#send({ type, senderId: this.peerId, targetId: this.serverPeerId, documentId, data })
    return true
  }

  #notify() {
    for (const listener of [...this.#listeners]) listener()
  }

  #why() {
    const parts = []
    if (this.error !== undefined) parts.push(`error ${JSON.stringify(this.error)}`)
    if (this.closeCode !== undefined) parts.push(`close ${this.closeCode}`)
    return parts.length ? ` (${parts.join(", ")})` : ""
  }

  /** Resolves once predicate() holds (checked on every frame and every 20 ms). */
  #until(predicate, timeoutMs, what) {
    if (predicate()) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const check = () => {
        let done = false
        try {
          done = predicate()
        } catch (error) {
          finish()
          reject(error)
          return
        }
        if (done) {
          finish()
          resolve()
        }
      }
      const poll = setInterval(check, 20)
      const timer = setTimeout(() => {
        finish()
        reject(new Error(`${this.name}: timed out after ${timeoutMs} ms waiting for ${what}${this.#why()}; received ${this.describeFrames()}`))
      }, timeoutMs)
      const finish = () => {
        clearInterval(poll)
        clearTimeout(timer)
        this.#listeners.delete(check)
      }
      this.#listeners.add(check)
    })
  }

  // -------------------------------------------------------------------------
  // documents

  /** The local copy of a document (an automerge doc; `{}` until something arrived). */
  doc(documentId) {
    return this.#entry(documentIdOf(documentId)).doc
  }

  /** The local heads of a document. */
  heads(documentId) {
    return A.getHeads(this.doc(documentId))
  }

  /** True once the server answered `doc-unavailable` (and sent nothing since). */
  isUnavailable(documentId) {
    return this.#entry(documentIdOf(documentId)).unavailable
  }

  /**
   * Asks the server for a document with `request` and a fresh sync state (as
   * the stock client does for a document it has nothing of, or a new
   * connection would) and resolves once the server answered and the sync is
   * quiet, or it said `doc-unavailable`: { available: bool, doc }.
   */
  async request(urlOrId, { timeoutMs = 10_000, quietMs = 150 } = {}) {
    const documentId = documentIdOf(urlOrId)
    const entry = this.#entry(documentId)
    entry.unavailable = false
    const answersBefore = entry.answers
    // Ask as a peer holding nothing of it, so the server always answers
    // (with the whole document or doc-unavailable) even when this client
    // already has every change; what arrives merges into the local copy.
    const [syncState, data] = A.generateSyncMessage(A.init(), A.initSyncState())
    entry.syncState = syncState
    entry.lastActivity = Date.now()
    this.#send({ type: "request", senderId: this.peerId, targetId: this.serverPeerId, documentId, data })
    await this.#until(
      () =>
        this.closed ||
        (entry.answers > answersBefore && (entry.unavailable || (A.getHeads(entry.doc).length > 0 && Date.now() - entry.lastActivity >= quietMs))),
      timeoutMs,
      `document ${documentId} or doc-unavailable`,
    )
    if (this.closed && entry.answers === answersBefore) {
      throw new Error(`${this.name}: the connection closed while requesting ${documentId}${this.#why()}`)
    }
    return { available: !entry.unavailable, doc: entry.doc }
  }

  /**
   * Starts (or restarts) syncing a document this client already has locally,
   * with `sync`, as the stock client does for documents it holds.
   * `fresh: true` forgets what the server was told so far, as a new
   * connection would, so a message goes out even when nothing changed.
   */
  sync(urlOrId, { fresh = false } = {}) {
    const documentId = documentIdOf(urlOrId)
    const entry = this.#entry(documentId)
    if (fresh) entry.syncState = A.initSyncState()
    entry.unavailable = false
    this.#pump(documentId, "sync")
  }

  /**
   * Creates a brand-new document on the server from `initial` (a plain object
   * or an automerge doc built locally), with a random id unless `documentId`
   * is given. Returns { documentId, url, hash } (hash: the last change's).
   */
  create(initial, { documentId = newDocumentId(), actor, eager = false } = {}) {
    const entry = this.#entry(documentId)
    if (A.getHeads(entry.doc).length > 0) throw new Error(`${this.name}: ${documentId} already exists locally`)
    if (A.isAutomerge(initial)) {
      entry.doc = A.clone(initial, { actor: this.actor })
    } else {
      const author = actor ?? this.actor
      const built = A.change(A.init({ actor: author }), d => Object.assign(d, initial))
      entry.doc = author === this.actor ? built : A.clone(built, { actor: this.actor })
    }
    if (eager) this.pushAll(documentId)
    else this.#pump(documentId, "sync")
    const heads = A.getHeads(entry.doc)
    return { documentId, url: documentUrlOf(documentId), hash: heads[heads.length - 1], heads }
  }

  /**
   * Makes one change to a local document and pushes it. Options:
   * - actor: the actor id (hex) to make it with (default: this client's);
   * - at: heads to build it on (automerge changeAt: its deps are exactly these);
   * - time, message: change metadata;
   * - send: false to keep it local (push later with sync()).
   * Returns the new change's hash.
   */
  change(urlOrId, fn, { actor, at, time, message, send = true } = {}) {
    const documentId = documentIdOf(urlOrId)
    const entry = this.#entry(documentId)
    const options = {}
    if (time !== undefined) options.time = time
    if (message !== undefined) options.message = message
    const base = A.clone(entry.doc, { actor: actor ?? this.actor })
    let change
    if (at) {
      // getLastLocalChange is not reliable after changeAt (it may return an
      // earlier change of the same actor), so find the change by its hash.
      const { newDoc, newHeads } = A.changeAt(base, at, options, fn)
      const hash = newHeads?.find(head => !A.hasHeads(entry.doc, [head]))
      if (!hash) throw new Error(`${this.name}: the change function changed nothing`)
      change = A.getAllChanges(newDoc).find(bytes => A.decodeChange(bytes).hash === hash)
    } else {
      const before = A.getHeads(base)
      const changed = A.change(base, options, fn)
      if (A.getHeads(changed).every(head => before.includes(head))) throw new Error(`${this.name}: the change function changed nothing`)
      change = A.getLastLocalChange(changed)
    }
    ;[entry.doc] = A.applyChanges(entry.doc, [change])
    if (send) this.#pump(documentId)
    return A.decodeChange(change).hash
  }

  /**
   * Applies changes made elsewhere (raw automerge changes) to the local copy
   * and pushes them: for replaying bytes another client produced.
   */
  applyAndPush(urlOrId, changes) {
    const documentId = documentIdOf(urlOrId)
    const entry = this.#entry(documentId)
    ;[entry.doc] = A.applyChanges(entry.doc, changes)
    this.#pump(documentId)
  }

  /**
   * Sends every local change of a document in one `sync` message at once,
   * without waiting for the server to say what it lacks (the normal loop's
   * first message carries only heads). For writes the server must judge
   * even when it would answer the first message with `doc-unavailable`.
   */
  pushAll(urlOrId) {
    const documentId = documentIdOf(urlOrId)
    const entry = this.#entry(documentId)
    const data = A.encodeSyncMessage({ heads: A.getHeads(entry.doc), need: [], have: [], changes: A.getAllChanges(entry.doc) })
    entry.lastActivity = Date.now()
    this.#send({ type: "sync", senderId: this.peerId, targetId: this.serverPeerId, documentId, data })
  }

  /** The hashes of the changes carried by the `sync`/`request` messages this client sent. */
  sentChangeHashes() {
    return this.sent
      .filter(({ message }) => message.type === "sync" || message.type === "request")
      .map(({ message }) => payloadOfSyncMessage(message.data).hashes)
  }

  /** True when `hash` is one of the server's last announced heads or one of their ancestors. */
  serverHas(urlOrId, hash) {
    const entry = this.#entry(documentIdOf(urlOrId))
    const heads = entry.serverHeads
    if (!heads) return false
    if (heads.includes(hash)) return true
    if (!A.hasHeads(entry.doc, heads) || !A.hasHeads(entry.doc, [hash])) return false
    // hash is covered by heads unless it is among the changes since heads.
    return !A.getChangesMetaSince(entry.doc, heads).some(meta => meta.hash === hash)
  }

  /** Resolves once the server's heads cover every hash in `hashes`; rejects if the connection ends first. */
  async waitForServerHeads(urlOrId, hashes, { timeoutMs = 10_000 } = {}) {
    const documentId = documentIdOf(urlOrId)
    await this.#until(
      () => {
        if (hashes.every(hash => this.serverHas(documentId, hash))) return true
        if (this.closed) throw new Error(`${this.name}: connection closed before the server had ${hashes.join(", ")}${this.#why()}`)
        return false
      },
      timeoutMs,
      `the server to have ${hashes.join(", ")} of ${documentId}`,
    )
  }

  /**
   * Waits until the sync of a document is quiet: nothing sent or received for
   * quietMs and nothing left to send.
   */
  async settle(urlOrId, { quietMs = 200, timeoutMs = 10_000 } = {}) {
    const documentId = documentIdOf(urlOrId)
    const entry = this.#entry(documentId)
    await this.#until(
      () => {
        if (this.closed) return true
        if (Date.now() - entry.lastActivity < quietMs) return false
        return !this.#pump(documentId)
      },
      timeoutMs,
      `the sync of ${documentId} to settle`,
    )
  }

  /**
   * What became of a change this client pushed: resolves { accepted: true }
   * once the server's heads include `hash`, or { accepted: false, refused:
   * <error text or undefined>, closeCode } once the connection ends, or with
   * { accepted: false, unavailable: true } on `doc-unavailable`.
   */
  async outcome(urlOrId, hash, { timeoutMs = 10_000 } = {}) {
    const documentId = documentIdOf(urlOrId)
    const entry = this.#entry(documentId)
    await this.#until(
      () => this.serverHas(documentId, hash) || this.closed || entry.unavailable,
      timeoutMs,
      `the server to take or refuse ${hash}`,
    )
    if (this.serverHas(documentId, hash)) return { accepted: true }
    if (entry.unavailable && !this.closed) return { accepted: false, unavailable: true }
    return { accepted: false, refused: this.error, closeCode: this.closeCode, closeReason: this.closeReason }
  }

  /** Resolves { message, closeCode, closeReason } once the server sent `error` and closed. */
  async waitForErrorAndClose({ timeoutMs = 10_000 } = {}) {
    await this.#until(() => this.closed, timeoutMs, "the server to close the connection")
    return { message: this.error, closeCode: this.closeCode, closeReason: this.closeReason }
  }

  // -------------------------------------------------------------------------
  // what arrived on the wire

  /** The decoded messages the server sent, in order. */
  messages() {
    return this.frames.map(frame => frame.message).filter(Boolean)
  }

  /** A short summary of received frames for failure messages: "peer, sync(abc…), error". */
  describeFrames(limit = 30) {
    const shown = this.frames.slice(-limit).map(({ message }) => {
      if (!message) return "?"
      if (message.type === "error") return `error(${JSON.stringify(message.message)})`
      if (message.documentId) return `${message.type}(${String(message.documentId).slice(0, 6)}…)`
      return message.type
    })
    return `[${this.frames.length > limit ? "…, " : ""}${shown.join(", ")}]`
  }

  /** What a received frame carries, decoded once: { hashes, text } (empty unless sync/request). */
  #payload(frame) {
    if (!frame.payload) {
      const { message } = frame
      frame.payload =
        message && (message.type === "sync" || message.type === "request") && message.data
          ? payloadOfSyncMessage(new Uint8Array(message.data))
          : { hashes: [], text: "" }
    }
    return frame.payload
  }

  /** Hashes of every change that arrived in any `sync`/`request` frame (single changes or whole documents). */
  receivedChangeHashes() {
    const hashes = new Set()
    for (const frame of this.frames) for (const hash of this.#payload(frame).hashes) hashes.add(hash)
    return hashes
  }

  /**
   * Frames whose bytes mention `needle` (a string, searched as UTF-8, or a
   * Buffer), either raw or inside an automerge change they carry (changes may
   * be DEFLATE-compressed, so each is decoded and its strings searched too).
   * `except(message)` skips frames (e.g. `m => m.type === "doc-unavailable"`).
   * Returns [{ index, type }].
   */
  framesMentioning(needle, { except } = {}) {
    const bytes = Buffer.isBuffer(needle) ? needle : Buffer.from(String(needle), "utf8")
    const text = Buffer.isBuffer(needle) ? undefined : String(needle)
    const found = []
    this.frames.forEach((frame, index) => {
      if (frame.message && except?.(frame.message)) return
      let hit = frame.bytes.includes(bytes)
      if (!hit && text !== undefined) hit = this.#payload(frame).text.includes(text)
      if (hit) found.push({ index, type: frame.message?.type })
    })
    return found
  }

  // -------------------------------------------------------------------------

  /** Closes the socket (normal closure) and waits for it to end. */
  async close() {
    if (!this.closed) {
      try {
        this.#socket.close(1000)
      } catch {
        // already closing
      }
      await Promise.race([this.#ended, sleep(2000)])
      if (!this.closed) this.#socket.terminate()
    }
  }
}
