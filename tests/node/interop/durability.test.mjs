// Nothing acknowledged is lost: a server killed with SIGKILL in the middle of
// a write load and started again still has every change any client saw
// acknowledged (the server's heads, as the stock client tracks them by the
// server's storageId).

import { test } from "node:test"
import assert from "node:assert/strict"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"

import * as A from "@automerge/automerge"
import { decodeHeads } from "@automerge/automerge-repo"

import {
  makeClient,
  randomId,
  registerUser,
  serverStorageId,
  shutdownAll,
  sleep,
  startBackchannelServer,
  waitForPeer,
  waitUntilServerAcked,
  withTimeout,
} from "../lib/servers.mjs"

const BINARY = process.env.BACKCHANNEL_BIN
const PASSWORD = "durability password"

// The stock adapter, on losing its server, schedules a reconnect that
// `repo.shutdown()` does not cancel (WebSocketClientAdapter's onClose
// setTimeout), which would keep this process alive. Clients that see their
// server go away therefore retry quickly, and are disconnected once more
// after that retry has fired.
const RETRY_MS = 200

function clientThatMayLoseItsServer(url) {
  return makeClient(url, { retryIntervalMs: RETRY_MS })
}

async function shutdownAfterServerLoss(repos) {
  await shutdownAll(repos)
  await sleep(RETRY_MS * 3)
  for (const repo of repos) {
    for (const adapter of repo.networkSubsystem.adapters) {
      // Throws when no reconnect had been scheduled: nothing left to cancel.
      // A reconnect still CONNECTING makes `ws` emit an error when closed.
      adapter.socket?.on?.("error", () => {})
      try {
        adapter.disconnect()
      } catch {}
    }
  }
}

async function login(httpUrl, email) {
  const response = await fetch(new URL("/api/auth/login", httpUrl), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email, password: PASSWORD }),
  })
  assert.equal(response.status, 200, await response.clone().text())
  return response.json()
}

test("a server killed mid-write and restarted has every change a client saw acknowledged", async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "backchannel-durability-"))
  let server = await startBackchannelServer({ binary: BINARY, dataDir })
  const email = `writer-${randomId(6)}@example.org`.toLowerCase()
  const account = await registerUser(server.httpUrl, { email, password: PASSWORD, display_name: "Writer" })

  // Three writers (two devices of one user, plus a second document) load the server.
  const devices = [
    clientThatMayLoseItsServer(server.syncUrl(account.access_token)),
    clientThatMayLoseItsServer(server.syncUrl(account.access_token)),
  ]
  await Promise.all(devices.map(repo => waitForPeer(repo)))
  const storageId = serverStorageId(devices[0])
  const handles = devices.map(repo =>
    repo.create({ type: "post", schema: 1, author: account.user.id, created_at: Date.now(), status: "draft", title: "load", body: "", replies: [] }),
  )
  for (const [i, handle] of handles.entries()) await waitUntilServerAcked(devices[i], handle)

  // What the server acknowledged, per document: the reply ids at its last reported heads.
  const acknowledged = handles.map(() => new Set())
  // When each document's acknowledged heads last moved, for a stall's report.
  const started = Date.now()
  const lastAck = handles.map(() => ({ heads: "", at: started }))
  const observe = () => {
    handles.forEach((handle, i) => {
      const info = handle.getSyncInfo(storageId)
      if (!info) return
      const heads = JSON.stringify(info.lastHeads)
      if (heads !== lastAck[i].heads) lastAck[i] = { heads, at: Date.now() }
      const view = A.view(handle.doc(), decodeHeads(info.lastHeads))
      for (const reply of view.replies) acknowledged[i].add(reply.id)
    })
  }
  let writing = true
  const writers = handles.map(async handle => {
    while (writing) {
      handle.change(doc => {
        doc.replies.push({ id: randomId(10), author: account.user.id, created_at: Date.now(), body: "x" })
      })
      observe()
      await sleep(3)
    }
  })
  // Keep writing until the server has acknowledged a real load (not for a
  // fixed time: a slow machine only takes longer), then kill it mid-write.
  const loadAcknowledged = () => acknowledged.every(set => set.size > 10)
  const deadline = Date.now() + 60_000
  while (!loadAcknowledged() && Date.now() < deadline) await sleep(20)
  await sleep(200)
  await server.kill()
  writing = false
  await Promise.all(writers)
  observe()
  const counts = acknowledged.map(set => set.size)
  // Shut the clients down first: a failing assertion must not leave their
  // reconnect timers holding the process open.
  await shutdownAfterServerLoss(devices)
  const stalls = handles.map((handle, i) => {
    const written = handle.doc().replies.length
    const since = Date.now() - lastAck[i].at
    return `device ${i}: ${acknowledged[i].size} of ${written} replies acknowledged, last acknowledged heads ${lastAck[i].heads || "none"} ${since} ms ago (${lastAck[i].at - started} ms into the load)`
  })
  assert.ok(counts.every(n => n > 10), `the load was acknowledged before the kill: ${counts}\n${stalls.join("\n")}`)

  server = await startBackchannelServer({ binary: BINARY, dataDir })
  try {
    const again = await login(server.httpUrl, email)
    const reader = makeClient(server.syncUrl(again.access_token))
    await waitForPeer(reader)
    for (const [i, handle] of handles.entries()) {
      const recovered = await withTimeout(reader.find(handle.url), 15_000, "find after restart")
      const ids = new Set(recovered.doc().replies.map(reply => reply.id))
      const lost = [...acknowledged[i]].filter(id => !ids.has(id))
      assert.deepEqual(lost, [], `document ${i}: ${lost.length} acknowledged replies lost of ${acknowledged[i].size}`)
    }
    await shutdownAll([reader])
  } finally {
    await server.stop()
  }
})

test("SIGTERM with clients connected exits 0 promptly, and the clients resync after a restart", async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "backchannel-sigterm-"))
  let server = await startBackchannelServer({ binary: BINARY, dataDir })
  const email = `stay-${randomId(6)}@example.org`.toLowerCase()
  const account = await registerUser(server.httpUrl, { email, password: PASSWORD, display_name: "Stayer" })
  const repo = clientThatMayLoseItsServer(server.syncUrl(account.access_token))
  await waitForPeer(repo)
  const handle = repo.create({ type: "post", schema: 1, author: account.user.id, created_at: Date.now(), status: "draft", title: "kept", body: "", replies: [] })
  await waitUntilServerAcked(repo, handle)

  const started = Date.now()
  const exit = await server.stop({ graceMs: 9_000 })
  const log = () => `exit ${JSON.stringify(exit)}; server log:\n${server.stderrText().split("\n").slice(-30).join("\n")}`
  assert.equal(exit.escalated, false, `the server stopped by itself: ${log()}`)
  assert.equal(exit.code, 0, log())
  assert.ok(Date.now() - started < 5_000, `stopped in ${Date.now() - started} ms`)
  await shutdownAfterServerLoss([repo])

  server = await startBackchannelServer({ binary: BINARY, dataDir })
  try {
    const again = await login(server.httpUrl, email)
    const reader = makeClient(server.syncUrl(again.access_token))
    await waitForPeer(reader)
    const recovered = await withTimeout(reader.find(handle.url), 15_000, "find after restart")
    assert.equal(recovered.doc().title, "kept")
    await shutdownAll([reader])
  } finally {
    await server.stop()
  }
})
