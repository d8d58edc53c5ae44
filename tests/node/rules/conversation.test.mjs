// SPEC §5, "conversation": its members and every manager read it; readers
// append messages in their own name; managers set state, tags, assignee and
// members; the opener sets publish and subject. A new conversation's members
// is just its opener unless a manager opens it. Everyone else gets
// doc-unavailable, for reading and for writing.

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"

import * as A from "@automerge/automerge"

import {
  conversation,
  expectAllowed,
  expectRefused,
  expectUnavailable,
  expectWriteUnavailable,
  message,
  startCommunity,
} from "../lib/community.mjs"
import { apiSend, waitFor, withTimeout } from "../lib/servers.mjs"

describe("a conversation", () => {
  let community
  let opener
  let member
  let manager
  let otherManager
  let host

  before(async () => {
    community = await startCommunity({ label: "conversation", managers: ["Maud", "Max"], hosts: ["Hugo"] })
    ;[manager, otherManager] = community.managers
    host = community.host
    opener = await community.signUp("Olive")
    member = await community.signUp("Bob")
  })

  after(async () => {
    await community?.close()
  })

  /** A question by the opener, with one message by the opener. */
  async function question(fields = {}) {
    const { url } = await opener.create(conversation(opener, { messages: [message(opener, "Is the venue accessible?")], ...fields }))
    return url
  }

  /** A question the manager added `who` to. */
  async function questionWith(who) {
    const url = await question()
    await manager.edit(url, d => {
      d.members.push(who.id)
    })
    return url
  }

  describe("opening one", () => {
    test("a member opens a conversation with the stock client; every manager reads it", async () => {
      const repo = await opener.stock()
      const handle = repo.create(conversation(opener, { subject: "Opened with the stock client" }))
      for (const reader of [manager, otherManager]) {
        await waitFor(async () => (await reader.read(handle.url)).available, { what: `${reader} reads the new conversation` })
      }
    })

    test("a member may not open it with someone else among the members", async () => {
      const client = await opener.forged()
      const { documentId, hash } = client.create(conversation(opener, { members: [opener.id, member.id] }))
      const outcome = await client.outcome(documentId, hash)
      assert.equal(outcome.accepted, false)
      assert.match(outcome.refused ?? "", /members/i)
      assert.equal((await manager.read(documentId)).available, false, "nothing was stored")
    })

    test("a member may not open it in someone else's name", async () => {
      const client = await opener.forged()
      const { documentId, hash } = client.create(conversation(member))
      const outcome = await client.outcome(documentId, hash)
      assert.equal(outcome.accepted, false)
      assert.match(outcome.refused ?? "", /opener/i)
    })

    test("a member may not open it without themselves as its member", async () => {
      const client = await opener.forged()
      const { documentId, hash } = client.create(conversation(opener, { members: [] }))
      const outcome = await client.outcome(documentId, hash)
      assert.equal(outcome.accepted, false)
      assert.match(outcome.refused ?? "", /members/i)
    })

    test("a host opens one only with themselves as its member", async () => {
      const client = await host.forged()
      const { documentId, hash } = client.create(conversation(host, { members: [host.id, member.id] }))
      const outcome = await client.outcome(documentId, hash)
      assert.equal(outcome.accepted, false)
      assert.match(outcome.refused ?? "", /members/i)
    })

    test("a conversation must be opened in state open", async () => {
      const client = await opener.forged()
      const { documentId, hash } = client.create(conversation(opener, { state: "resolved" }))
      const outcome = await client.outcome(documentId, hash)
      assert.equal(outcome.accepted, false)
      assert.match(outcome.refused ?? "", /state/i)
    })

    test("a conversation's kind must be one of the six", async () => {
      const client = await opener.forged()
      const { documentId, hash } = client.create(conversation(opener, { kind: "complaint" }))
      const outcome = await client.outcome(documentId, hash)
      assert.equal(outcome.accepted, false)
      assert.match(outcome.refused ?? "", /kind/i)
    })

    test("a conversation may not be opened with a message by someone else", async () => {
      const client = await opener.forged()
      const { documentId, hash } = client.create(conversation(opener, { messages: [message(manager, "Sure, anything you like")] }))
      const outcome = await client.outcome(documentId, hash)
      assert.equal(outcome.accepted, false)
      assert.match(outcome.refused ?? "", /author|message/i)
    })

    test("a manager opens a direct conversation with a member, who then reads and answers it", async () => {
      const { url } = await manager.create(
        conversation(manager, { kind: "direct", members: [manager.id, member.id], messages: [message(manager, "Can we talk?")] }),
      )
      const repo = await member.stock()
      const handle = await withTimeout(repo.find(url), 10_000, "the member finds the conversation")
      assert.equal(handle.doc().messages[0].body, "Can we talk?")
      await expectAllowed(member, url, d => {
        d.messages.push(message(member, "Of course"))
      }, { checker: manager })
    })
  })

  describe("read: its members and managers", () => {
    test("the opener reads it", async () => {
      const url = await question()
      const repo = await opener.stock()
      const handle = await withTimeout(repo.find(url), 10_000, "the opener finds it")
      assert.equal(handle.doc().messages.length, 1)
    })

    test("a manager who is not a member reads it", async () => {
      const url = await question()
      const read = await otherManager.read(url)
      assert.ok(read.available)
      assert.deepEqual(read.doc.members, [opener.id])
    })

    test("a host the manager added reads it", async () => {
      const url = await questionWith(host)
      const read = await host.read(url)
      assert.ok(read.available)
    })

    for (const who of ["member", "host"]) {
      test(`a ${who} who is not in it gets doc-unavailable`, async () => {
        const url = await question()
        await expectUnavailable({ member, host }[who], url)
      })

      test(`a ${who} who is not in it writing a message gets doc-unavailable and nothing is stored`, async () => {
        const url = await question()
        const writer = { member, host }[who]
        await expectWriteUnavailable(writer, url, conversation(opener, { messages: [message(writer, "let me in")] }), { checker: manager })
      })
    }
  })

  describe("write: readers append messages in their own name", () => {
    test("the opener adds a message", async () => {
      const url = await question()
      const doc = await expectAllowed(opener, url, d => {
        d.messages.push(message(opener, "Also: is there parking?"))
      }, { checker: manager })
      assert.equal(doc.messages.length, 2)
    })

    test("a manager who is not a member answers", async () => {
      const url = await question()
      const doc = await expectAllowed(otherManager, url, d => {
        d.messages.push(message(otherManager, "Yes, step-free entrance on the left"))
      }, { checker: opener })
      assert.equal(doc.messages[1].author, otherManager.id)
    })

    test("a host the manager added answers", async () => {
      const url = await questionWith(host)
      await expectAllowed(host, url, d => {
        d.messages.push(message(host, "I'll be at the door"))
      }, { checker: opener })
    })

    test("a message whose author is someone else is refused", async () => {
      const url = await question()
      await expectRefused(opener, url, d => {
        d.messages.push(message(manager, "Your request is approved"))
      }, { rule: /author/i, checker: manager })
    })

    test("a manager may not write a message in the opener's name", async () => {
      const url = await question()
      await expectRefused(manager, url, d => {
        d.messages.push(message(opener, "Never mind, solved"))
      }, { rule: /author/i })
    })

    test("a message may not be edited after it is sent, even by its author", async () => {
      const url = await question()
      await expectRefused(opener, url, d => {
        d.messages[0].body = "Is the venue accessible? (edited)"
      }, { rule: /message|body/i, checker: manager })
    })

    test("a manager may not edit the opener's message", async () => {
      const url = await question()
      await expectRefused(manager, url, d => {
        A.splice(d, ["messages", 0, "body"], 0, 3, "Why")
      }, { rule: /message|body/i })
    })

    test("a message may not be deleted, even by a manager", async () => {
      const url = await question()
      await expectRefused(manager, url, d => {
        d.messages.splice(0, 1)
      }, { rule: /message|delete|remove/i })
    })

    test("the opener may not delete their own message", async () => {
      const url = await question()
      await expectRefused(opener, url, d => {
        d.messages.splice(0, 1)
      }, { rule: /message|delete|remove/i, checker: manager })
    })

    test("a message's id and created_at never change", async () => {
      const url = await question()
      await expectRefused(opener, url, d => {
        d.messages[0].created_at = 0
      }, { rule: /created_at|message/i, checker: manager })
      await expectRefused(opener, url, d => {
        d.messages[0].id = "renamed"
      }, { rule: /\bid\b|message/i, checker: manager })
    })

    test("a message with a field outside the schema is refused", async () => {
      const url = await question()
      await expectRefused(opener, url, d => {
        d.messages.push(message(opener, "with extras", { urgent: true }))
      }, { rule: /urgent|field|schema|unknown/i, checker: manager })
    })
  })

  describe("write: managers set state, tags, assignee and members", () => {
    test("a manager resolves it, tags it and assigns it", async () => {
      const url = await question()
      const doc = await expectAllowed(manager, url, d => {
        d.state = "resolved"
        d.tags.push("venue")
        d.tags.push("accessibility")
        d.assignee = otherManager.id
      }, { checker: opener })
      assert.equal(doc.state, "resolved")
      assert.deepEqual(doc.tags, ["venue", "accessibility"])
      assert.equal(doc.assignee, otherManager.id)
    })

    test("a manager reopens it, removes a tag and unassigns it", async () => {
      const url = await question()
      await manager.edit(url, d => {
        d.state = "resolved"
        d.tags.push("venue")
        d.assignee = manager.id
      })
      const doc = await expectAllowed(otherManager, url, d => {
        d.state = "open"
        d.tags.splice(0, 1)
        delete d.assignee
      })
      assert.equal(doc.state, "open")
      assert.deepEqual(doc.tags, [])
      assert.equal(doc.assignee, undefined)
    })

    test("a manager adds a member, who can then read and write it", async () => {
      const url = await question()
      await expectAllowed(manager, url, d => {
        d.members.push(member.id)
      }, { checker: member })
      await expectAllowed(member, url, d => {
        d.messages.push(message(member, "I was wondering the same"))
      }, { checker: opener })
    })

    test("a manager removes a member, who then gets doc-unavailable", async () => {
      const url = await questionWith(member)
      assert.ok((await member.read(url)).available)
      await expectAllowed(manager, url, d => {
        d.members.splice(d.members.indexOf(member.id), 1)
      })
      await expectUnavailable(member, url)
    })

    test("a state outside open and resolved is refused", async () => {
      const url = await question()
      await expectRefused(manager, url, d => {
        d.state = "snoozed"
      }, { rule: /state/i })
    })

    for (const [field, change] of [
      ["state", d => void (d.state = "resolved")],
      ["tags", d => void d.tags.push("urgent")],
      ["assignee", d => void (d.assignee = "someone")],
      ["members", d => void d.members.push("a-friend")],
    ]) {
      test(`the opener may not change ${field}`, async () => {
        const url = await question()
        await expectRefused(opener, url, change, { rule: new RegExp(field, "i"), checker: manager })
      })
    }

    test("a member the manager added may not add members", async () => {
      const url = await questionWith(member)
      await expectRefused(member, url, d => {
        d.members.push(host.id)
      }, { rule: /members/i, checker: manager })
    })

    test("a host the manager added may not set state or members", async () => {
      const url = await questionWith(host)
      await expectRefused(host, url, d => {
        d.state = "resolved"
      }, { rule: /state/i, checker: manager })
      await expectRefused(host, url, d => {
        d.members.push(member.id)
      }, { rule: /members/i, checker: manager })
    })
  })

  describe("write: the opener sets publish and subject", () => {
    test("the opener changes the subject", async () => {
      const url = await question()
      const doc = await expectAllowed(opener, url, d => {
        d.subject = "Venue accessibility"
      }, { checker: manager })
      assert.equal(doc.subject, "Venue accessibility")
    })

    test("the opener consents to publishing, anonymously", async () => {
      const url = await question()
      const doc = await expectAllowed(opener, url, d => {
        d.publish = { consent: true, anonymous: true }
      }, { checker: manager })
      assert.deepEqual(doc.publish, { consent: true, anonymous: true })
    })

    test("the opener withdraws consent", async () => {
      const url = await question()
      await opener.edit(url, d => {
        d.publish = { consent: true, anonymous: false }
      })
      const doc = await expectAllowed(opener, url, d => {
        d.publish.consent = false
      })
      assert.equal(doc.publish.consent, false)
    })

    test("publish must hold two booleans", async () => {
      const url = await question()
      await expectRefused(opener, url, d => {
        d.publish = { consent: "yes", anonymous: false }
      }, { rule: /publish|consent|bool/i, checker: manager })
    })

    for (const who of ["manager", "member the manager added"]) {
      test(`a ${who} may not change the subject`, async () => {
        const url = await questionWith(member)
        const writer = { manager, "member the manager added": member }[who]
        await expectRefused(writer, url, d => {
          d.subject = "Renamed"
        }, { rule: /subject/i, checker: manager })
      })

      test(`a ${who} may not consent to publishing for the opener`, async () => {
        const url = await questionWith(member)
        const writer = { manager, "member the manager added": member }[who]
        await expectRefused(writer, url, d => {
          d.publish = { consent: true, anonymous: false }
        }, { rule: /publish/i, checker: manager })
      })
    }
  })

  describe("role changes", () => {
    test("a member made manager reads every conversation; made member again, only their own", async () => {
      const riley = await community.signUp("Riley")
      const url = await question()
      await expectUnavailable(riley, url)
      const promoted = await apiSend(community.server.httpUrl, "PUT", `/api/users/${riley.id}/role`, await manager.token(), { role: "manager" })
      assert.ok(promoted.status >= 200 && promoted.status < 300, JSON.stringify(promoted.body))
      const read = await riley.read(url)
      assert.ok(read.available, "a new manager reads a conversation they are not in")
      const demoted = await apiSend(community.server.httpUrl, "PUT", `/api/users/${riley.id}/role`, await manager.token(), { role: "member" })
      assert.ok(demoted.status >= 200 && demoted.status < 300, JSON.stringify(demoted.body))
      await expectUnavailable(riley, url)
    })

    test("a role change closes the user's live sync connections", async () => {
      const riley = await community.signUp("Riley")
      const client = await riley.forged()
      const changed = await apiSend(community.server.httpUrl, "PUT", `/api/users/${riley.id}/role`, await manager.token(), { role: "host" })
      assert.ok(changed.status >= 200 && changed.status < 300, JSON.stringify(changed.body))
      await client.waitForErrorAndClose()
      assert.ok(client.closed)
    })

    test("a member may not change roles", async () => {
      const riley = await community.signUp("Riley")
      const refused = await apiSend(community.server.httpUrl, "PUT", `/api/users/${riley.id}/role`, await member.token(), { role: "manager" })
      assert.equal(refused.status, 403, JSON.stringify(refused.body))
    })
  })

  describe("write: what never changes", () => {
    for (const [field, change] of [
      ["opener", (d, o) => void (d.opener = o.member)],
      ["created_at", d => void (d.created_at = 0)],
      ["kind", d => void (d.kind = "report")],
      ["type", d => void (d.type = "post")],
      ["about", d => void (d.about = { post: "2r2qKxnyTnMnAvtYqQCKGqKQS5bP" })],
    ]) {
      test(`a manager may not change ${field}`, async () => {
        const url = await question()
        await expectRefused(manager, url, d => change(d, { member: member.id }), { rule: new RegExp(field, "i") })
      })
    }

    test("the opener may not change kind", async () => {
      const url = await question()
      await expectRefused(opener, url, d => {
        d.kind = "report"
      }, { rule: /kind/i, checker: manager })
    })

    test("a field outside the schema is refused", async () => {
      const url = await question()
      await expectRefused(manager, url, d => {
        d.priority = "high"
      }, { rule: /priority|field|schema|unknown/i })
    })
  })
})
