// Bad input on /sync, from a hand-made client: each gets an `error` message
// or a refusal for that connection only, and a stock client beside it keeps
// syncing throughout.

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"

import * as A from "@automerge/automerge"
import { Encoder, decode } from "cbor-x"
import WebSocket from "ws"

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
// The stock client's encoder settings (automerge-repo helpers/cbor.ts).
const cbor = new Encoder({ tagUint8Array: false, useRecords: false })

/** A raw WebSocket that records what the server sends and how it ends. */
function rawSocket(url) {
  const socket = new WebSocket(url)
  socket.binaryType = "nodebuffer"
  const received = []
  const state = { socket, received, status: undefined, closed: false, closeCode: undefined }
  state.opened = new Promise((resolve, reject) => {
    socket.once("open", resolve)
    socket.once("unexpected-response", (_request, response) => {
      state.status = response.statusCode
      let body = ""
      response.on("data", chunk => (body += chunk))
      response.on("end", () => {
        state.body = body
        reject(Object.assign(new Error(`refused with ${response.statusCode}`), { status: response.statusCode, body }))
      })
    })
    socket.once("error", reject)
  })
  socket.on("message", data => received.push(decode(data)))
  state.ended = new Promise(resolve =>
    socket.once("close", code => {
      state.closed = true
      state.closeCode = code
      resolve()
    }),
  )
  return state
}

async function joinedSocket(server, token, peerId = `raw-${randomId(8)}`) {
  const raw = rawSocket(server.syncUrl(token))
  await raw.opened
  raw.socket.send(cbor.encode({ type: "join", senderId: peerId, peerMetadata: { storageId: undefined, isEphemeral: true }, supportedProtocolVersions: ["1"] }))
  await waitFor(() => raw.received.some(m => m.type === "peer"), { what: "peer reply" })
  raw.peerId = peerId
  return raw
}

async function expectErrorAndClose(raw, pattern) {
  await withTimeout(raw.ended, 10_000, "the server closes the connection")
  const error = raw.received.find(m => m.type === "error")
  assert.ok(error, `an error message arrives before the close: ${JSON.stringify(raw.received.map(m => m.type))}`)
  assert.match(error.message, pattern)
}

describe("bad input on /sync", () => {
  let server
  let account
  let bystander
  let bystanderPost

  before(async () => {
    server = await startBackchannelServer({ binary: BINARY, dataDir: fs.mkdtempSync(path.join(os.tmpdir(), "backchannel-bad-")) })
    account = await registerUser(server.httpUrl, { email: `raw-${randomId(6)}@example.org`.toLowerCase(), password: "bad input password", display_name: "Raw" })
    bystander = makeClient(server.syncUrl(account.access_token))
    await waitForPeer(bystander)
    bystanderPost = bystander.create({ type: "post", schema: 1, author: account.user.id, created_at: Date.now(), status: "draft", title: "still here", body: "", replies: [] })
    await waitUntilServerAcked(bystander, bystanderPost)
  })

  after(async () => {
    await shutdownAll([bystander])
    await server?.stop()
  })

  async function bystanderStillSyncs() {
    bystanderPost.change(doc => {
      doc.replies.push({ id: randomId(8), author: account.user.id, created_at: Date.now(), body: "still syncing" })
    })
    assert.ok(await waitUntilServerAcked(bystander, bystanderPost))
  }

  for (const [what, token] of [
    ["a missing token", undefined],
    ["a malformed token", "not-a-token"],
    ["a token signed by someone else", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"],
  ]) {
    test(`${what} gets 401 before any upgrade`, async () => {
      const url = token === undefined ? server.syncUrl("").replace(/\?token=$/, "") : server.syncUrl(token)
      const raw = rawSocket(url)
      await assert.rejects(raw.opened, error => error.status === 401)
      assert.equal(JSON.parse(raw.body).error.code.length > 0, true)
    })
  }

  test("garbage bytes get an error and a close", async () => {
    const raw = await joinedSocket(server, account.access_token)
    raw.socket.send(Buffer.from([0xff, 0x00, 0x13, 0x37]))
    await expectErrorAndClose(raw, /malformed message/)
    await bystanderStillSyncs()
  })

  test("truncated CBOR gets an error and a close", async () => {
    const raw = await joinedSocket(server, account.access_token)
    const whole = cbor.encode({ type: "request", senderId: raw.peerId, targetId: "server", documentId: "4NMNnkMhL8jXrdJ9jamS58PAVdXu", data: new Uint8Array([0x42, 0, 0]) })
    raw.socket.send(whole.subarray(0, whole.length - 5))
    await expectErrorAndClose(raw, /malformed message/)
    await bystanderStillSyncs()
  })

  test("a malformed document id gets an error and a close", async () => {
    const raw = await joinedSocket(server, account.access_token)
    raw.socket.send(cbor.encode({ type: "request", senderId: raw.peerId, targetId: "server", documentId: "not-a-document-id", data: new Uint8Array([0x42]) }))
    await expectErrorAndClose(raw, /document id/)
    await bystanderStillSyncs()
  })

  test("a text frame gets an error and a close", async () => {
    const raw = await joinedSocket(server, account.access_token)
    raw.socket.send("hello")
    await expectErrorAndClose(raw, /binary frames/)
  })

  test("a message over the size limit is refused and the connection closed", async () => {
    const raw = await joinedSocket(server, account.access_token)
    raw.socket.send(cbor.encode({ type: "sync", senderId: raw.peerId, targetId: "server", documentId: "4NMNnkMhL8jXrdJ9jamS58PAVdXu", data: new Uint8Array(9 * 1024 * 1024) }))
    await withTimeout(raw.ended, 15_000, "the server closes the oversized connection")
    assert.notEqual(raw.closeCode, 1000)
    await bystanderStillSyncs()
  })

  test("a flood is slowed, then closed", async () => {
    const raw = await joinedSocket(server, account.access_token)
    const message = cbor.encode({ type: "doc-unavailable", senderId: raw.peerId, targetId: "server", documentId: "4NMNnkMhL8jXrdJ9jamS58PAVdXu" })
    const started = Date.now()
    for (let i = 0; i < 8000 && !raw.closed; i++) {
      raw.socket.send(message)
      if (i % 500 === 0) await new Promise(resolve => setImmediate(resolve))
    }
    await expectErrorAndClose(raw, /flooding/)
    assert.ok(Date.now() - started > 2000, "the flood was slowed before it was cut off")
    await bystanderStillSyncs()
  })

  test("a peer id held by another user's connection is refused", async () => {
    const other = await registerUser(server.httpUrl, { email: `other-${randomId(6)}@example.org`.toLowerCase(), password: "bad input password", display_name: "Other" })
    const first = await joinedSocket(server, account.access_token, "shared-peer-id")
    const intruder = rawSocket(server.syncUrl(other.access_token))
    await intruder.opened
    intruder.socket.send(cbor.encode({ type: "join", senderId: "shared-peer-id", peerMetadata: {}, supportedProtocolVersions: ["1"] }))
    await expectErrorAndClose(intruder, /in use by another user/)
    assert.equal(first.closed, false)
    first.socket.close()
  })

  test("the same user joining again with a peer id replaces the older connection", async () => {
    const older = await joinedSocket(server, account.access_token, "my-phone")
    const newer = await joinedSocket(server, account.access_token, "my-phone")
    await withTimeout(older.ended, 10_000, "the older connection closes")
    assert.equal(newer.closed, false)
    newer.socket.close()
  })

  test("an unsupported protocol version gets an error", async () => {
    const raw = rawSocket(server.syncUrl(account.access_token))
    await raw.opened
    raw.socket.send(cbor.encode({ type: "join", senderId: "future-peer", peerMetadata: {}, supportedProtocolVersions: ["2"] }))
    await waitFor(() => raw.received.some(m => m.type === "error"), { what: "an error" })
    assert.match(raw.received.find(m => m.type === "error").message, /unsupported protocol version/)
    raw.socket.close()
  })

  test("logging out closes the session's live sync connections", async () => {
    const raw = await joinedSocket(server, account.access_token)
    const login = await fetch(new URL("/api/auth/login", server.httpUrl), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email: account.user.email, password: "bad input password" }),
    }).then(r => r.json())
    const sessionSocket = await joinedSocket(server, login.access_token)
    const logout = await fetch(new URL("/api/auth/logout", server.httpUrl), {
      method: "POST",
      headers: { authorization: `Bearer ${login.access_token}` },
    })
    assert.equal(logout.status, 204)
    await expectErrorAndClose(sessionSocket, /session has ended/)
    assert.equal(raw.closed, false, "other sessions stay connected")
    raw.socket.close()
  })
})

describe("a client that stops reading", () => {
  const SEND_TIMEOUT_SECS = 2
  let server
  let account
  let writer

  before(async () => {
    server = await startBackchannelServer({
      binary: BINARY,
      dataDir: fs.mkdtempSync(path.join(os.tmpdir(), "backchannel-stall-")),
      env: { BACKCHANNEL_SYNC_SEND_TIMEOUT_SECS: String(SEND_TIMEOUT_SECS) },
    })
    account = await registerUser(server.httpUrl, { email: `stall-${randomId(6)}@example.org`.toLowerCase(), password: "stalled reader password", display_name: "Stall" })
    writer = makeClient(server.syncUrl(account.access_token))
    await waitForPeer(writer)
  })

  after(async () => {
    await shutdownAll([writer])
    await server?.stop()
  })

  test("is closed after the send timeout, while everyone else keeps syncing", async () => {
    // Documents large enough that answering them fills every buffer between
    // the server and a client that reads nothing (loopback buffers hold MBs).
    const large = []
    for (let i = 0; i < 6; i++) {
      const blob = new Uint8Array(3 * 1024 * 1024)
      for (let offset = 0; offset < blob.length; offset += 65536) crypto.getRandomValues(blob.subarray(offset, offset + 65536))
      const handle = writer.create({ blob })
      assert.ok(await waitUntilServerAcked(writer, handle))
      large.push(handle.documentId)
    }
    const staller = await joinedSocket(server, account.access_token)
    staller.socket._socket.pause()
    const request = A.generateSyncMessage(A.init(), A.initSyncState())[1]
    for (const documentId of large) {
      staller.socket.send(cbor.encode({ type: "request", senderId: staller.peerId, targetId: "server", documentId, data: request }))
    }

    const closedFor = /read nothing for|fell too far behind/
    await waitFor(() => closedFor.test(server.stderrText()), { timeoutMs: 20_000, what: "the server to close the stalled reader" })
    const post = writer.create({ type: "post", schema: 1, author: account.user.id, created_at: Date.now(), status: "draft", title: "others keep syncing", body: "", replies: [] })
    assert.ok(await waitUntilServerAcked(writer, post))
    staller.socket._socket.resume()
    await withTimeout(staller.ended, 20_000, "the stalled reader's connection ends")
  })
})
