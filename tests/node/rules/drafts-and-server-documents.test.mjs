// SPEC §5, the last two rows: a drafts document is its owner's alone; index
// and directory are read by everyone signed in, an inbox by its owner, and
// only the server writes any of the three. Clients may not create them.

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"

import { drafts, expectAllowed, expectRefused, expectUnavailable, expectWriteUnavailable, startCommunity } from "../lib/community.mjs"
import { apiGet } from "../lib/servers.mjs"

describe("a drafts document", () => {
  let community
  let owner
  let member
  let manager

  before(async () => {
    community = await startCommunity({ label: "drafts" })
    manager = community.manager
    owner = await community.signUp("Dora")
    member = await community.signUp("Bob")
  })

  after(async () => {
    await community?.close()
  })

  const item = (body = "half a thought") => ({ kind: "post", title: "Untitled", body, updated_at: Date.now() })

  test("the owner creates one and keeps text in it from another device", async () => {
    const { url } = await owner.create(drafts(owner))
    const doc = await expectAllowed(owner, url, d => {
      d.items.k1 = item("typed on the phone")
      d.mine["2r2qKxnyTnMnAvtYqQCKGqKQS5bP"] = { type: "post", created_at: Date.now() }
    })
    assert.equal(doc.items.k1.body, "typed on the phone")
  })

  test("the owner removes an item", async () => {
    const { url } = await owner.create(drafts(owner, { items: { k1: item() } }))
    const doc = await expectAllowed(owner, url, d => {
      delete d.items.k1
    })
    assert.deepEqual(doc.items, {})
  })

  for (const who of ["member", "manager"]) {
    test(`a ${who} gets doc-unavailable for someone else's drafts`, async () => {
      const { url } = await owner.create(drafts(owner, { items: { k1: item("private musings") } }))
      await expectUnavailable({ member, manager }[who], url)
    })

    test(`a ${who} writing to someone else's drafts gets doc-unavailable and nothing is stored`, async () => {
      const { url } = await owner.create(drafts(owner))
      await expectWriteUnavailable({ member, manager }[who], url, drafts(owner, { items: { planted: item("planted") } }), { checker: owner })
    })
  }

  describe("the drafts document GET /api/me names", () => {
    async function myDrafts(t, person) {
      const { body } = await apiGet(community.server.httpUrl, "/api/me", await person.token())
      if (!body.docs?.drafts) {
        t.skip("GET /api/me does not name docs.drafts yet")
        return undefined
      }
      return body.docs.drafts
    }

    test("it is the owner's, and the owner writes into it with the stock client", async t => {
      const url = await myDrafts(t, owner)
      if (!url) return
      const read = await owner.read(url)
      assert.ok(read.available)
      assert.equal(read.doc.type, "drafts")
      assert.equal(read.doc.owner, owner.id)
      const doc = await expectAllowed(owner, url, d => {
        d.items.reply1 = { target: "2r2qKxnyTnMnAvtYqQCKGqKQS5bP", kind: "reply", body: "typing…", updated_at: Date.now() }
      })
      assert.equal(doc.items.reply1.body, "typing…")
    })

    test("GET /api/me names the same drafts document every time", async t => {
      const first = await myDrafts(t, owner)
      if (!first) return
      assert.equal(await myDrafts(t, owner), first)
    })

    for (const who of ["member", "manager"]) {
      test(`a ${who} gets doc-unavailable for it`, async t => {
        const url = await myDrafts(t, owner)
        if (!url) return
        await expectUnavailable({ member, manager }[who], url)
      })
    }

    test("its owner may not change its owner", async t => {
      const url = await myDrafts(t, owner)
      if (!url) return
      await expectRefused(owner, url, d => {
        d.owner = member.id
      }, { rule: /owner/i })
    })
  })

  test("a drafts document owned by someone else may not be created", async () => {
    const client = await member.forged()
    const { documentId, hash } = client.create(drafts(owner))
    const outcome = await client.outcome(documentId, hash)
    assert.equal(outcome.accepted, false)
    assert.match(outcome.refused ?? "", /owner/i)
  })

  test("the owner may not change owner", async () => {
    const { url } = await owner.create(drafts(owner))
    await expectRefused(owner, url, d => {
      d.owner = member.id
    }, { rule: /owner/i })
  })

  test("the owner may not change type or schema", async () => {
    const { url } = await owner.create(drafts(owner))
    await expectRefused(owner, url, d => {
      d.type = "post"
    }, { rule: /type/i })
    await expectRefused(owner, url, d => {
      d.schema = 2
    }, { rule: /schema/i })
  })
})

describe("index, directory and inbox", () => {
  let community
  let member
  let other
  let docs
  let otherDocs

  before(async () => {
    community = await startCommunity({ label: "server-docs" })
    member = await community.signUp("Bob")
    other = await community.signUp("Cy")
    docs = (await apiGet(community.server.httpUrl, "/api/me", await member.token())).body.docs ?? {}
    otherDocs = (await apiGet(community.server.httpUrl, "/api/me", await other.token())).body.docs ?? {}
  })

  after(async () => {
    await community?.close()
  })

  // GET /api/me names these documents (SPEC §2); without them there is nothing to test.
  function needs(t, name) {
    if (!docs[name]) {
      t.skip(`GET /api/me does not name docs.${name} yet`)
      return false
    }
    return true
  }

  for (const [name, type] of [
    ["index", "index"],
    ["directory", "directory"],
    ["inbox", "inbox"],
  ]) {
    test(`a member reads the ${name}`, async t => {
      if (!needs(t, name)) return
      const read = await member.read(docs[name])
      assert.ok(read.available)
      assert.equal(read.doc.type, type)
    })

    test(`a member may not write to the ${name}`, async t => {
      if (!needs(t, name)) return
      await expectRefused(member, docs[name], d => {
        d.planted = "by a member"
      }, { rule: new RegExp(`${name}|server`, "i") })
    })

    test(`a manager may not write to the ${name}`, async t => {
      if (!needs(t, name)) return
      const managerDocs = (await apiGet(community.server.httpUrl, "/api/me", await community.manager.token())).body.docs ?? {}
      const target = name === "inbox" ? managerDocs.inbox : docs[name]
      await expectRefused(community.manager, target, d => {
        d.planted = "by a manager"
      }, { rule: new RegExp(`${name}|server`, "i") })
    })

    test(`a member may not create a document of type ${type}`, async () => {
      const client = await member.forged()
      const fields =
        type === "index"
          ? { type, schema: 1, posts: {} }
          : type === "directory"
            ? { type, schema: 1, users: {} }
            : { type, schema: 1, owner: member.id, conversations: {} }
      const { documentId, hash } = client.create(fields)
      const outcome = await client.outcome(documentId, hash)
      assert.equal(outcome.accepted, false)
      assert.match(outcome.refused ?? "", new RegExp(`${type}|server|type`, "i"))
      assert.equal((await member.read(documentId)).available, false, "nothing was stored")
    })
  }

  test("the index lists a published post and no draft", async t => {
    if (!needs(t, "index")) return
    const secretTitle = `an unpublished title ${Date.now()}`
    const draft = await other.create({ type: "post", schema: 1, author: other.id, created_at: Date.now(), status: "draft", title: secretTitle, body: "", replies: [] })
    const published = await other.create({ type: "post", schema: 1, author: other.id, created_at: Date.now(), status: "published", title: "Out in the open", body: "", replies: [] })
    let read
    for (let attempt = 0; attempt < 50; attempt++) {
      read = await member.read(docs.index)
      if (read.doc?.posts?.[published.documentId]) break
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    assert.equal(read.doc.posts[published.documentId]?.title, "Out in the open")
    assert.equal(read.doc.posts[draft.documentId], undefined)
    const client = await member.forged()
    await client.request(docs.index)
    assert.deepEqual(client.framesMentioning(secretTitle), [])
    assert.deepEqual(client.framesMentioning(draft.documentId), [])
  })

  test("the directory has no emails", async t => {
    if (!needs(t, "directory")) return
    const client = await member.forged()
    await client.request(docs.directory)
    assert.equal(client.framesMentioning("@example.org").length, 0)
  })

  test("a member gets doc-unavailable for someone else's inbox", async t => {
    if (!otherDocs.inbox) return t.skip("GET /api/me does not name docs.inbox yet")
    await expectUnavailable(member, otherDocs.inbox)
  })

  test("a member may not create a document of another type", async () => {
    const client = await member.forged()
    const { documentId, hash } = client.create({ type: "poll", schema: 1, question: "Pizza?" })
    const outcome = await client.outcome(documentId, hash)
    assert.equal(outcome.accepted, false)
    assert.match(outcome.refused ?? "", /type|poll/i)
  })
})
