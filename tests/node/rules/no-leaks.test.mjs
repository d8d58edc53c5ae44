// SPEC §3/§5, asserted on the wire: a client never receives a byte of a
// document its user may not read. The forged client records every frame the
// server sends; a private document's id may appear only in `doc-unavailable`,
// and none of its words, nor any of its changes, may appear at all, however
// the client asks and whatever the document's readers do meanwhile.

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"

import * as A from "@automerge/automerge"

import { documentIdOf } from "../lib/forged-client.mjs"
import { conversation, expectUnavailable, message, plain, post, reply, startCommunity } from "../lib/community.mjs"
import { waitForDoc } from "../lib/people.mjs"
import { apiGet, sleep, withTimeout } from "../lib/servers.mjs"

const onlyUnavailable = m => m.type === "doc-unavailable"

describe("no leaks on the wire", () => {
  let community
  let manager
  let host
  let olive
  let dora
  let ada
  const secrets = {}
  let privateConversation
  let privateDraft
  let publicPost
  const privateHashes = new Set()

  before(async () => {
    community = await startCommunity({ label: "no-leaks" })
    ;({ manager, host } = community)
    olive = await community.signUp("Olive")
    dora = await community.signUp("Dora")
    ada = await community.signUp("Ada")
    const stamp = Date.now()
    Object.assign(secrets, {
      subject: `conversation-subject-${stamp}`,
      question: `olive-asks-privately-${stamp}`,
      answer: `manager-answers-privately-${stamp}`,
      draftTitle: `draft-title-${stamp}`,
      draftBody: `draft-body-${stamp}`,
      public: `public-words-${stamp}`,
    })
    privateConversation = await olive.create(
      conversation(olive, { subject: secrets.subject, messages: [message(olive, secrets.question)] }),
    )
    await manager.edit(privateConversation.url, d => {
      d.messages.push(message(manager, secrets.answer))
    })
    privateDraft = await dora.create(post(dora, { status: "draft", title: secrets.draftTitle, body: secrets.draftBody }))
    publicPost = await ada.create(post(ada, { body: secrets.public }))
  })

  after(async () => {
    await community?.close()
  })

  async function collectPrivateHashes() {
    for (const [reader, doc] of [
      [manager, privateConversation],
      [dora, privateDraft],
    ]) {
      const read = await reader.read(doc.url)
      for (const meta of A.getChangesMetaSince(read.automerge, [])) privateHashes.add(meta.hash)
    }
  }

  /** Everything `client` received, checked against the private documents. */
  async function assertNothingPrivateArrived(client, extraSecrets = []) {
    await collectPrivateHashes()
    for (const doc of [privateConversation, privateDraft]) {
      const hits = client.framesMentioning(doc.documentId, { except: onlyUnavailable })
      assert.deepEqual(hits, [], `the id of ${doc.documentId} appears only in doc-unavailable (frames ${client.describeFrames()})`)
    }
    for (const words of [secrets.subject, secrets.question, secrets.answer, secrets.draftTitle, secrets.draftBody, ...extraSecrets]) {
      assert.deepEqual(client.framesMentioning(words), [], `"${words}" never arrives`)
    }
    const received = client.receivedChangeHashes()
    const leaked = [...privateHashes].filter(hash => received.has(hash))
    assert.deepEqual(leaked, [], "no change of a private document arrives")
  }

  for (const who of ["member", "host"]) {
    test(`a ${who}'s client receives nothing of a conversation it is not in nor of another's draft, however it asks`, async () => {
      const eve = who === "member" ? await community.signUp("Eve") : host
      const client = await eve.forged()

      // 1. Plain requests.
      assert.equal((await client.request(privateConversation.url)).available, false)
      assert.equal((await client.request(privateDraft.url)).available, false)

      // 2. A `sync` claiming to already have the documents (as a stock client
      //    with a stale local copy would send), and a `sync` carrying a change.
      client.sync(privateConversation.documentId, { fresh: true })
      client.sync(privateDraft.documentId, { fresh: true })
      const intruder = await eve.forged()
      intruder.create(conversation(olive, { subject: "planted" }), { documentId: privateConversation.documentId, eager: true })
      intruder.create(post(dora, { status: "draft", title: "planted" }), { documentId: privateDraft.documentId, eager: true })
      await sleep(500)

      // 3. Meanwhile the readers keep writing, and Olive's app sends presence.
      const oliveRepo = await olive.stock()
      const conversationHandle = await withTimeout(oliveRepo.find(privateConversation.url), 10_000, "olive opens her conversation")
      const later = `olive-writes-later-${Date.now()}`
      const presence = `olive-presence-${Date.now()}`
      conversationHandle.change(d => {
        d.messages.push(message(olive, later))
      })
      conversationHandle.broadcast({ typing: presence })
      await dora.edit(privateDraft.url, d => {
        d.body = `${secrets.draftBody} and more`
      })
      await manager.edit(privateConversation.url, d => {
        d.tags.push("venue")
      })
      await sleep(800)

      // 4. Asking again after all that.
      assert.equal((await client.request(privateConversation.url)).available, false)
      await sleep(200)

      // Control: what Eve may read does arrive, so the recorder works.
      assert.equal((await client.request(publicPost.url)).available, true)
      assert.ok(client.framesMentioning(secrets.public).length > 0, "a public post's words do arrive")

      await assertNothingPrivateArrived(client, [later, presence])
      await assertNothingPrivateArrived(intruder, [later, presence])
    })
  }

  test("a member removed from a conversation receives nothing written after the removal", async () => {
    const bob = await community.signUp("Bob")
    const { url } = await olive.create(conversation(olive, { subject: "with Bob, for a while" }))
    await manager.edit(url, d => {
      d.members.push(bob.id)
    })
    const client = await bob.forged()
    assert.equal((await client.request(url)).available, true)
    await sleep(200)
    const seen = client.receivedChangeHashes()

    await manager.edit(url, d => {
      d.members.splice(d.members.indexOf(bob.id), 1)
    })
    const afterRemoval = `said-after-bob-left-${Date.now()}`
    await olive.edit(url, d => {
      d.messages.push(message(olive, afterRemoval))
    })
    await sleep(800)
    assert.equal((await client.request(url)).available, false, "the removed member now gets doc-unavailable")
    await sleep(200)

    assert.deepEqual(client.framesMentioning(afterRemoval), [], "the message after the removal never arrives")
    const read = await manager.read(url)
    const written = A.getChangesMetaSince(read.automerge, []).map(meta => meta.hash)
    const lateHashes = written.filter(hash => !seen.has(hash))
    const received = client.receivedChangeHashes()
    const removalHash = lateHashes.find(hash => received.has(hash))
    // Bob may be told of his own removal at most; nothing after it.
    const others = lateHashes.filter(hash => hash !== removalHash && received.has(hash))
    assert.deepEqual(others, [], "no change written after the removal reaches the removed member")
  })

  test("the index, the directory and a member's own inbox mention nothing the member may not read", async t => {
    const eve = await community.signUp("Eve")
    const { body } = await apiGet(community.server.httpUrl, "/api/me", await eve.token())
    const kept = ["index", "directory", "inbox"].filter(name => body.docs?.[name])
    if (kept.length === 0) return t.skip("GET /api/me names no kept documents yet")
    const client = await eve.forged()
    for (const name of kept) assert.equal((await client.request(body.docs[name])).available, true, `Eve reads her ${name}`)
    await assertNothingPrivateArrived(client)

    // Control: the opener's inbox and a manager's do list the conversation.
    for (const reader of [olive, manager]) {
      const mine = (await apiGet(community.server.httpUrl, "/api/me", await reader.token())).body.docs?.inbox
      if (!mine) continue
      let listed
      for (let attempt = 0; attempt < 50 && !listed; attempt++) {
        listed = (await reader.read(mine)).doc?.conversations?.[privateConversation.documentId]
        if (!listed) await sleep(100)
      }
      assert.ok(listed, `${reader}'s inbox lists the conversation`)
    }
  })

  test("a hidden post's title is in nothing a member can sync: the index is rebuilt without it and the old one closed", async () => {
    const title = `hidden-title-${Date.now()}`
    const indexOf = async person => (await apiGet(community.server.httpUrl, "/api/me", await person.token())).body.docs.index
    const oldIndex = await indexOf(ada)
    const watching = await (await ada.stock()).find(oldIndex)
    const hidden = await ada.create(post(ada, { title }))
    await waitForDoc(watching, d => d.posts?.[hidden.documentId], { what: "the post in the index" })
    await manager.edit(hidden.url, d => {
      d.status = "hidden"
    })
    let newIndex = oldIndex
    for (let attempt = 0; attempt < 100 && newIndex === oldIndex; attempt++) {
      await sleep(100)
      newIndex = await indexOf(ada)
    }
    assert.notEqual(newIndex, oldIndex, "the index is rebuilt once a post leaves it")
    await waitForDoc(watching, d => String(d.moved_to ?? "") === newIndex, { what: "the old index to say where the index moved" })

    const erin = await community.signUp("Erin")
    const { available, automerge: rebuilt, doc } = await erin.read(newIndex)
    assert.ok(available, "a member reads the new index")
    assert.ok(doc.posts[publicPost.documentId], "the new index lists the published posts")
    assert.equal(doc.posts[hidden.documentId], undefined)
    for (const { snapshot } of A.getHistory(rebuilt)) {
      assert.equal(JSON.stringify(plain(snapshot)).includes(title), false, "no state in the new index's history holds the hidden title")
    }
    await expectUnavailable(erin, oldIndex)
  })

  test("a stock client of a non-member finds nothing and the server sends it nothing of the document", async () => {
    const bob = await community.signUp("Bob")
    const repo = await bob.stock()
    await assert.rejects(withTimeout(repo.find(privateConversation.url), 10_000, "find"), /unavailable/)
    await assert.rejects(withTimeout(repo.find(privateDraft.url), 10_000, "find"), /unavailable/)
  })

  test("a reply to a public post does not carry the id of any private document", async () => {
    // Guards the control above: public traffic itself must not mention private ids.
    const bob = await community.signUp("Bob")
    const client = await bob.forged()
    await client.request(publicPost.url)
    const hash = client.change(publicPost.url, d => {
      d.replies.push(reply(bob, "public chatter"))
    })
    assert.deepEqual(await client.outcome(publicPost.url, hash), { accepted: true })
    for (const doc of [privateConversation, privateDraft]) {
      assert.deepEqual(client.framesMentioning(documentIdOf(doc.url)), [])
    }
  })
})
