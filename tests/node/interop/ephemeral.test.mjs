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
  registerUser,
  shutdownAll,
  startBackchannelServer,
  waitFor,
  waitForPeer,
  waitUntilServerAcked,
  withTimeout,
} from "../lib/servers.mjs"

const BINARY = process.env.BACKCHANNEL_BIN
const PASSWORD = "interop password"

async function signUp(server, name) {
  const email = `${name}-${randomId(8)}@example.org`.toLowerCase()
  return registerUser(server.httpUrl, { email, password: PASSWORD, display_name: name })
}

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
    const ada = await signUp(server, "ada")
    const adaRepo = makeClient(server.syncUrl(ada.access_token))
    repos.push(adaRepo)
    await waitForPeer(adaRepo)
    const post = adaRepo.create({
      type: "post",
      schema: 1,
      author: ada.user.id,
      created_at: Date.now(),
      status: "published",
      title: "Who is coming?",
      body: "Saturday at ten",
      replies: [],
    })
    assert.ok(await waitUntilServerAcked(adaRepo, post))

    const readers = []
    for (const name of ["bob", "cy", "dee"]) {
      const account = await signUp(server, name)
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
