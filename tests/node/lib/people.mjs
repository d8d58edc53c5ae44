// Helpers for tests of the community features: accounts with roles (made
// with `backchannel user add`, as an operator would), the JSON API, the SPEC
// §4 document shapes, and waiting for a document to reach a state.

import fs from "node:fs"
import os from "node:os"
import path from "node:path"

import {
  addUserWithCli,
  apiSend,
  defaultBackchannelBinary,
  makeClient,
  randomId,
  waitForPeer,
  waitUntilServerAcked,
} from "./servers.mjs"

export const PASSWORD = "community password"

export function tempDir(name) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `backchannel-${name}-`))
}

/** `backchannel user add` (the server must not be running on dataDir). Resolves with the new id. */
export function addUser(dataDir, { email, name, role }, binary = process.env.BACKCHANNEL_BIN ?? defaultBackchannelBinary()) {
  return addUserWithCli({ binary, dataDir, email, name, role, password: PASSWORD })
}

/** A small JSON client for one server and (optionally) one access token. */
export function api(httpUrl, token) {
  const call = (method, pathname, body) => apiSend(httpUrl, method, pathname, token, body)
  return {
    get: p => call("GET", p),
    post: (p, body = {}) => call("POST", p, body),
    put: (p, body = {}) => call("PUT", p, body),
    delete: (p, body) => call("DELETE", p, body),
  }
}

export async function login(httpUrl, email) {
  const answer = await api(httpUrl).post("/api/auth/login", { email, password: PASSWORD })
  if (answer.status !== 200) throw new Error(`login ${email}: ${answer.status} ${answer.text}`)
  return answer.body
}

export async function signUp(httpUrl, name) {
  const email = `${name.replace(/\W+/g, "-")}-${randomId(8)}@example.org`.toLowerCase()
  const answer = await api(httpUrl).post("/api/auth/register", { email, password: PASSWORD, display_name: name })
  if (answer.status !== 201) throw new Error(`register ${email}: ${answer.status} ${answer.text}`)
  return { ...answer.body, email }
}

/** The `docs` of GET /api/me. */
export async function startDocs(httpUrl, account) {
  const answer = await api(httpUrl, account.access_token).get("/api/me")
  if (answer.status !== 200) throw new Error(`GET /api/me: ${answer.status} ${answer.text}`)
  return answer.body.docs
}

/** A stock client for `account`, connected (reconnecting quickly if closed). */
export async function connect(server, account) {
  const repo = makeClient(server.syncUrl(account.access_token), { retryIntervalMs: 200 })
  await waitForPeer(repo)
  return repo
}

export function newPost(repo, account, { status = "published", title = "Where is the meetup?", body = "I could not find it." } = {}) {
  return repo.create({
    type: "post",
    schema: 1,
    author: account.user.id,
    created_at: Date.now(),
    status,
    title,
    body,
    replies: [],
  })
}

export function reply(handle, account, body = "It is in the library.") {
  handle.change(doc => {
    doc.replies.push({ id: randomId(12), author: account.user.id, created_at: Date.now(), body })
  })
}

export function newConversation(repo, account, { kind = "question", subject = "A stupid question", body = "How do I change my name?", members } = {}) {
  const now = Date.now()
  return repo.create({
    type: "conversation",
    schema: 1,
    kind,
    opener: account.user.id,
    members: members ?? [account.user.id],
    subject,
    created_at: now,
    messages: [{ id: randomId(12), author: account.user.id, created_at: now, body }],
    state: "open",
    tags: [],
  })
}

export function sendMessage(handle, account, body = "Here is how.") {
  handle.change(doc => {
    doc.messages.push({ id: randomId(12), author: account.user.id, created_at: Date.now(), body })
  })
}

/**
 * Resolves with the document once `predicate(doc)` holds, checking on every
 * change; rejects after timeoutMs with `what` and the last document seen.
 */
export function waitForDoc(handle, predicate, { timeoutMs = 10_000, what = "the document to change" } = {}) {
  const check = () => {
    try {
      const doc = handle.doc()
      return doc && predicate(doc) ? doc : undefined
    } catch {
      return undefined
    }
  }
  const now = check()
  if (now) return Promise.resolve(now)
  return new Promise((resolve, reject) => {
    const poll = setInterval(() => {
      const doc = check()
      if (doc) done(resolve, doc)
    }, 20)
    const timer = setTimeout(() => {
      let last
      try {
        last = JSON.stringify(handle.doc())
      } catch {
        last = "(unreadable)"
      }
      done(reject, new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last seen: ${last?.slice(0, 600)}`))
    }, timeoutMs)
    const onChange = () => {
      const doc = check()
      if (doc) done(resolve, doc)
    }
    const done = (fn, value) => {
      clearInterval(poll)
      clearTimeout(timer)
      handle.off("change", onChange)
      fn(value)
    }
    handle.on("change", onChange)
  })
}

/**
 * Shuts the repos down for good: the stock adapter's reconnect timer survives
 * repo.shutdown() and would keep the process alive, so disconnect once more.
 */
export async function closeAll(repos) {
  for (const repo of repos) {
    for (const adapter of repo.networkSubsystem.adapters) adapter.socket?.on?.("error", () => {})
    try {
      await repo.shutdown()
    } catch {
      // a socket the server closed makes the stock shutdown throw
    }
    for (const adapter of repo.networkSubsystem.adapters) {
      adapter.socket?.on?.("error", () => {})
      try {
        adapter.disconnect()
      } catch {
        // already disconnected
      }
    }
  }
}

export { waitUntilServerAcked }
