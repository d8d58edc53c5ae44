// Interop: the stock @automerge/automerge-repo client (Node) against the real
// `backchannel` server. Documents are shaped as SPEC §4 posts, so these
// stories keep holding once the server enforces every §5 rule.

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"
import crypto from "node:crypto"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"

import {
  goOffline,
  goOnline,
  headsEqual,
  makeClient,
  randomId,
  registerUser,
  shutdownAll,
  startBackchannelServer,
  waitFor,
  waitForHeads,
  waitForPeer,
  waitUntilServerAcked,
  withTimeout,
} from "../lib/servers.mjs"

const BINARY = process.env.BACKCHANNEL_BIN
const PASSWORD = "interop password"

function tempDir(name) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `backchannel-${name}-`))
}

async function signUp(server, name) {
  const email = `${name}-${randomId(8)}@example.org`.toLowerCase()
  return registerUser(server.httpUrl, { email, password: PASSWORD, display_name: name })
}

async function connect(server, account, options = {}) {
  const repo = makeClient(server.syncUrl(account.access_token), options)
  await waitForPeer(repo)
  return repo
}

function newPost(repo, account, title = "A question about the meetup") {
  return repo.create({
    type: "post",
    schema: 1,
    author: account.user.id,
    created_at: Date.now(),
    status: "published",
    title,
    body: "Where do we meet?",
    replies: [],
  })
}

function reply(handle, account, body) {
  handle.change(doc => {
    doc.replies.push({ id: randomId(12), author: account.user.id, created_at: Date.now(), body })
  })
}

describe("the stock automerge-repo client against backchannel", () => {
  let server
  const repos = []
  const track = repo => (repos.push(repo), repo)

  before(async () => {
    server = await startBackchannelServer({ binary: BINARY, dataDir: tempDir("interop") })
  })

  after(async () => {
    await shutdownAll(repos)
    await server?.stop()
  })

  test("the server answers join with a peer carrying a stable storageId, not ephemeral", async () => {
    const ada = await signUp(server, "ada")
    const repo = track(makeClient(server.syncUrl(ada.access_token)))
    const { peerMetadata } = await waitForPeer(repo, 900)
    assert.equal(typeof peerMetadata.storageId, "string")
    assert.equal(peerMetadata.isEphemeral, false)
  })

  test("two users create, find and edit a document through the server", async () => {
    const ada = await signUp(server, "ada")
    const bob = await signUp(server, "bob")
    const adaRepo = track(await connect(server, ada))
    const bobRepo = track(await connect(server, bob))

    const post = newPost(adaRepo, ada)
    assert.ok(await waitUntilServerAcked(adaRepo, post))
    const bobsCopy = await withTimeout(bobRepo.find(post.url), 10_000, "bob finds the post")
    assert.equal(bobsCopy.doc().title, "A question about the meetup")

    reply(bobsCopy, bob, "At the library")
    await waitFor(() => post.doc().replies.length === 1, { what: "bob's reply reaches ada" })
    assert.equal(post.doc().replies[0].body, "At the library")
    assert.equal(post.doc().replies[0].author, bob.user.id)
  })

  test("a document another user may not read is unavailable to them", async () => {
    const ada = await signUp(server, "ada")
    const bob = await signUp(server, "bob")
    const adaRepo = track(await connect(server, ada))
    const bobRepo = track(await connect(server, bob))
    const draft = adaRepo.create({ type: "post", schema: 1, author: ada.user.id, created_at: Date.now(), status: "draft", title: "secret", body: "", replies: [] })
    await waitUntilServerAcked(adaRepo, draft)
    await assert.rejects(withTimeout(bobRepo.find(draft.url), 10_000, "find"), /unavailable/)
  })

  test("two users edit offline concurrently, reconnect, and converge with both edits", async () => {
    const ada = await signUp(server, "ada")
    const bob = await signUp(server, "bob")
    const adaRepo = track(await connect(server, ada))
    const bobRepo = track(await connect(server, bob))
    const post = newPost(adaRepo, ada)
    await waitUntilServerAcked(adaRepo, post)
    const bobsCopy = await bobRepo.find(post.url)

    goOffline(adaRepo)
    goOffline(bobRepo)
    reply(post, ada, "ada, offline")
    reply(bobsCopy, bob, "bob, offline")
    assert.ok(!headsEqual(post.heads(), bobsCopy.heads()))

    await goOnline(adaRepo)
    await goOnline(bobRepo)
    await waitFor(() => headsEqual(post.heads(), bobsCopy.heads()) && post.doc().replies.length === 2, {
      timeoutMs: 15_000,
      what: "both copies converge",
    })
    const bodies = post.doc().replies.map(r => r.body).sort()
    assert.deepEqual(bodies, ["ada, offline", "bob, offline"])
  })

  test("a document over 64 KiB syncs", async () => {
    const ada = await signUp(server, "ada")
    const phone = track(await connect(server, ada))
    const laptop = track(await connect(server, ada))
    // Random text, so compression keeps it large, in pieces within the
    // field lengths (docs/RULES.md): about 300 KiB in all.
    const words = () => crypto.randomBytes(14_000).toString("base64").slice(0, 18_000)
    const replies = Array.from({ length: 16 }, (_, i) => ({ id: `r${i}`, author: ada.user.id, created_at: Date.now(), body: words() }))
    const post = phone.create({ type: "post", schema: 1, author: ada.user.id, created_at: Date.now(), status: "draft", title: "big", body: words(), replies })
    await waitUntilServerAcked(phone, post, 20_000)
    const copy = await withTimeout(laptop.find(post.url), 20_000, "find the big doc")
    assert.equal(copy.doc().body, post.doc().body)
    assert.deepEqual(copy.doc().replies.map(r => r.body), replies.map(r => r.body))
  })

  test("a client offline for a long time with many changes catches up", async () => {
    const ada = await signUp(server, "ada")
    const phone = track(await connect(server, ada))
    const post = newPost(phone, ada)
    await waitUntilServerAcked(phone, post)
    const laptop = track(await connect(server, ada))
    const copy = await laptop.find(post.url)

    goOffline(phone)
    for (let i = 0; i < 1500; i++) reply(post, ada, `offline note ${i}`)
    await goOnline(phone)
    await waitForHeads(copy, post.heads(), 30_000)
    assert.equal(copy.doc().replies.length, 1500)
  })

  test("50 clients editing 20 documents concurrently converge", async () => {
    const accounts = []
    for (let i = 0; i < 50; i++) accounts.push(await signUp(server, `member${i}`))
    const clients = []
    for (const account of accounts) clients.push(track(await connect(server, account)))
    const posts = []
    for (let d = 0; d < 20; d++) posts.push(newPost(clients[d % clients.length], accounts[d % accounts.length], `post ${d}`))
    for (let d = 0; d < 20; d++) await waitUntilServerAcked(clients[d % clients.length], posts[d])

    const handles = await Promise.all(clients.map(repo => Promise.all(posts.map(p => repo.find(p.url)))))
    // Every change reaches the 49 other clients in this one Node process, so
    // the clients' CPU, not the server, bounds this story: keep it small.
    const perClient = 3
    for (let round = 0; round < perClient; round++) {
      clients.forEach((_, c) => reply(handles[c][(c + round) % posts.length], accounts[c], `c${c} r${round}`))
    }
    const expectedTotal = clients.length * perClient
    await waitFor(
      () => {
        const total = handles[0].reduce((sum, h) => sum + h.doc().replies.length, 0)
        if (total !== expectedTotal) return false
        return handles.every(row => row.every((h, d) => headsEqual(h.heads(), handles[0][d].heads())))
      },
      { timeoutMs: 120_000, intervalMs: 250, what: "all 50 clients converge on all 20 documents" },
    )
  })
})
