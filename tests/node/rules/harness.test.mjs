// The rules tests' own tools, checked on honest paths first: the forged
// client creates, reads and changes documents like the stock client does,
// both kinds of client see each other's work, and the wire recorder finds
// what did arrive (so "it never arrived" means something).

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"

import * as A from "@automerge/automerge"

import { actorsOf, documentIdOf, newDocumentId } from "../lib/forged-client.mjs"
import { expectAllowed, post, reply, startCommunity } from "../lib/community.mjs"
import { waitUntilServerAcked, withTimeout } from "../lib/servers.mjs"

describe("the rules harness", () => {
  let community
  let ada
  let bob

  before(async () => {
    community = await startCommunity({ label: "harness" })
    ada = await community.signUp("Ada")
    bob = await community.signUp("Bob")
  })

  after(async () => {
    if (process.env.SHOW_SERVER_LOG) console.log(community?.server?.stderrText())
    await community?.close()
  })

  test("document ids are bs58check of 16 bytes, and URLs reduce to them", () => {
    const id = newDocumentId()
    assert.match(id, /^[1-9A-HJ-NP-Za-km-z]{20,30}$/)
    assert.equal(documentIdOf(`automerge:${id}`), id)
    assert.throws(() => documentIdOf("automerge:not-an-id"))
  })

  test("the managers and hosts made by the CLI sign in with their roles", () => {
    assert.equal(community.manager.role, "manager")
    assert.equal(community.host.role, "host")
    assert.notEqual(community.manager.id, community.host.id)
  })

  test("a forged client creates a post that a stock client then finds", async () => {
    const client = await ada.forged()
    const { documentId, url, heads } = client.create(post(ada, { title: "made by hand" }))
    await client.waitForServerHeads(documentId, heads)
    assert.equal(client.serverMetadata.isEphemeral, false)
    assert.equal(typeof client.serverMetadata.storageId, "string")

    const repo = await bob.stock()
    const handle = await withTimeout(repo.find(url), 10_000, "bob finds the post")
    assert.equal(handle.doc().title, "made by hand")
    assert.deepEqual([...A.getHeads(handle.doc())].sort(), [...heads].sort())
  })

  test("a stock client's post reaches a forged client, and the forged client's reply reaches the stock client", async () => {
    const repo = await ada.stock()
    const handle = repo.create(post(ada, { title: "made by the stock client" }))
    assert.ok(await waitUntilServerAcked(repo, handle))
    const client = await bob.forged()
    const { available, doc } = await client.request(handle.url)
    assert.ok(available)
    assert.equal(doc.title, "made by the stock client")

    const hash = client.change(handle.url, d => {
      d.replies.push(reply(bob, "from the forged client"))
    })
    assert.deepEqual(await client.outcome(handle.url, hash), { accepted: true })
    await withTimeout(
      new Promise(resolve => {
        const check = () => handle.doc().replies.length === 1 && resolve()
        handle.on("change", check)
        check()
      }),
      10_000,
      "the reply reaches the stock client",
    )
    assert.equal(handle.doc().replies[0].body, "from the forged client")
  })

  test("a forged change made with a chosen actor carries that actor", async () => {
    const { url } = await ada.create(post(ada))
    const client = await ada.forged()
    await client.request(url)
    const actor = "0123456789abcdef0123456789abcdef"
    const hash = client.change(url, d => {
      d.body = "again"
    }, { actor })
    assert.deepEqual(actorsOf(client.doc(url)).get(actor), [hash])
    assert.deepEqual(await client.outcome(url, hash), { accepted: true })
  })

  test("a forged change built on chosen heads depends on exactly those heads", async () => {
    const { url, heads } = await ada.create(post(ada))
    const client = await ada.forged()
    await client.request(url)
    const first = client.change(url, d => {
      d.title = "first"
    })
    await client.waitForServerHeads(url, [first])
    const second = client.change(url, d => {
      d.body = "beside the first"
    }, { at: heads })
    const meta = A.getChangesMetaSince(client.doc(url), heads)
    assert.deepEqual(meta.find(m => m.hash === second).deps, heads)
    await client.waitForServerHeads(url, [first, second])
    // And a third on the first's heads, beside the second: still exactly those deps.
    const third = client.change(url, d => {
      d.body = "beside the second"
    }, { at: [first] })
    assert.notEqual(third, second)
    assert.deepEqual(A.getChangesMetaSince(client.doc(url), heads).find(m => m.hash === third).deps, [first])
    await client.waitForServerHeads(url, [third])
  })

  test("every change is acknowledged, also one sent while the one before it is being stored", async () => {
    // Two sync messages back to back, the second before the server answered
    // the first (legal: the stock client does it whenever storing takes longer
    // than its 100 ms throttle). Both are stored; the server's heads must
    // then say so, or the client never learns its change is safe.
    const unacknowledged = []
    for (let round = 0; round < 20; round++) {
      const { url } = await ada.create(post(ada))
      const client = await ada.forged()
      await client.request(url)
      const first = client.change(url, d => {
        d.title = `first ${round}`
      })
      const second = client.change(url, d => {
        d.body = `second ${round}`
      })
      try {
        await client.waitForServerHeads(url, [first, second], { timeoutMs: 3000 })
      } catch {
        const stored = await ada.read(url)
        unacknowledged.push({ round, stored: A.hasHeads(stored.automerge, [first, second]), url, first, second })
      }
      await client.close()
    }
    assert.deepEqual(unacknowledged, [], "rounds whose second change was never acknowledged (stored: whether a fresh reader finds both)")
  })

  test("the wire recorder finds the id and the words of a document that did arrive", async () => {
    const secret = `plainly-visible-${Date.now()}`
    const { documentId, url } = await ada.create(post(ada, { body: secret }))
    const client = await bob.forged()
    await client.request(url)
    assert.ok(client.framesMentioning(documentId).length > 0)
    assert.ok(client.framesMentioning(secret).length > 0)
    assert.ok(client.receivedChangeHashes().size > 0)
    assert.equal(client.framesMentioning("never-sent-words").length, 0)
  })

  test("the wire recorder also finds words inside compressed changes", async () => {
    // A long change is DEFLATE-compressed, so its words are not in the raw bytes.
    const secret = `hidden-in-a-big-change-${Date.now()}`
    const filler = Array.from({ length: 300 }, (_, i) => `filler sentence number ${i}. `).join("")
    const { url } = await ada.create(post(ada, { body: filler + secret + filler }))
    const client = await bob.forged()
    await client.request(url)
    assert.ok(client.framesMentioning(secret).length > 0)
  })

  test("an honest stock write is acknowledged and stored (expectAllowed)", async () => {
    const { url } = await ada.create(post(ada))
    const doc = await expectAllowed(bob, url, d => {
      d.replies.push(reply(bob, "stock reply"))
    })
    assert.equal(doc.replies[0].body, "stock reply")
  })
})
