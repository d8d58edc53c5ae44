// Web Push end to end (SPEC §6): the real binary sends to a local push
// service (tests/push/push_service.py) that checks each request's VAPID JWT
// with py-vapid and decrypts its payload with http-ece, independently of the
// server's own code. People act through the stock automerge-repo client.

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"
import path from "node:path"

import { startBackchannelServer, sleep } from "../lib/servers.mjs"
import { startPushService } from "../lib/push-service.mjs"
import {
  addUser,
  api,
  closeAll,
  connect,
  login,
  newConversation,
  newPost,
  reply,
  signUp,
  tempDir,
  waitUntilServerAcked,
} from "../lib/people.mjs"

const BINARY = process.env.BACKCHANNEL_BIN
/** How long a push that should not come is given to come anyway. */
const QUIET_MS = 1500

describe("push notifications", () => {
  let dataDir
  let server
  let service
  let publicKey
  let mia // manager
  let max // manager
  const repos = []

  const serverEnv = () => ({
    BACKCHANNEL_PUSH_INSECURE_HOSTS: "127.0.0.1",
    BACKCHANNEL_PUSH_CONTACT: "mailto:ops@example.org",
    ...(process.env.SERVER_RUST_LOG ? { RUST_LOG: process.env.SERVER_RUST_LOG } : {}),
  })

  const startServer = () => startBackchannelServer({ binary: BINARY, dataDir, env: serverEnv() })

  /** A new device of `account`, subscribed through the API like the PWA does. */
  async function device(account) {
    const { id, subscription } = await service.subscribe(publicKey)
    const answer = await api(server.httpUrl, account.access_token).post("/api/push/subscriptions", subscription)
    assert.equal(answer.status, 201, answer.text)
    return id
  }

  /** A post by `author`, stored on the server, then closed on the author's side. */
  async function postBy(author, title = "Meetup venue") {
    const repo = await connect(server, author)
    const handle = newPost(repo, author, { title })
    await waitUntilServerAcked(repo, handle)
    await closeAll([repo])
    await sleep(300) // the server sees the connection end
    return handle.documentId
  }

  /** `account` replies on post `id` with a fresh connection, closed afterwards. */
  async function replyTo(account, id, body) {
    const repo = await connect(server, account)
    const handle = await repo.find(`automerge:${id}`)
    reply(handle, account, body)
    await waitUntilServerAcked(repo, handle)
    await closeAll([repo])
  }

  before(async () => {
    dataDir = path.join(tempDir("push"), "data")
    await addUser(dataDir, { email: "mia@example.org", name: "Mia", role: "manager" }, BINARY)
    await addUser(dataDir, { email: "max@example.org", name: "Max", role: "manager" }, BINARY)
    service = await startPushService()
    server = await startServer()
    mia = await login(server.httpUrl, "mia@example.org")
    max = await login(server.httpUrl, "max@example.org")
    publicKey = (await api(server.httpUrl).get("/api/push/public-key")).body.public_key
  })

  after(async () => {
    await closeAll(repos)
    if (process.env.SHOW_SERVER_LOG) console.log(server?.stderrText())
    await server?.stop()
    await service?.stop()
  })

  test("a reply pushes exactly one notification to the post's author and none to the replier", async () => {
    const ada = await signUp(server.httpUrl, "Ada")
    const bob = await signUp(server.httpUrl, "Bob")
    const adaPhone = await device(ada)
    const bobPhone = await device(bob)
    const post = await postBy(ada, "Meetup venue")

    await replyTo(bob, post, "It is in the library, second floor.")

    const [push] = await service.waitForPushes(1, { subscription: adaPhone })
    assert.equal(push.error, null)
    assert.equal(push.status, 201)
    assert.deepEqual(Object.keys(push.payload).sort(), ["body", "tag", "title", "url"])
    assert.equal(push.payload.tag, post)
    assert.match(push.payload.title, /Meetup venue/)
    assert.equal(push.payload.body, "Bob: It is in the library, second floor.")
    assert.equal(push.payload.url, `${server.httpUrl}/#/post/${post}`)
    assert.equal(push.urgency, "normal")
    assert.equal(push.topic, post)
    assert.ok(push.ttl > 86_000 && push.ttl <= 86_400, `TTL ${push.ttl}`)
    assert.equal(push.claims.sub, "mailto:ops@example.org")
    assert.equal(push.claims.aud, service.origin)

    await sleep(QUIET_MS)
    assert.equal((await service.pushes(adaPhone)).length, 1)
    assert.deepEqual(await service.pushes(bobPhone), [])
    assert.deepEqual(await service.errors(), [])
  })

  test("a new flag reaches every manager at once with high urgency, and not its opener", async () => {
    const cy = await signUp(server.httpUrl, "Cy")
    const cyPhone = await device(cy)
    const miaPhone = await device(mia)
    const maxPhone = await device(max)
    const repo = await connect(server, cy)
    repos.push(repo)
    const flag = newConversation(repo, cy, { kind: "flag", subject: "A thread went wrong", body: "Please look at the meetup thread." })
    await waitUntilServerAcked(repo, flag)

    for (const phone of [miaPhone, maxPhone]) {
      const [push] = await service.waitForPushes(1, { subscription: phone })
      assert.equal(push.urgency, "high")
      assert.equal(push.payload.tag, flag.documentId)
      assert.equal(push.payload.title, "New flag: A thread went wrong")
      assert.equal(push.payload.body, "Cy: Please look at the meetup thread.")
      assert.equal(push.payload.url, `${server.httpUrl}/#/conversation/${flag.documentId}`)
    }
        await sleep(QUIET_MS)
    assert.deepEqual(await service.pushes(cyPhone), [], "the opener has the conversation open and wrote it")
    // A conversation is muted only by its readers; to others it does not exist.
    const outsider = await signUp(server.httpUrl, "Outsider")
    const refused = await api(server.httpUrl, outsider.access_token).put(`/api/mutes/${flag.documentId}`)
    assert.equal(refused.status, 404, refused.text)
    const muted = await api(server.httpUrl, max.access_token).put(`/api/mutes/automerge:${flag.documentId}`)
    assert.equal(muted.status, 204, muted.text)
    assert.equal((await service.pushes(miaPhone)).length, 1)
  })

  test("a muted thread pushes nothing while an unmuted one still does", async () => {
    const dee = await signUp(server.httpUrl, "Dee")
    const eve = await signUp(server.httpUrl, "Eve")
    const deePhone = await device(dee)
    const muted = await postBy(dee, "Muted thread")
    const heard = await postBy(dee, "Heard thread")
    const mute = await api(server.httpUrl, dee.access_token).put(`/api/mutes/${muted}`)
    assert.equal(mute.status, 204, mute.text)

    await replyTo(eve, muted, "first")
    await replyTo(eve, heard, "second")

    const pushes = await service.waitForPushes(1, { subscription: deePhone })
    await sleep(QUIET_MS)
    assert.deepEqual((await service.pushes(deePhone)).map(p => p.payload.tag), [heard])
    assert.equal(pushes[0].payload.tag, heard)

    const unmute = await api(server.httpUrl, dee.access_token).delete(`/api/mutes/${muted}`)
    assert.equal(unmute.status, 204, unmute.text)
    await replyTo(eve, muted, "third")
    await service.waitForPushes(records => records.some(p => p.payload?.tag === muted), { subscription: deePhone })
  })

  test("nobody is pushed about a document they have open right now", async () => {
    const fay = await signUp(server.httpUrl, "Fay")
    const gus = await signUp(server.httpUrl, "Gus")
    const fayPhone = await device(fay)
    const fayRepo = await connect(server, fay)
    const handle = newPost(fayRepo, fay, { title: "Open thread" })
    await waitUntilServerAcked(fayRepo, handle)

    await replyTo(gus, handle.documentId, "while you look")
    await sleep(QUIET_MS)
    assert.deepEqual(await service.pushes(fayPhone), [])

    await closeAll([fayRepo])
    await sleep(300)
    await replyTo(gus, handle.documentId, "after you left")
    const [push] = await service.waitForPushes(1, { subscription: fayPhone })
    assert.equal(push.payload.body, "Gus: after you left")
  })

  test("a 410 deletes the subscription: that device is never contacted again", async () => {
    const hal = await signUp(server.httpUrl, "Hal")
    const ivy = await signUp(server.httpUrl, "Ivy")
    const oldPhone = await device(hal)
    const newPhone = await device(hal)
    await service.script(oldPhone, [{ status: 410, sticky: true }])
    const post = await postBy(hal, "Gone device")

    await replyTo(ivy, post, "one")
    await service.waitForPushes(1, { subscription: oldPhone })
    await service.waitForPushes(1, { subscription: newPhone })
    await replyTo(ivy, post, "two")
    await service.waitForPushes(2, { subscription: newPhone })
    await sleep(QUIET_MS)
    const attempts = await service.pushes(oldPhone)
    assert.deepEqual(attempts.map(p => p.status), [410])
  })

  test("a 503 with Retry-After is retried after the time it asks for", async () => {
    const jo = await signUp(server.httpUrl, "Jo")
    const kim = await signUp(server.httpUrl, "Kim")
    const phone = await device(jo)
    await service.script(phone, [{ status: 503, retry_after: "2" }])
    const post = await postBy(jo, "Busy service")

    await replyTo(kim, post, "are you there?")
    const [first, second] = await service.waitForPushes(2, { subscription: phone, timeoutMs: 15_000 })
    assert.equal(first.status, 503)
    assert.equal(second.status, 201)
    assert.deepEqual(second.payload, first.payload)
    assert.ok(second.received_at - first.received_at >= 1900, `retried after ${second.received_at - first.received_at} ms`)
  })

  test("signing out removes that session's device", async () => {
    const lou = await signUp(server.httpUrl, "Lou")
    const mo = await signUp(server.httpUrl, "Mo")
    const phone = await device(lou)
    const post = await postBy(lou, "Signed out")
    const out = await api(server.httpUrl, lou.access_token).post("/api/auth/logout")
    assert.equal(out.status, 204, out.text)

    await replyTo(mo, post, "hello?")
    await sleep(QUIET_MS)
    assert.deepEqual(await service.pushes(phone), [])
  })

  test("a promoted question tells its opener", async () => {
    const ned = await signUp(server.httpUrl, "Ned")
    const phone = await device(ned)
    const repo = await connect(server, ned)
    const question = newConversation(repo, ned, { subject: "How do refunds work?" })
    question.change(doc => {
      doc.publish = { consent: true, anonymous: false }
    })
    await waitUntilServerAcked(repo, question)
    await closeAll([repo])

    const promoted = await api(server.httpUrl, mia.access_token).post(`/api/conversations/${question.documentId}/promote`)
    assert.equal(promoted.status, 201, promoted.text)
    const postId = promoted.body.url.replace("automerge:", "")
    const pushes = await service.waitForPushes(records => records.some(p => p.payload?.tag === postId), { subscription: phone })
    const push = pushes.find(p => p.payload?.tag === postId)
    assert.equal(push.payload.title, "Your question is now public")
    assert.equal(push.payload.url, `${server.httpUrl}/#/post/${postId}`)
  })

  test("a slow push service holds up only its own devices", async () => {
    const slowService = await startPushService()
    try {
      const sal = await signUp(server.httpUrl, "Sal")
      const fin = await signUp(server.httpUrl, "Fin")
      const tim = await signUp(server.httpUrl, "Tim")
      // More slow devices than requests the server keeps in flight per service.
      const slowPhones = []
      for (let n = 0; n < 20; n += 1) {
        const { id, subscription } = await slowService.subscribe(publicKey)
        const answer = await api(server.httpUrl, sal.access_token).post("/api/push/subscriptions", subscription)
        assert.equal(answer.status, 201, answer.text)
        await slowService.script(id, [{ status: 201, delay_ms: 6000, sticky: true }])
        slowPhones.push(id)
      }
      const finPhone = await device(fin)
      const post = await postBy(sal, "Slow and fast")
      await replyTo(fin, post, "first!")
      await sleep(QUIET_MS) // Fin's own reply notifies Sal's slow phones only
      const firstSlow = Math.min(...(await slowService.pushes()).map(p => p.received_at))

      await replyTo(tim, post, "hello both")
      const [fast] = await service.waitForPushes(1, { subscription: finPhone })
      assert.equal(fast.payload.body, "Tim: hello both")
      assert.ok(fast.received_at < firstSlow + 6000, "the fast service waited for the slow one")
      const all = await slowService.waitForPushes(40, { timeoutMs: 40_000 })
      assert.deepEqual(all.filter(p => p.error !== null), [])
    } finally {
      await slowService.stop()
    }
  })

  test("a restart delivers the notifications still pending", async () => {
    const pat = await signUp(server.httpUrl, "Pat")
    const quin = await signUp(server.httpUrl, "Quin")
    const phone = await device(pat)
    await service.script(phone, [{ status: 503, retry_after: "3" }])
    const post = await postBy(pat, "Pending over a restart")

    await replyTo(quin, post, "still there after the restart?")
    const [first] = await service.waitForPushes(1, { subscription: phone })
    assert.equal(first.status, 503)
    server.kill("SIGKILL")
    await sleep(200)
    const restartedAt = Date.now()
    server = await startServer()

    const records = await service.waitForPushes(2, { subscription: phone, timeoutMs: 20_000 })
    const delivered = records.filter(p => p.status === 201)
    assert.equal(delivered.length, 1, JSON.stringify(records))
    assert.equal(delivered[0].payload.body, "Quin: still there after the restart?")
    assert.ok(delivered[0].received_at >= restartedAt)
  })
})
