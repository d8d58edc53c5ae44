// SPEC §5, last rule: a rule that depends on the document's state (locked,
// status, members) is judged on the document as the change's author saw it,
// that is at the change's dependencies. What someone wrote offline before a
// lock or a removal still lands; what they write after seeing it is refused.

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"

import * as A from "@automerge/automerge"

import { conversation, expectNotStored, message, post, reply, startCommunity } from "../lib/community.mjs"
import { goOffline, goOnline, waitFor, waitUntilServerAcked, withTimeout } from "../lib/servers.mjs"

describe("offline writes and the state they saw", () => {
  let community
  let manager
  let ada
  let bob

  before(async () => {
    community = await startCommunity({ label: "offline" })
    manager = community.manager
    ada = await community.signUp("Ada")
    bob = await community.signUp("Bob")
  })

  after(async () => {
    await community?.close()
  })

  test("story: a reply written offline before a lock lands; one written after seeing the lock is refused", async () => {
    // Step 1: Ada publishes a post; Bob and a manager have it open.
    const { url } = await ada.create(post(ada, { title: "Friday's meetup" }))
    const bobsRepo = await bob.stock()
    const bobs = await withTimeout(bobsRepo.find(url), 10_000, "Bob opens the post")
    const managersRepo = await manager.stock()
    const managers = await withTimeout(managersRepo.find(url), 10_000, "the manager opens the post")

    // Step 2: Bob's phone loses the network; he replies anyway.
    goOffline(bobsRepo)
    bobs.change(d => {
      d.replies.push(reply(bob, "written on the train"))
    })
    const offlineReply = A.getHeads(bobs.doc()).find(hash => !A.hasHeads(managers.doc(), [hash]))
    assert.ok(offlineReply)

    // Step 3: meanwhile the manager locks the thread.
    managers.change(d => {
      d.locked = true
    })
    const [lock] = A.getHeads(managers.doc())
    assert.ok(await waitUntilServerAcked(managersRepo, managers))

    // Step 4: Bob is back online. His reply, made before he saw the lock, lands.
    await goOnline(bobsRepo)
    await waitFor(() => managers.doc().replies.length === 1, { timeoutMs: 15_000, what: "Bob's offline reply reaches the manager" })
    assert.equal(managers.doc().replies[0].body, "written on the train")
    await waitFor(() => bobs.doc().locked === true, { what: "Bob's copy learns of the lock" })
    assert.deepEqual(bobsRepo.serverErrors, [], "nothing Bob sent so far was refused")
    assert.ok((await ada.read(url)).doc.replies.length === 1, "the server stored the offline reply")

    // Step 5: Bob, who has now seen the lock, tries again: refused, not stored.
    bobs.change(d => {
      d.replies.push(reply(bob, "but I have more to say"))
    })
    const lateReply = A.getHeads(bobs.doc()).find(hash => !A.hasHeads(managers.doc(), [hash]))
    const change = A.getChangesMetaSince(bobs.doc(), []).find(meta => meta.hash === lateReply)
    assert.ok(change.deps.includes(lock), "the late reply's change depends on the lock")
    await waitFor(() => bobsRepo.serverErrors.length > 0, { timeoutMs: 15_000, what: "the server refuses the late reply" })
    assert.match(bobsRepo.serverErrors[0], /lock/i)
    await expectNotStored(ada, url, lateReply)
    assert.equal(managers.doc().replies.length, 1, "the refused reply never reached the manager")
  })

  test("a reply built on the heads before the lock lands, even sent after it; one built on the lock is refused", async () => {
    const { url, heads: beforeLock } = await ada.create(post(ada))
    await manager.edit(url, d => {
      d.locked = true
    })
    const client = await bob.forged()
    await client.request(url)
    assert.equal(client.doc(url).locked, true)

    const early = client.change(url, d => {
      d.replies.push(reply(bob, "written before the lock, delivered late"))
    }, { at: beforeLock })
    assert.deepEqual(await client.outcome(url, early), { accepted: true })

    const late = client.change(url, d => {
      d.replies.push(reply(bob, "written after seeing the lock"))
    })
    const outcome = await client.outcome(url, late)
    assert.equal(outcome.accepted, false)
    assert.match(outcome.refused ?? "", /lock/i)
    await expectNotStored(ada, url, late)
    const read = await ada.read(url)
    assert.deepEqual(read.doc.replies.map(r => r.body), ["written before the lock, delivered late"])
  })

  test("a reply made before an unlock but after the lock is refused; after the unlock it lands", async () => {
    const { url } = await ada.create(post(ada))
    const locked = await manager.edit(url, d => {
      d.locked = true
    })
    await manager.edit(url, d => {
      d.locked = false
    })
    const client = await bob.forged()
    await client.request(url)
    const stale = client.change(url, d => {
      d.replies.push(reply(bob, "seen locked"))
    }, { at: locked })
    const outcome = await client.outcome(url, stale)
    assert.equal(outcome.accepted, false)
    assert.match(outcome.refused ?? "", /lock/i)

    const again = await bob.forged()
    await again.request(url)
    const fresh = again.change(url, d => {
      d.replies.push(reply(bob, "seen unlocked"))
    })
    assert.deepEqual(await again.outcome(url, fresh), { accepted: true })
  })

  test("the author's edit written before the post was hidden lands; one written after seeing it hidden is refused", async () => {
    const { url, heads: published } = await ada.create(post(ada))
    const hidden = await manager.edit(url, d => {
      d.status = "hidden"
    })
    const client = await ada.forged()
    await client.request(url)
    const early = client.change(url, d => {
      d.title = "retitled while it was still published"
    }, { at: published })
    assert.deepEqual(await client.outcome(url, early), { accepted: true })
    const late = client.change(url, d => {
      d.body = "edited after seeing it hidden"
    }, { at: hidden })
    const outcome = await client.outcome(url, late)
    assert.equal(outcome.accepted, false)
    await expectNotStored(manager, url, late)
  })

  test("a message built on the heads from before a member's removal, sent after it, lands", async () => {
    const olive = await community.signUp("Olive")
    const { url } = await olive.create(conversation(olive))
    const withBob = await manager.edit(url, d => {
      d.members.push(bob.id)
    })
    const client = await bob.forged()
    assert.equal((await client.request(url)).available, true)
    await manager.edit(url, d => {
      d.members.splice(d.members.indexOf(bob.id), 1)
    })
    const early = client.change(url, d => {
      d.messages.push(message(bob, "written while still a member"))
    }, { at: withBob })
    const outcome = await client.outcome(url, early)
    // The server need not acknowledge it to Bob (he may no longer read the
    // document), but it must store it.
    assert.equal(outcome.refused, undefined, `not refused (got ${JSON.stringify(outcome)})`)
    await waitFor(async () => A.hasHeads((await manager.read(url)).automerge, [early]), {
      timeoutMs: 5_000,
      intervalMs: 250,
      what: "the message written before the removal is stored",
    })
  })

  test("story: a message written offline before a member's removal still lands", async () => {
    // Step 1: Olive's question; a manager adds Bob, who opens it on his phone.
    const olive = await community.signUp("Olive")
    const { url } = await olive.create(conversation(olive, { messages: [message(olive, "Who can help with the stall?")] }))
    await manager.edit(url, d => {
      d.members.push(bob.id)
    })
    const bobsRepo = await bob.stock()
    const bobs = await withTimeout(bobsRepo.find(url), 10_000, "Bob opens the conversation")

    // Step 2: Bob answers offline.
    goOffline(bobsRepo)
    bobs.change(d => {
      d.messages.push(message(bob, "I can, on Saturday"))
    })
    const offlineMessage = A.getHeads(bobs.doc())[0]

    // Step 3: the manager removes Bob meanwhile.
    await manager.edit(url, d => {
      d.members.splice(d.members.indexOf(bob.id), 1)
    })

    // Step 4: Bob reconnects; what he wrote before the removal lands.
    await goOnline(bobsRepo)
    await waitFor(async () => A.hasHeads((await manager.read(url)).automerge, [offlineMessage]), {
      timeoutMs: 15_000,
      intervalMs: 250,
      what: "Bob's offline message is stored",
    })
    const read = await manager.read(url)
    assert.deepEqual(read.doc.messages.map(m => m.body), ["Who can help with the stall?", "I can, on Saturday"])
    assert.deepEqual(read.doc.members, [olive.id])
  })
})
