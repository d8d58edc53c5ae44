// SPEC §5, "post, draft": only the author reads it and may change anything in
// it; to everyone else, managers included, it does not exist. And the rules
// for the change that creates a post (RULES.md, "a document with no type").

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"

import { expectAllowed, expectRefused, expectUnavailable, expectWriteUnavailable, post, reply, startCommunity } from "../lib/community.mjs"
import { withTimeout } from "../lib/servers.mjs"

describe("a draft post", () => {
  let community
  let author
  let member
  let manager
  let host

  before(async () => {
    community = await startCommunity({ label: "draft" })
    ;({ manager, host } = community)
    author = await community.signUp("Ada")
    member = await community.signUp("Bob")
  })

  after(async () => {
    await community?.close()
  })

  const draft = (fields = {}) => author.create(post(author, { status: "draft", title: "Half an idea", body: "not ready", ...fields }))

  describe("read: the author only", () => {
    test("the author creates a draft with the stock client and reads it from another device", async () => {
      const phone = await author.stock()
      const handle = phone.create(post(author, { status: "draft", title: "Written on the phone" }))
      const laptop = await author.stock()
      // The server may not have it the instant the phone made it: retry the read.
      let doc
      for (let attempt = 0; attempt < 50 && !doc; attempt++) {
        const read = await author.read(handle.url)
        if (read.available) doc = read.doc
        else await new Promise(resolve => setTimeout(resolve, 100))
      }
      assert.equal(doc?.title, "Written on the phone")
      const copy = await withTimeout(laptop.find(handle.url), 10_000, "the laptop finds the draft")
      assert.equal(copy.doc().status, "draft")
    })

    for (const who of ["member", "host", "manager"]) {
      test(`a ${who} gets doc-unavailable for someone else's draft`, async () => {
        const { url } = await draft()
        await expectUnavailable({ member, host, manager }[who], url)
      })
    }
  })

  describe("write: the author, anything", () => {
    test("the author rewrites title and body and marks it anonymous", async () => {
      const { url } = await draft()
      const doc = await expectAllowed(author, url, d => {
        d.title = "A whole idea"
        d.body = "ready now"
        d.anonymous = true
      })
      assert.equal(doc.title, "A whole idea")
      assert.equal(doc.anonymous, true)
    })

    test("the author publishes it, and then everyone signed in reads it", async () => {
      const { url } = await draft()
      await expectAllowed(author, url, d => {
        d.status = "published"
      }, { checker: member })
    })

    test("the author adds a reply to their draft and removes it again (SPEC §5: draft, author: anything)", async () => {
      const { url } = await draft()
      await expectAllowed(author, url, d => {
        d.replies.push(reply(author, "a note to self"))
      })
      const doc = await expectAllowed(author, url, d => {
        d.replies.splice(0, 1)
      })
      assert.equal(doc.replies.length, 0)
    })

    test("the author may not change the type of a draft", async () => {
      const { url } = await draft()
      await expectRefused(author, url, d => {
        d.type = "conversation"
      }, { rule: /type/i })
    })

    test("the author may not hand the draft to someone else", async () => {
      const { url } = await draft()
      await expectRefused(author, url, d => {
        d.author = member.id
      }, { rule: /author/i })
    })

    test("the author may not hide a draft (only draft or published)", async () => {
      const { url } = await draft()
      await expectRefused(author, url, d => {
        d.status = "hidden"
      }, { rule: /status/i })
    })

    for (const who of ["member", "host", "manager"]) {
      test(`a ${who} writing to someone else's draft gets doc-unavailable and nothing is stored`, async () => {
        const { url } = await draft()
        await expectWriteUnavailable({ member, host, manager }[who], url, post(author, { status: "draft", title: "overwritten" }), {
          checker: author,
        })
      })
    }
  })

  describe("creating a post", () => {
    test("a member creates a published post directly", async () => {
      const client = await member.forged()
      const { documentId, hash } = client.create(post(member))
      assert.deepEqual(await client.outcome(documentId, hash), { accepted: true })
      const read = await author.read(documentId)
      assert.ok(read.available)
    })

    test("a post whose author is not its creator is refused", async () => {
      const client = await member.forged()
      const { documentId, hash } = client.create(post(author, { title: "in Ada's name" }))
      const outcome = await client.outcome(documentId, hash)
      assert.equal(outcome.accepted, false)
      assert.match(outcome.refused ?? "", /author/i)
      assert.equal((await author.read(documentId)).available, false, "nothing was stored")
      assert.equal((await member.read(documentId)).available, false, "nothing was stored")
    })

    test("a post created hidden is refused", async () => {
      const client = await member.forged()
      const { documentId, hash } = client.create(post(member, { status: "hidden" }))
      const outcome = await client.outcome(documentId, hash)
      assert.equal(outcome.accepted, false)
      assert.match(outcome.refused ?? "", /status/i)
      assert.equal((await member.read(documentId)).available, false)
    })

    test("a post created with a reply by someone else is refused", async () => {
      const client = await member.forged()
      const { documentId, hash } = client.create(post(member, { replies: [reply(author, "Ada never wrote this")] }))
      const outcome = await client.outcome(documentId, hash)
      assert.equal(outcome.accepted, false)
      assert.match(outcome.refused ?? "", /author|repl/i)
      assert.equal((await member.read(documentId)).available, false)
    })

    test("a post created without a title is refused", async () => {
      const client = await member.forged()
      const { title: _title, ...fields } = post(member)
      const { documentId, hash } = client.create(fields)
      const outcome = await client.outcome(documentId, hash)
      assert.equal(outcome.accepted, false)
      assert.match(outcome.refused ?? "", /title/i)
    })

    test("a document with no type stays private to its creator, who may write anything", async () => {
      const client = await member.forged()
      const { documentId, hash } = client.create({ scratch: "anything at all", n: 3 })
      assert.deepEqual(await client.outcome(documentId, hash), { accepted: true })
      const more = client.change(documentId, d => {
        delete d.scratch
        d.other = [1, 2]
      })
      assert.deepEqual(await client.outcome(documentId, more), { accepted: true })
      await expectUnavailable(author, documentId)
      await expectUnavailable(manager, documentId)
    })

    test("giving an untyped document the post type must leave a valid post", async () => {
      const client = await member.forged()
      const { documentId, hash } = client.create({ note: "untyped" })
      assert.deepEqual(await client.outcome(documentId, hash), { accepted: true })
      const typed = client.change(documentId, d => {
        d.type = "post"
      })
      const outcome = await client.outcome(documentId, typed)
      assert.equal(outcome.accepted, false)
      assert.equal(typeof outcome.refused, "string")
    })
  })
})

describe("a hidden post", () => {
  let community
  let author
  let member
  let manager
  let host

  before(async () => {
    community = await startCommunity({ label: "hidden" })
    ;({ manager, host } = community)
    author = await community.signUp("Ada")
    member = await community.signUp("Bob")
  })

  after(async () => {
    await community?.close()
  })

  async function hiddenPost() {
    const { url } = await author.create(post(author, { title: "Said too much", body: "regrettable words" }))
    await manager.edit(url, d => {
      d.status = "hidden"
    })
    return url
  }

  describe("read: the author and managers", () => {
    test("the author still reads it", async () => {
      const url = await hiddenPost()
      const repo = await author.stock()
      const handle = await withTimeout(repo.find(url), 10_000, "the author finds the hidden post")
      assert.equal(handle.doc().status, "hidden")
    })

    test("a manager reads it", async () => {
      const url = await hiddenPost()
      const read = await community.managers[0].read(url)
      assert.ok(read.available)
      assert.equal(read.doc.status, "hidden")
    })

    for (const who of ["member", "host"]) {
      test(`a ${who} gets doc-unavailable`, async () => {
        const url = await hiddenPost()
        await expectUnavailable({ member, host }[who], url)
      })
    }
  })

  describe("write: managers, status only", () => {
    test("a manager publishes it again", async () => {
      const url = await hiddenPost()
      const doc = await expectAllowed(manager, url, d => {
        d.status = "published"
      }, { checker: member })
      assert.equal(doc.status, "published")
    })

    test("the author may not edit it", async () => {
      const url = await hiddenPost()
      await expectRefused(author, url, d => {
        d.body = "trying to fix it"
      }, { rule: /hidden|body|status/i, checker: manager })
    })

    test("the author may not publish it again", async () => {
      const url = await hiddenPost()
      await expectRefused(author, url, d => {
        d.status = "published"
      }, { rule: /status|hidden/i, checker: manager })
    })

    test("the author may not reply to it", async () => {
      const url = await hiddenPost()
      await expectRefused(author, url, d => {
        d.replies.push(reply(author, "a reply nobody sees"))
      }, { rule: /hidden|repl/i, checker: manager })
    })

    test("a manager may not edit its title", async () => {
      const url = await hiddenPost()
      await expectRefused(manager, url, d => {
        d.title = "Moderated"
      }, { rule: /title|hidden/i })
    })

    test("a manager may not lock it while hidden", async () => {
      const url = await hiddenPost()
      await expectRefused(manager, url, d => {
        d.locked = true
      }, { rule: /lock|hidden|status/i })
    })

    test("a member writing to it gets doc-unavailable and nothing is stored", async () => {
      const url = await hiddenPost()
      await expectWriteUnavailable(member, url, post(author, { title: "graffiti" }), { checker: manager })
    })
  })
})
