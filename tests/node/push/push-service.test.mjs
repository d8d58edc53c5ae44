// Self-test of the local Web Push service (tests/push/push_service.py) with an
// encoder that is neither the server's nor the service's: the npm `web-push`
// package. It proves that what the service accepts, decrypts and refuses is
// what RFC 8291/8292 say, before the server's pushes are judged by it.
//
// npm web-push's sendNotification() only speaks https, so the requests it
// builds (generateRequestDetails: encrypted body and headers, aud = the
// endpoint's origin with its port) are sent here with fetch.

import assert from "node:assert/strict"
import crypto from "node:crypto"
import { after, before, beforeEach, describe, test } from "node:test"
import webpush from "web-push"
import { startPushService } from "../lib/push-service.mjs"

const SUBJECT = "mailto:ops@example.com"

/** Sends the request npm web-push builds for `subscription` over plain http. */
async function send(subscription, payload, options, { authorization } = {}) {
  const details = webpush.generateRequestDetails(subscription, payload, { contentEncoding: "aes128gcm", ...options })
  const headers = { ...details.headers }
  delete headers["Content-Length"] // fetch sets it
  if (authorization) headers.Authorization = authorization
  const res = await fetch(details.endpoint, { method: details.method, headers, body: details.body })
  await res.arrayBuffer()
  return res
}

/** `vapid t=<ES256 JWT of claims>, k=<public key>`, signed with node:crypto (for claims web-push won't sign). */
function vapidHeader(claims, keys) {
  const pub = Buffer.from(keys.publicKey, "base64url")
  const key = crypto.createPrivateKey({
    format: "jwk",
    key: {
      kty: "EC",
      crv: "P-256",
      x: pub.subarray(1, 33).toString("base64url"),
      y: pub.subarray(33).toString("base64url"),
      d: keys.privateKey,
    },
  })
  const part = obj => Buffer.from(JSON.stringify(obj)).toString("base64url")
  const input = `${part({ typ: "JWT", alg: "ES256" })}.${part(claims)}`
  const sig = crypto.sign("sha256", Buffer.from(input), { key, dsaEncoding: "ieee-p1363" })
  return `vapid t=${input}.${sig.toString("base64url")}, k=${keys.publicKey}`
}

function vapid(keys) {
  return { vapidDetails: { subject: SUBJECT, publicKey: keys.publicKey, privateKey: keys.privateKey } }
}

describe("local push service against npm web-push", () => {
  let service
  let keys

  before(async () => {
    service = await startPushService()
    keys = webpush.generateVAPIDKeys()
  })
  after(async () => {
    await service?.stop()
  })
  beforeEach(async () => {
    await service.clear()
  })

  test("subscriptions look like a browser's PushSubscription.toJSON()", async () => {
    const { id, subscription } = await service.subscribe(keys.publicKey)
    assert.equal(subscription.endpoint, `${service.origin}/push/${id}`)
    assert.match(service.origin, /^http:\/\/127\.0\.0\.1:\d+$/)
    const p256dh = Buffer.from(subscription.keys.p256dh, "base64url")
    assert.equal(p256dh.length, 65)
    assert.equal(p256dh[0], 4)
    assert.equal(Buffer.from(subscription.keys.auth, "base64url").length, 16)
    const other = await service.subscribe(keys.publicKey)
    assert.notEqual(other.id, id)
    assert.notEqual(other.subscription.keys.p256dh, subscription.keys.p256dh)
  })

  test("a push is decrypted to the same JSON and recorded with its headers", async () => {
    const { id, subscription } = await service.subscribe(keys.publicKey)
    const message = { kind: "reply", thread: "t-42", title: "Ünïcödé ✓", body: "x".repeat(500) }
    const res = await send(subscription, JSON.stringify(message), {
      ...vapid(keys),
      TTL: 3600,
      urgency: "high",
      topic: "thread-t42",
    })
    assert.equal(res.status, 201)
    assert.match(res.headers.get("location"), new RegExp(`^${service.origin}/message/`))

    const [record] = await service.waitForPushes(1, { subscription: id })
    assert.equal(record.subscription, id)
    assert.equal(record.status, 201)
    assert.equal(record.error, null)
    assert.deepEqual(record.payload, message)
    assert.equal(record.ttl, 3600)
    assert.equal(record.urgency, "high")
    assert.equal(record.topic, "thread-t42")
    assert.equal(record.claims.aud, service.origin)
    assert.equal(record.claims.sub, SUBJECT)
    const now = Date.now() / 1000
    assert.ok(record.claims.exp > now && record.claims.exp <= now + 24 * 3600)
    assert.ok(Math.abs(record.received_at - Date.now()) < 10000)
    assert.deepEqual(await service.errors(), [])
  })

  test("a push signed with another VAPID key than the subscription's is refused and recorded", async () => {
    const { id, subscription } = await service.subscribe(keys.publicKey)
    const stranger = webpush.generateVAPIDKeys()
    const res = await send(subscription, JSON.stringify({ hi: 1 }), { ...vapid(stranger), TTL: 60 })
    assert.equal(res.status, 403)
    const [record] = await service.waitForPushes(1, { subscription: id })
    assert.equal(record.status, 403)
    assert.equal(record.payload, null)
    assert.match(record.error, /application server key/)
    assert.deepEqual(await service.errors(), [record])
  })

  test("a JWT signed by another key but claiming the subscription's k is refused", async () => {
    const { id, subscription } = await service.subscribe(keys.publicKey)
    const stranger = webpush.generateVAPIDKeys()
    const forged = webpush.getVapidHeaders(service.origin, SUBJECT, keys.publicKey, stranger.privateKey, "aes128gcm")
    const res = await send(subscription, JSON.stringify({ hi: 1 }), { ...vapid(keys), TTL: 60 }, {
      authorization: forged.Authorization,
    })
    assert.equal(res.status, 401)
    const [record] = await service.waitForPushes(1, { subscription: id })
    assert.match(record.error, /signature/)
  })

  test("a JWT whose aud is not the service's exact origin is refused", async () => {
    const { id, subscription } = await service.subscribe(keys.publicKey)
    for (const audience of ["http://127.0.0.1", `https://127.0.0.1:${service.port}`, "http://push.example.com"]) {
      const header = webpush.getVapidHeaders(audience, SUBJECT, keys.publicKey, keys.privateKey, "aes128gcm")
      const res = await send(subscription, JSON.stringify({ hi: 1 }), { ...vapid(keys), TTL: 60 }, {
        authorization: header.Authorization,
      })
      assert.equal(res.status, 401, audience)
    }
    const records = await service.waitForPushes(3, { subscription: id })
    for (const record of records) {
      assert.match(record.error, /aud/)
      assert.notEqual(record.claims.aud, service.origin)
    }
  })

  test("exp must be in the future and at most 24 h ahead; sub must be mailto: or http(s):", async () => {
    const { id, subscription } = await service.subscribe(keys.publicKey)
    const now = Math.floor(Date.now() / 1000)
    const cases = [
      [{ aud: service.origin, exp: now + 3600, sub: "https://backchannel.example" }, 201],
      [{ aud: service.origin, exp: now - 10, sub: SUBJECT }, 401],
      [{ aud: service.origin, exp: now + 25 * 3600, sub: SUBJECT }, 401],
      [{ aud: service.origin, exp: now + 3600, sub: "ops@example.com" }, 401],
      [{ aud: service.origin, exp: now + 3600 }, 401],
    ]
    for (const [claims, status] of cases) {
      const res = await send(subscription, JSON.stringify({ ok: 1 }), { ...vapid(keys), TTL: 60 }, {
        authorization: vapidHeader(claims, keys),
      })
      assert.equal(res.status, status, JSON.stringify(claims))
    }
    const records = await service.waitForPushes(cases.length, { subscription: id })
    assert.deepEqual(
      records.map(r => r.error && r.error.match(/JWT (\w+)/)[1]),
      [null, "exp", "exp", "sub", "sub"],
    )
    assert.deepEqual(records[1].claims, cases[1][0])
  })

  test("a missing TTL, a non-JSON payload and a missing Authorization are refused", async () => {
    const { id, subscription } = await service.subscribe(keys.publicKey)
    const details = webpush.generateRequestDetails(subscription, JSON.stringify({ ok: true }), {
      ...vapid(keys),
      contentEncoding: "aes128gcm",
    })
    const { "Content-Length": _length, TTL: _ttl, ...noTtl } = details.headers
    let res = await fetch(details.endpoint, { method: "POST", headers: noTtl, body: details.body })
    assert.equal(res.status, 400)
    res = await send(subscription, "not json", { ...vapid(keys), TTL: 60 })
    assert.equal(res.status, 400)
    const { Authorization: _auth, ...noAuth } = noTtl
    res = await fetch(details.endpoint, { method: "POST", headers: { ...noAuth, TTL: "60" }, body: details.body })
    assert.equal(res.status, 401)
    const errors = (await service.errors()).map(e => e.error)
    assert.equal(errors.length, 3)
    assert.match(errors[0], /TTL/)
    assert.match(errors[1], /not UTF-8 JSON/)
    assert.match(errors[2], /Authorization/)
  })

  test("scripted answers reach the sender: 503 with Retry-After, then a sticky 410", async () => {
    const { id, subscription } = await service.subscribe(keys.publicKey)
    await service.script(id, [{ status: 503, retry_after: "2" }, { status: 201 }, { status: 410, sticky: true }])
    const statuses = []
    for (let i = 0; i < 4; i++) {
      const res = await send(subscription, JSON.stringify({ n: i }), { ...vapid(keys), TTL: 60 })
      statuses.push(res.status)
      if (i === 0) assert.equal(res.headers.get("retry-after"), "2")
      else assert.equal(res.headers.get("retry-after"), null)
    }
    assert.deepEqual(statuses, [503, 201, 410, 410])
    const records = await service.waitForPushes(4, { subscription: id })
    assert.deepEqual(records.map(r => r.status), [503, 201, 410, 410])
    assert.deepEqual(records.map(r => r.payload.n), [0, 1, 2, 3])
    assert.ok(records.every(r => r.error === null))
  })

  test("a slow answer for one subscription does not hold up another", async () => {
    const slow = await service.subscribe(keys.publicKey)
    const fast = await service.subscribe(keys.publicKey)
    await service.script(slow.id, [{ status: 201, delay_ms: 2000 }])
    const started = Date.now()
    let slowAnswered = false
    const slowDone = send(slow.subscription, JSON.stringify({ slow: true }), { ...vapid(keys), TTL: 60 }).then(res => {
      slowAnswered = true
      return res
    })
    await service.waitForPushes(1, { subscription: slow.id }) // recorded, now sleeping before it answers
    const fastRes = await send(fast.subscription, JSON.stringify({ fast: true }), { ...vapid(keys), TTL: 60 })
    assert.equal(fastRes.status, 201)
    assert.equal(slowAnswered, false, "the fast push was answered only after the slow one")
    assert.equal((await slowDone).status, 201)
    assert.ok(Date.now() - started >= 1900)
    assert.equal((await service.pushes()).length, 2)
    assert.equal((await service.pushes(fast.id)).length, 1)
  })

  test("waitForPushes reports what arrived when it times out", async () => {
    const { id, subscription } = await service.subscribe(keys.publicKey)
    await send(subscription, JSON.stringify({ only: 1 }), { ...vapid(keys), TTL: 60 })
    await assert.rejects(
      service.waitForPushes(records => records.some(r => r.payload?.only === 2), { subscription: id, timeoutMs: 300 }),
      /timed out after 300 ms waiting for the predicate[\s\S]*"only": 1/,
    )
  })
})
