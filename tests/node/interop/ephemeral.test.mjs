// Interop: ephemeral messages (presence, typing) between stock
// automerge-repo clients through the real `backchannel` server. The stock
// client passes every ephemeral it receives back to the server under the
// original sender's id; the server must take that copy quietly.

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"

import {
  makeClient,
  randomId,
  shutdownAll,
  startBackchannelServer,
  waitFor,
  waitForPeer,
  waitUntilServerAcked,
  withTimeout,
} from "../lib/servers.mjs"
import { newPost, signUp } from "../lib/people.mjs"

const BINARY = process.env.BACKCHANNEL_BIN

describe("ephemeral messages with the stock client", () => {
  let server
  const repos = []

  before(async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "backchannel-ephemeral-"))
    server = await startBackchannelServer({ binary: BINARY, dataDir })
  })

  after(async () => {
    await shutdownAll(repos)
    await server?.stop()
  })

  test("a broadcast ephemeral reaches every other stock reader and no reader reconnects", async () => {
    const ada = await signUp(server.httpUrl, "ada")
    const adaRepo = makeClient(server.syncUrl(ada.access_token))
    repos.push(adaRepo)
    await waitForPeer(adaRepo)
    const post = newPost(adaRepo, ada, { title: "Who is coming?", body: "Saturday at ten" })
    assert.ok(await waitUntilServerAcked(adaRepo, post))

    const readers = []
    for (const name of ["bob", "cy", "dee"]) {
      const account = await signUp(server.httpUrl, name)
      const repo = makeClient(server.syncUrl(account.access_token))
      repos.push(repo)
      await waitForPeer(repo)
      const handle = await withTimeout(repo.find(post.url), 10_000, `${name} finds the post`)
      const reader = { name, account, repo, handle, heard: [], disconnects: 0 }
      handle.on("ephemeral-message", ({ message }) => reader.heard.push(message))
      repo.networkSubsystem.on("peer-disconnected", () => reader.disconnects++)
      readers.push(reader)
    }

    post.broadcast({ typing: ada.user.id })
    for (const reader of readers) {
      await waitFor(() => reader.heard.length > 0, { what: `${reader.name} hears ada typing` })
      assert.deepEqual(reader.heard[0], { typing: ada.user.id })
    }

    // Each reader passed the ephemeral back before writing this change; the
    // server acknowledging the change on the same connection shows that
    // copy did not close it.
    for (const reader of readers) {
      reader.handle.change(doc => {
        doc.replies.push({ id: randomId(12), author: reader.account.user.id, created_at: Date.now(), body: "me" })
      })
      assert.ok(await waitUntilServerAcked(reader.repo, reader.handle))
      assert.equal(reader.disconnects, 0, `${reader.name} was disconnected`)
    }
    // And nobody heard the broadcast twice (the server did not relay the copies).
    for (const reader of readers) assert.equal(reader.heard.length, 1, reader.name)
  })
})

describe("ephemeral limits set on the command line", () => {
  let server
  const repos = []

  before(async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "backchannel-ephemeral-limits-"))
    server = await startBackchannelServer({ binary: BINARY, dataDir, env: { BACKCHANNEL_EPHEMERAL_BYTES: "1000" } })
  })

  after(async () => {
    await shutdownAll(repos)
    await server?.stop()
  })

  test("an ephemeral over --ephemeral-bytes closes its sender and reaches no one; a small one still does", async () => {
    const ada = await signUp(server.httpUrl, "ada")
    const adaRepo = makeClient(server.syncUrl(ada.access_token))
    repos.push(adaRepo)
    await waitForPeer(adaRepo)
    const post = newPost(adaRepo, ada, { title: "Limits", body: "set by the operator" })
    assert.ok(await waitUntilServerAcked(adaRepo, post))
    const bob = await signUp(server.httpUrl, "bob")
    const bobRepo = makeClient(server.syncUrl(bob.access_token))
    repos.push(bobRepo)
    await waitForPeer(bobRepo)
    const handle = await withTimeout(bobRepo.find(post.url), 10_000, "bob finds the post")
    const heard = []
    handle.on("ephemeral-message", ({ message }) => heard.push(message))
    let disconnects = 0
    adaRepo.networkSubsystem.on("peer-disconnected", () => disconnects++)

    post.broadcast({ typing: "x".repeat(2_000) })
    await waitFor(() => disconnects > 0, { what: "ada's connection to close" })
    await waitForPeer(adaRepo)
    // Back in sync on the new connection before the next broadcast.
    post.change(doc => {
      doc.body = "set by the operator, again"
    })
    assert.ok(await waitUntilServerAcked(adaRepo, post))
    post.broadcast({ typing: ada.user.id })
    await waitFor(() => heard.length > 0, { what: "bob hears the small ephemeral" })
    assert.deepEqual(heard, [{ typing: ada.user.id }])
  })
})
