// SPEC §5, "post, published": everyone signed in reads it; the author may
// change title, body and set status to hidden; anyone signed in may append a
// reply in their own name (not when locked); a reply's author may change its
// body and deleted; managers may set status, locked and any reply's deleted.
// Allowed writes go through the stock client, refused ones through a forged
// client; after a refusal the server's copy is unchanged.

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"

import * as A from "@automerge/automerge"

import { expectAllowed, expectRefused, post, reply, startCommunity } from "../lib/community.mjs"
import { withTimeout } from "../lib/servers.mjs"

describe("a published post", () => {
  let community
  let author
  let member
  let other
  let manager
  let host

  before(async () => {
    community = await startCommunity({ label: "published" })
    ;({ manager, host } = community)
    author = await community.signUp("Ada")
    member = await community.signUp("Bob")
    other = await community.signUp("Cy")
  })

  after(async () => {
    await community?.close()
  })

  /** A published post by the author, with one reply by `member`. */
  async function postWithReply(fields = {}) {
    const { url } = await author.create(post(author, fields))
    await member.edit(url, d => {
      d.replies.push(reply(member, "the member's reply"))
    })
    return url
  }

  describe("read: anyone signed in", () => {
    for (const who of ["member", "host", "manager"]) {
      test(`a ${who} who did not write it reads it`, async () => {
        const reader = { member, host, manager }[who]
        const { url } = await author.create(post(author, { title: `for a ${who}` }))
        const repo = await reader.stock()
        const handle = await withTimeout(repo.find(url), 10_000, `${who} finds the post`)
        assert.equal(handle.doc().title, `for a ${who}`)
      })
    }
  })

  describe("write: the author", () => {
    test("the author edits the title and the body", async () => {
      const { url } = await author.create(post(author))
      const doc = await expectAllowed(author, url, d => {
        d.title = "A better title"
        d.body = "A clearer body"
      }, { checker: member })
      assert.equal(doc.title, "A better title")
      assert.equal(doc.body, "A clearer body")
    })

    test("the author edits the title with a text splice", async () => {
      const { url } = await author.create(post(author, { title: "Meetup" }))
      const doc = await expectAllowed(author, url, d => {
        A.splice(d, ["title"], 6, 0, " on Friday")
      })
      assert.equal(doc.title, "Meetup on Friday")
    })

    test("the author hides their post", async () => {
      const { url } = await author.create(post(author))
      const doc = await expectAllowed(author, url, d => {
        d.status = "hidden"
      })
      assert.equal(doc.status, "hidden")
    })

    test("the author may not turn it back into a draft", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(author, url, d => {
        d.status = "draft"
      }, { rule: /status/i })
    })

    test("the author may not lock it", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(author, url, d => {
        d.locked = true
      }, { rule: /lock/i })
    })

    test("the author may not make it anonymous once published", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(author, url, d => {
        d.anonymous = true
      }, { rule: /anonymous/i })
    })

    test("the author may not edit someone else's reply", async () => {
      const url = await postWithReply()
      await expectRefused(author, url, d => {
        d.replies[0].body = "what the author wishes they had said"
      }, { rule: /body|repl|author/i })
    })

    test("the author may not mark someone else's reply deleted", async () => {
      const url = await postWithReply()
      await expectRefused(author, url, d => {
        d.replies[0].deleted = true
      }, { rule: /deleted|repl/i })
    })

    test("the author may not remove a reply", async () => {
      const url = await postWithReply()
      await expectRefused(author, url, d => {
        d.replies.splice(0, 1)
      }, { rule: /repl|delete|remove/i })
    })
  })

  describe("write: anyone signed in appends a reply in their own name", () => {
    for (const who of ["member", "host", "manager", "post's author"]) {
      test(`the ${who} replies`, async () => {
        const writer = { member, host, manager, "post's author": author }[who]
        const { url } = await author.create(post(author))
        const doc = await expectAllowed(writer, url, d => {
          d.replies.push(reply(writer, `a reply from a ${who}`))
        }, { checker: other })
        assert.equal(doc.replies.length, 1)
        assert.equal(doc.replies[0].author, writer.id)
      })
    }

    test("a reply may be inserted before earlier replies (clients order by created_at)", async () => {
      const url = await postWithReply()
      const doc = await expectAllowed(other, url, d => {
        d.replies.unshift(reply(other, "inserted first"))
      })
      assert.deepEqual(doc.replies.map(r => r.body), ["inserted first", "the member's reply"])
    })

    test("a reply whose author is someone else is refused", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(member, url, d => {
        d.replies.push(reply(other, "words put in Cy's mouth"))
      }, { rule: /author/i })
    })

    test("a member may not reply in a manager's name", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(member, url, d => {
        d.replies.push(reply(manager, "official-sounding words"))
      }, { rule: /author/i })
    })

    test("a reply with a field outside the schema is refused", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(member, url, d => {
        d.replies.push(reply(member, "with extras", { pinned: true }))
      }, { rule: /pinned|field|schema|unknown/i })
    })

    test("a reply missing its id is refused", async () => {
      const { url } = await author.create(post(author))
      const { id: _id, ...noId } = reply(member, "no id")
      await expectRefused(member, url, d => {
        d.replies.push(noId)
      }, { rule: /id|repl/i })
    })

    test("a reply to a locked post is refused", async () => {
      const { url } = await author.create(post(author))
      await manager.edit(url, d => {
        d.locked = true
      })
      await expectRefused(member, url, d => {
        d.replies.push(reply(member, "too late"))
      }, { rule: /lock/i })
    })

    test("a reply to an unlocked post lands again", async () => {
      const { url } = await author.create(post(author))
      await manager.edit(url, d => {
        d.locked = true
      })
      await manager.edit(url, d => {
        d.locked = false
      })
      const doc = await expectAllowed(member, url, d => {
        d.replies.push(reply(member, "open again"))
      })
      assert.equal(doc.replies.length, 1)
    })
  })

  describe("write: non-authors may not edit title or body", () => {
    for (const who of ["member", "host", "manager"]) {
      test(`a ${who} may not edit the title`, async () => {
        const writer = { member, host, manager }[who]
        const { url } = await author.create(post(author))
        await expectRefused(writer, url, d => {
          d.title = "Hijacked"
        }, { rule: /title/i, checker: author })
      })

      test(`a ${who} may not edit the body`, async () => {
        const writer = { member, host, manager }[who]
        const { url } = await author.create(post(author))
        await expectRefused(writer, url, d => {
          A.splice(d, ["body"], 0, 0, "Actually, ")
        }, { rule: /body/i, checker: author })
      })
    }

    test("a member may not add a field outside the schema", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(member, url, d => {
        d.pinned = true
      }, { rule: /pinned|field|schema|unknown/i, checker: author })
    })
  })

  describe("write: status and locked belong to managers", () => {
    for (const who of ["member", "host"]) {
      test(`a ${who} may not hide it`, async () => {
        const writer = { member, host }[who]
        const { url } = await author.create(post(author))
        await expectRefused(writer, url, d => {
          d.status = "hidden"
        }, { rule: /status/i, checker: author })
      })

      test(`a ${who} may not lock it`, async () => {
        const writer = { member, host }[who]
        const { url } = await author.create(post(author))
        await expectRefused(writer, url, d => {
          d.locked = true
        }, { rule: /lock/i, checker: author })
      })
    }

    test("a manager hides it", async () => {
      const { url } = await author.create(post(author))
      const doc = await expectAllowed(manager, url, d => {
        d.status = "hidden"
      }, { checker: author })
      assert.equal(doc.status, "hidden")
    })

    test("a manager locks it, and unlocks it", async () => {
      const { url } = await author.create(post(author))
      let doc = await expectAllowed(manager, url, d => {
        d.locked = true
      }, { checker: member })
      assert.equal(doc.locked, true)
      doc = await expectAllowed(manager, url, d => {
        d.locked = false
      }, { checker: member })
      assert.equal(doc.locked, false)
    })

    test("a manager may not turn it back into a draft", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(manager, url, d => {
        d.status = "draft"
      }, { rule: /status|draft/i })
    })

    test("a status outside draft, published, hidden is refused", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(manager, url, d => {
        d.status = "archived"
      }, { rule: /status/i })
    })

    test("locked must be a boolean", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(manager, url, d => {
        d.locked = "yes"
      }, { rule: /lock|bool/i })
    })
  })

  describe("write: a reply's author changes its body and deleted; managers its deleted", () => {
    test("the reply's author edits its body", async () => {
      const url = await postWithReply()
      const doc = await expectAllowed(member, url, d => {
        d.replies[0].body = "the member's reply, edited"
      }, { checker: author })
      assert.equal(doc.replies[0].body, "the member's reply, edited")
    })

    test("the reply's author marks it deleted", async () => {
      const url = await postWithReply()
      const doc = await expectAllowed(member, url, d => {
        d.replies[0].deleted = true
      }, { checker: author })
      assert.equal(doc.replies[0].deleted, true)
    })

    test("the reply's author edits its body while the post is locked", async () => {
      const url = await postWithReply()
      await manager.edit(url, d => {
        d.locked = true
      })
      const doc = await expectAllowed(member, url, d => {
        d.replies[0].body = "edited after the lock"
      })
      assert.equal(doc.replies[0].body, "edited after the lock")
    })

    test("a manager marks any reply deleted", async () => {
      const url = await postWithReply()
      const doc = await expectAllowed(manager, url, d => {
        d.replies[0].deleted = true
      }, { checker: member })
      assert.equal(doc.replies[0].deleted, true)
    })

    for (const who of ["another member", "a host", "a manager"]) {
      test(`${who} may not edit someone else's reply body`, async () => {
        const writer = { "another member": other, "a host": host, "a manager": manager }[who]
        const url = await postWithReply()
        await expectRefused(writer, url, d => {
          d.replies[0].body = "rewritten"
        }, { rule: /body|repl|author/i, checker: member })
      })
    }

    for (const who of ["another member", "a host"]) {
      test(`${who} may not mark someone else's reply deleted`, async () => {
        const writer = { "another member": other, "a host": host }[who]
        const url = await postWithReply()
        await expectRefused(writer, url, d => {
          d.replies[0].deleted = true
        }, { rule: /deleted|repl/i, checker: member })
      })
    }

    test("the reply's author may not remove it from the list", async () => {
      const url = await postWithReply()
      await expectRefused(member, url, d => {
        d.replies.splice(0, 1)
      }, { rule: /repl|delete|remove/i })
    })

    test("a manager may not remove a reply from the list", async () => {
      const url = await postWithReply()
      await expectRefused(manager, url, d => {
        d.replies.splice(0, 1)
      }, { rule: /repl|delete|remove/i, checker: member })
    })

    test("the reply's author may not change its author", async () => {
      const url = await postWithReply()
      await expectRefused(member, url, d => {
        d.replies[0].author = other.id
      }, { rule: /author/i })
    })

    test("the reply's author may not change its id", async () => {
      const url = await postWithReply()
      await expectRefused(member, url, d => {
        d.replies[0].id = "another-id"
      }, { rule: /\bid\b|repl/i })
    })

    test("the reply's author may not change its created_at", async () => {
      const url = await postWithReply()
      await expectRefused(member, url, d => {
        d.replies[0].created_at = 1
      }, { rule: /created_at/i })
    })

    test("deleted must be a boolean", async () => {
      const url = await postWithReply()
      await expectRefused(member, url, d => {
        d.replies[0].deleted = "yes"
      }, { rule: /deleted|bool/i })
    })
  })

  describe("write: what never changes", () => {
    test("the author may not change the post's author", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(author, url, d => {
        d.author = member.id
      }, { rule: /author/i })
    })

    test("the author may not rewrite created_at", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(author, url, d => {
        d.created_at = 0
      }, { rule: /created_at/i })
    })

    test("the author may not change type", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(author, url, d => {
        d.type = "conversation"
      }, { rule: /type/i })
    })

    test("the author may not change schema", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(author, url, d => {
        d.schema = 2
      }, { rule: /schema/i })
    })

    test("a manager may not change type", async () => {
      const { url } = await author.create(post(author))
      await expectRefused(manager, url, d => {
        d.type = "index"
      }, { rule: /type/i })
    })
  })
})
