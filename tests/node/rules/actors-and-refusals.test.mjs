// SPEC §3 on refusals and actor binding: an actor id belongs to the first
// user who sent a change made by it; a sync message with any change that
// breaks a rule is refused whole (nothing stored, nothing relayed), the
// server sends an `error` naming the rule and closes that connection only.

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"

import * as A from "@automerge/automerge"

import { actorsOf, randomActor } from "../lib/forged-client.mjs"
import { expectAllowed, expectNotStored, expectRefused, post, reply, startCommunity } from "../lib/community.mjs"
import { sleep, withTimeout } from "../lib/servers.mjs"

describe("actor binding", () => {
  let community
  let ada
  let bob
  let cy

  before(async () => {
    community = await startCommunity({ label: "actors" })
    ada = await community.signUp("Ada")
    bob = await community.signUp("Bob")
    cy = await community.signUp("Cy")
  })

  after(async () => {
    await community?.close()
  })

  test("replaying another user's actor id is refused", async () => {
    const { url } = await ada.create(post(ada))
    const client = await bob.forged()
    await client.request(url)
    const [adasActor] = actorsOf(client.doc(url)).keys()
    client.close()
    await expectRefused(bob, url, d => {
      d.replies.push(reply(bob, "signed with Ada's actor"))
    }, { actor: adasActor, rule: /actor/i, checker: ada })
  })

  test("replaying another user's actor on a document they never touched is refused", async () => {
    const { url: adas } = await ada.create(post(ada))
    const client = await bob.forged()
    await client.request(adas)
    const [adasActor] = actorsOf(client.doc(adas)).keys()
    await client.close()
    const { url: bobs } = await bob.create(post(bob))
    await expectRefused(cy, bobs, d => {
      d.replies.push(reply(cy, "with Ada's actor, elsewhere"))
    }, { actor: adasActor, rule: /actor/i, checker: bob })
  })

  test("a user's own actor works from another connection", async () => {
    const actor = randomActor()
    const { url } = await ada.create(post(ada))
    const first = await bob.forged({ actor })
    await first.request(url)
    const one = first.change(url, d => {
      d.replies.push(reply(bob, "from the phone"))
    })
    assert.deepEqual(await first.outcome(url, one), { accepted: true })
    await first.close()
    const second = await bob.forged({ actor })
    await second.request(url)
    const two = second.change(url, d => {
      d.replies.push(reply(bob, "from the laptop, same actor"))
    })
    assert.deepEqual(await second.outcome(url, two), { accepted: true })
  })

  test("an actor first sent in a refused message binds no one, so its first accepted change binds it", async () => {
    const actor = randomActor()
    const { url } = await ada.create(post(ada))
    // Bob's first change with this actor breaks a rule: refused, and nothing is bound.
    await expectRefused(bob, url, d => {
      d.title = "not Bob's to change"
    }, { actor, checker: ada })
    // Cy's honest reply made with that same actor lands, and the actor is Cy's.
    const honest = await cy.forged({ actor })
    await honest.request(url)
    const hash = honest.change(url, d => {
      d.replies.push(reply(cy, "an honest reply with an actor Bob tried first"))
    })
    assert.deepEqual(await honest.outcome(url, hash), { accepted: true })
    await honest.close()
    // Now Bob's honest reply with it is refused for the actor.
    await expectRefused(bob, url, d => {
      d.replies.push(reply(bob, "a reply with Cy's actor"))
    }, { actor, rule: /actor/i, checker: ada })
  })

  test("the stock client's fresh actors are accepted for everyone", async () => {
    const { url } = await ada.create(post(ada))
    for (const person of [bob, cy]) {
      await expectAllowed(person, url, d => {
        d.replies.push(reply(person, `hello from ${person.name}`))
      }, { checker: ada })
    }
  })
})

describe("a refused message", () => {
  let community
  let ada
  let bob

  before(async () => {
    community = await startCommunity({ label: "refusals" })
    ada = await community.signUp("Ada")
    bob = await community.signUp("Bob")
  })

  after(async () => {
    await community?.close()
  })

  test("is refused whole: a valid change sent with an invalid one is not stored either", async () => {
    const { url, heads } = await ada.create(post(ada))
    const client = await bob.forged()
    await client.request(url)
    const good = client.change(url, d => {
      d.replies.push(reply(bob, "a perfectly fine reply"))
    }, { send: false })
    const bad = client.change(url, d => {
      d.title = "and a hijacked title"
    }, { send: false })
    client.sync(url)
    const carried = client.sentChangeHashes().at(-1)
    assert.ok(carried.includes(good) && carried.includes(bad), "both changes travel in one sync message")
    const outcome = await client.outcome(url, bad)
    assert.equal(outcome.accepted, false)
    assert.match(outcome.refused ?? "", /title/i)
    assert.ok(client.sent.filter(s => s.message.type === "sync").length >= 1)
    await expectNotStored(ada, url, good, heads)
    await expectNotStored(ada, url, bad, heads)
  })

  test("is not relayed to other readers of the document", async () => {
    const { url } = await ada.create(post(ada))
    const watcher = await ada.forged()
    await watcher.request(url)
    const before = watcher.receivedChangeHashes()
    await expectRefused(bob, url, d => {
      d.body = "words Ada never wrote"
    }, { checker: ada })
    await sleep(300)
    const after = watcher.receivedChangeHashes()
    assert.deepEqual([...after].sort(), [...before].sort(), "no new change reached another reader")
    assert.equal(watcher.framesMentioning("words Ada never wrote").length, 0)
    assert.equal(watcher.closed, false, "the other reader's connection stays open")
  })

  test("closes only the sender's connection: the same user's other connection and other users keep syncing", async () => {
    const { url } = await ada.create(post(ada))
    const bobsPhone = await bob.stock()
    const adasRepo = await ada.stock()
    const handle = await withTimeout(adasRepo.find(url), 10_000, "ada finds her post")
    await expectRefused(bob, url, d => {
      d.status = "hidden"
    }, { checker: ada })
    assert.equal(bobsPhone.peers.length, 1, "Bob's other connection is still up")
    await expectAllowed(bob, url, d => {
      d.replies.push(reply(bob, "still welcome"))
    }, { checker: ada })
    await withTimeout(
      new Promise(resolve => {
        const check = () => handle.doc().replies.length === 1 && resolve()
        handle.on("change", check)
        check()
      }),
      10_000,
      "Bob's later reply reaches Ada's open copy",
    )
  })

  test("the refusal names the rule in an error message before the close", async () => {
    const { url } = await ada.create(post(ada))
    const client = await bob.forged()
    await client.request(url)
    const hash = client.change(url, d => {
      d.replies.push(reply(ada, "in Ada's name"))
    })
    const { message, closeCode } = await client.waitForErrorAndClose()
    assert.equal(typeof message, "string")
    assert.ok(message.length > 0)
    assert.notEqual(closeCode, 1000, "not a normal closure")
    const types = client.messages().map(m => m.type)
    assert.equal(types.at(-1), "error", `the error is the last message (got ${types.join(", ")})`)
    await expectNotStored(ada, url, hash)
  })

  test("a change built on heads the sender never received is judged all the same", async () => {
    // A hand-built change whose deps are the creation only, sent after later changes.
    const { url, heads } = await ada.create(post(ada))
    await ada.edit(url, d => {
      d.title = "Ada's second thoughts"
    })
    await expectRefused(bob, url, d => {
      d.body = "slipped in on old heads"
    }, { at: heads, rule: /body/i, checker: ada })
  })

  test("nothing of a refused change is stored: the server's copy reads as before", async () => {
    const { url } = await ada.create(post(ada, { title: "Original" }))
    await expectRefused(bob, url, d => {
      d.title = "Vandalised"
    }, { checker: ada })
    const read = await ada.read(url)
    assert.equal(read.doc.title, "Original")
    assert.equal(A.getHistory(read.automerge).length, 1)
  })
})
