// A small community for the rules tests (tests/node/rules): one Backchannel
// server with managers and hosts made by the CLI before it starts, members
// signed up through the API, and for each person two kinds of client:
//
// - `person.stock()`: the unchanged automerge-repo client, for what an honest
//   app does (every allowed write in SPEC §5 goes through it);
// - `person.forged()`: lib/forged-client.mjs, for what only a forged client
//   sends (refused writes) and for reading exactly what arrives on the wire.
//
// It also builds SPEC §4 documents (posts, replies, conversations, messages)
// and has the two checks every rule test ends with: the stock client's write
// was acknowledged, or the forged client's write was refused and nothing of it
// was stored.

import assert from "node:assert/strict"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"

import * as A from "@automerge/automerge"
import { decode } from "cbor-x"

import { ForgedClient, documentIdOf, documentUrlOf } from "./forged-client.mjs"
import {
  addUserWithCli,
  defaultBackchannelBinary,
  loginUser,
  makeClient,
  randomId,
  registerUser,
  serverStorageId,
  shutdownAll,
  startBackchannelServer,
  waitForPeer,
  withTimeout,
} from "./servers.mjs"

export const PASSWORD = "rules test password"
// Access tokens live 15 minutes; a person logs in again after this long.
const TOKEN_REFRESH_MS = 10 * 60 * 1000

/**
 * Starts a server with `managers` and `hosts` (display names) created by the
 * CLI first. Returns the community: { server, manager, managers[], host,
 * hosts[], signUp(name), close() }.
 */
export async function startCommunity({ label = "rules", managers = ["Maud"], hosts = ["Hugo"], binary = defaultBackchannelBinary() } = {}) {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `backchannel-${label}-`))
  const staff = []
  for (const [role, names] of [
    ["manager", managers],
    ["host", hosts],
  ]) {
    for (const name of names) {
      const email = `${name}-${randomId(6)}@example.org`.toLowerCase()
      const id = await addUserWithCli({ binary, dataDir, email, name, role, password: PASSWORD })
      staff.push({ name, email, role, id })
    }
  }
  const server = await startBackchannelServer({ binary, dataDir, env: process.env.SERVER_RUST_LOG ? { RUST_LOG: process.env.SERVER_RUST_LOG } : {} })
  const community = new Community(server, dataDir)
  for (const { name, email, role, id } of staff) {
    const session = await loginUser(server.httpUrl, { email, password: PASSWORD })
    assert.equal(session.user.id, id, `${name}'s login returns the id that user add printed`)
    assert.equal(session.user.role, role)
    community.people.push(new Person(community, { name, email, role, session }))
  }
  community.managers = community.people.filter(p => p.role === "manager")
  community.hosts = community.people.filter(p => p.role === "host")
  community.manager = community.managers[0]
  community.host = community.hosts[0]
  return community
}

class Community {
  constructor(server, dataDir) {
    this.server = server
    this.dataDir = dataDir
    this.people = []
    this.repos = []
    this.forgedClients = []
  }

  /** Registers a member through POST /api/auth/register. */
  async signUp(name) {
    const email = `${name}-${randomId(8)}@example.org`.toLowerCase()
    const session = await registerUser(this.server.httpUrl, { email, password: PASSWORD, display_name: name })
    assert.equal(session.user.role, "member")
    const person = new Person(this, { name, email, role: "member", session })
    this.people.push(person)
    return person
  }

  /** Closes every client, then stops the server. */
  async close() {
    await Promise.all(this.forgedClients.map(client => client.close()))
    // A stock client the server closed (a refused write) has a reconnect
    // timer pending that repo.shutdown() does not cancel, and it would keep
    // this process alive: stop its adapters from ever connecting again.
    for (const repo of this.repos) {
      for (const adapter of repo.networkSubsystem.adapters) {
        adapter.retryInterval = 0
        adapter.connect = () => {}
      }
    }
    await shutdownAll(this.repos)
    await this.server.stop()
  }
}

class Person {
  constructor(community, { name, email, role, session }) {
    this.community = community
    this.name = name
    this.email = email
    this.role = role
    this.id = session.user.id
    this.session = session
    this.sessionAt = Date.now()
  }

  toString() {
    return `${this.name} (${this.role})`
  }

  /** A fresh-enough access token (logs in again when the last one is old). */
  async token() {
    if (Date.now() - this.sessionAt > TOKEN_REFRESH_MS) {
      this.session = await loginUser(this.community.server.httpUrl, { email: this.email, password: PASSWORD })
      this.sessionAt = Date.now()
    }
    return this.session.access_token
  }

  async syncUrl() {
    return this.community.server.syncUrl(await this.token())
  }

  /**
   * A stock automerge-repo client signed in as this person, connected
   * (handshake done). `errors` collects every `error` message the server
   * sent it (the stock adapter only logs them).
   */
  async stock(options = {}) {
    const repo = makeClient(await this.syncUrl(), options)
    this.community.repos.push(repo)
    repo.serverErrors = watchServerErrors(repo)
    await waitForPeer(repo)
    return repo
  }

  /** A forged client signed in as this person, joined. */
  async forged(options = {}) {
    const client = await ForgedClient.connect(await this.syncUrl(), { name: `${this.name}'s forged client`, ...options })
    this.community.forgedClients.push(client)
    return client
  }

  /**
   * Creates a document with a forged client (one change holding `fields`),
   * waits until the server stored it, closes that client.
   * Returns { documentId, url, heads }.
   */
  async create(fields) {
    const client = await this.forged()
    try {
      const created = client.create(fields)
      await client.waitForServerHeads(created.documentId, created.heads)
      return { documentId: created.documentId, url: created.url, heads: created.heads }
    } finally {
      await client.close()
    }
  }

  /**
   * Changes a document honestly with a forged client (for setting the stage:
   * the change is expected to be accepted). Returns the new heads.
   */
  async edit(urlOrId, fn) {
    const client = await this.forged()
    try {
      const { available } = await client.request(urlOrId)
      assert.ok(available, `${this} can read ${urlOrId} to edit it`)
      const hash = client.change(urlOrId, fn)
      const outcome = await client.outcome(urlOrId, hash)
      assert.ok(outcome.accepted, `setup: ${this}'s change to ${urlOrId} is accepted (${JSON.stringify(outcome)})`)
      return client.heads(urlOrId)
    } finally {
      await client.close()
    }
  }

  /**
   * Reads a document with a fresh forged client: { available, doc, heads, client }.
   * The client is closed.
   */
  async read(urlOrId) {
    const client = await this.forged()
    try {
      const { available, doc } = await client.request(urlOrId)
      return { available, doc: available ? plain(A.toJS(doc)) : undefined, automerge: doc, heads: available ? A.getHeads(doc) : [], client }
    } finally {
      await client.close()
    }
  }
}

/**
 * A document as plain JSON values: scalar strings (automerge ImmutableString,
 * which the server writes) become plain strings, as SPEC §4 reads them.
 */
export function plain(value) {
  if (A.isImmutableString(value)) return value.val
  if (Array.isArray(value)) return value.map(plain)
  if (value && typeof value === "object" && !(value instanceof Uint8Array)) {
    return Object.fromEntries(Object.entries(value).map(([key, inner]) => [key, plain(inner)]))
  }
  return value
}

/**
 * Collects `error` messages the server sends to a stock repo: the stock
 * WebSocketClientAdapter only logs them, so this listens on each socket the
 * adapter opens (one per (re)connection).
 */
function watchServerErrors(repo) {
  const errors = []
  const seen = new WeakSet()
  const hook = () => {
    for (const adapter of repo.networkSubsystem.adapters) {
      const socket = adapter.socket
      if (!socket || seen.has(socket)) continue
      seen.add(socket)
      socket.on("message", data => {
        try {
          const message = decode(new Uint8Array(data))
          if (message?.type === "error") errors.push(message.message)
        } catch {
          // not ours to judge
        }
      })
    }
  }
  hook()
  repo.networkSubsystem.on("peer", hook)
  const poll = setInterval(hook, 50)
  poll.unref()
  return errors
}

// ---------------------------------------------------------------------------
// SPEC §4 documents

/** A post by `author`: published unless overridden. */
export function post(author, overrides = {}) {
  return {
    type: "post",
    schema: 1,
    author: author.id,
    created_at: Date.now(),
    status: "published",
    title: `A post by ${author.name}`,
    body: "What do you all think?",
    replies: [],
    ...overrides,
  }
}

/** A reply by `author` (a Person, or a user id). */
export function reply(author, body = "I agree", overrides = {}) {
  return { id: randomId(12), author: author.id ?? author, created_at: Date.now(), body, ...overrides }
}

/** A conversation opened by `opener`: members [opener], a question, open. */
export function conversation(opener, overrides = {}) {
  return {
    type: "conversation",
    schema: 1,
    kind: "question",
    opener: opener.id,
    members: [opener.id],
    subject: `A question from ${opener.name}`,
    created_at: Date.now(),
    messages: [],
    state: "open",
    tags: [],
    ...overrides,
  }
}

/** A conversation message by `author`. */
export function message(author, body = "Hello team", overrides = {}) {
  return { id: randomId(12), author: author.id ?? author, created_at: Date.now(), body, ...overrides }
}

/** A drafts document owned by `owner`. */
export function drafts(owner, overrides = {}) {
  return { type: "drafts", schema: 1, owner: owner.id, items: {}, mine: {}, ...overrides }
}

// ---------------------------------------------------------------------------
// the two outcomes

/**
 * An honest write through the stock client: `person` finds the document,
 * changes it with `fn`, and the server acknowledges the new heads (the stock
 * client's remote-heads for the server's storageId). Then a second, fresh
 * reader (`checker`, default the same person) gets the document from the
 * server with those heads. Returns the document as the checker read it.
 */
export async function expectAllowed(person, urlOrId, fn, { checker = person, timeoutMs = 10_000 } = {}) {
  const url = documentUrlOf(urlOrId)
  const repo = await person.stock()
  const handle = await withTimeout(repo.find(url), timeoutMs, `${person} finds ${url}`)
  handle.change(fn)
  const heads = handle.heads()
  const storageId = serverStorageId(repo)
  assert.ok(storageId, "the server announces a storageId")
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const acked = handle.getSyncInfo(storageId)?.lastHeads
    if (acked && sameHeads(acked, heads)) break
    if (repo.serverErrors.length > 0) {
      assert.fail(`${person}'s allowed change was refused: ${JSON.stringify(repo.serverErrors)}`)
    }
    if (Date.now() > deadline) assert.fail(`the server did not acknowledge ${person}'s change within ${timeoutMs} ms`)
    await new Promise(resolve => setTimeout(resolve, 25))
  }
  const read = await checker.read(url)
  assert.ok(read.available, `${checker} reads ${url} back`)
  const stored = new Set(read.heads)
  for (const head of A.getHeads(handle.doc())) {
    assert.ok(A.hasHeads(read.automerge, [head]), `the server stored ${person}'s change ${head.slice(0, 8)} (server heads ${[...stored].join(",")})`)
  }
  return read.doc
}

function sameHeads(a, b) {
  return a.length === b.length && [...a].sort().every((h, i) => h === [...b].sort()[i])
}

/**
 * A refused write through a forged client: `person` requests the document,
 * makes `fn` as one change (with `actor`/`at` if given), pushes it, and the
 * server must answer with an `error` matching `rule` and close the
 * connection. Then `checker` (someone who may read the document) reads it
 * from the server and its heads are exactly those before the refused change.
 */
export async function expectRefused(person, urlOrId, fn, { rule, checker, actor, at } = {}) {
  const documentId = documentIdOf(urlOrId)
  const client = await person.forged()
  const { available } = await client.request(documentId)
  assert.ok(available, `${person} can read ${documentId} (the write, not the read, is what is refused)`)
  const before = client.heads(documentId)
  const hash = client.change(documentId, fn, { actor, at })
  const outcome = await client.outcome(documentId, hash)
  assert.equal(outcome.accepted, false, `${person}'s forged change ${hash.slice(0, 8)} must be refused, but the server acknowledged it`)
  assert.ok(!outcome.unavailable, `a refused write gets an error, not doc-unavailable, for a document ${person} can read`)
  assert.equal(typeof outcome.refused, "string", `the server sends an error message before closing (close code ${outcome.closeCode}; received ${client.describeFrames()})`)
  // RULES_TRACE=1 prints each refusal, to check a test is refused for the reason it means.
  if (process.env.RULES_TRACE) console.log(`refused: ${outcome.refused}`)
  if (rule) assert.match(outcome.refused, rule, "the error names the rule")
  assert.ok(client.closed, "the server closes the refused connection")
  await expectNotStored(checker ?? person, documentId, hash, before)
  return outcome
}

/**
 * Checks from a fresh connection of `checker` that the server's copy of the
 * document does not contain `hash`, and (if given) has exactly `heads`.
 */
export async function expectNotStored(checker, urlOrId, hash, heads) {
  const read = await checker.read(urlOrId)
  assert.ok(read.available, `${checker} reads ${urlOrId} to check what was stored`)
  assert.equal(A.hasHeads(read.automerge, [hash]), false, `the refused change ${hash.slice(0, 8)} is not stored`)
  if (heads) assert.deepEqual([...read.heads].sort(), [...heads].sort(), "the server's heads are those before the refused change")
}

/**
 * `person` asks for a document and the server answers `doc-unavailable`
 * (nothing else about it arrives).
 */
export async function expectUnavailable(person, urlOrId) {
  const client = await person.forged()
  try {
    const documentId = documentIdOf(urlOrId)
    const { available } = await client.request(documentId)
    assert.equal(available, false, `${person} must get doc-unavailable for ${documentId}`)
    const leaked = client.receivedChangeHashes()
    assert.equal(leaked.size, 0, `no change of ${documentId} reaches ${person}`)
    return client
  } finally {
    await client.close()
  }
}

/**
 * `person` (who may not read the document) sends a `sync` carrying a change
 * for it, built on a blank local copy with the same id: the server answers
 * `doc-unavailable` and stores nothing (checked by `checker`).
 */
export async function expectWriteUnavailable(person, urlOrId, fields, { checker } = {}) {
  const documentId = documentIdOf(urlOrId)
  const before = checker ? (await checker.read(documentId)).heads : undefined
  const client = await person.forged()
  try {
    const { hash } = client.create(fields, { documentId, eager: true })
    const outcome = await client.outcome(documentId, hash)
    assert.equal(outcome.accepted, false, `${person}'s write to ${documentId} must not be accepted`)
    assert.equal(outcome.unavailable, true, `${person} gets doc-unavailable for ${documentId} (got ${JSON.stringify(outcome)}; received ${client.describeFrames()})`)
    if (checker) await expectNotStored(checker, documentId, hash, before)
  } finally {
    await client.close()
  }
}
