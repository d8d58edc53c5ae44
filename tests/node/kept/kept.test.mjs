// The documents the server keeps (SPEC §4: index, directory, inbox, drafts)
// and the managers' tools (SPEC §2: roles, promote, needs, metrics), driven
// with the stock automerge-repo client against the real binary.

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"
import path from "node:path"

import { startBackchannelServer, withTimeout } from "../lib/servers.mjs"
import {
  addUser,
  api,
  closeAll,
  connect,
  login,
  newConversation,
  newPost,
  reply,
  sendMessage,
  signUp,
  startDocs,
  tempDir,
  waitForDoc,
  waitUntilServerAcked,
} from "../lib/people.mjs"

const BINARY = process.env.BACKCHANNEL_BIN

describe("documents the server keeps", () => {
  let dataDir
  let server
  let meg // a manager
  const repos = []
  const track = repo => (repos.push(repo), repo)

  before(async () => {
    dataDir = path.join(tempDir("kept"), "data")
    await addUser(dataDir, { email: "meg@example.org", name: "Meg", role: "manager" }, BINARY)
    server = await startBackchannelServer({ binary: BINARY, dataDir, env: process.env.SERVER_RUST_LOG ? { RUST_LOG: process.env.SERVER_RUST_LOG } : {} })
    meg = await login(server.httpUrl, "meg@example.org")
  })

  after(async () => {
    await closeAll(repos)
    const refusals = (server?.stderrText() ?? "").split("\n").filter(line => line.includes("closing sync connection"))
    if (refusals.length) console.log(refusals.join("\n"))
    if (process.env.SHOW_SERVER_LOG) console.log(server?.stderrText())
    await server?.stop()
  })

  test("a published post is in the index within a second, with its author's name and reply count", async () => {
    const ada = await signUp(server.httpUrl, "Ada")
    const bob = await signUp(server.httpUrl, "Bob")
    const adaRepo = track(await connect(server, ada))
    const bobRepo = track(await connect(server, bob))
    const index = await bobRepo.find((await startDocs(server.httpUrl, bob)).index)

    const post = newPost(adaRepo, ada, { title: "Meetup venue" })
    await waitUntilServerAcked(adaRepo, post)
    const stored = Date.now()
    const listed = await waitForDoc(index, doc => doc.posts?.[post.documentId], { timeoutMs: 1_000, what: "the post in the index" })
    assert.ok(Date.now() - stored <= 1_000)
    const entry = listed.posts[post.documentId]
    assert.equal(entry.title, "Meetup venue")
    assert.equal(entry.author, ada.user.id)
    assert.equal(entry.author_name, "Ada")
    assert.equal(entry.reply_count, 0)

    const bobsCopy = await bobRepo.find(post.url)
    reply(bobsCopy, bob)
    await waitUntilServerAcked(bobRepo, bobsCopy)
    const updated = await waitForDoc(index, doc => doc.posts[post.documentId].reply_count === 1, {
      timeoutMs: 1_000,
      what: "the reply count",
    })
    assert.ok(updated.posts[post.documentId].last_activity >= entry.last_activity)
  })

  test("a draft is not in the index until published, and leaves it when hidden", async () => {
    const ada = await signUp(server.httpUrl, "Ada")
    const adaRepo = track(await connect(server, ada))
    const index = await adaRepo.find((await startDocs(server.httpUrl, ada)).index)
    const post = newPost(adaRepo, ada, { status: "draft", title: "Not yet" })
    await waitUntilServerAcked(adaRepo, post)
    await new Promise(resolve => setTimeout(resolve, 300))
    assert.equal(index.doc().posts[post.documentId], undefined)
    post.change(doc => {
      doc.status = "published"
    })
    await waitForDoc(index, doc => doc.posts[post.documentId], { what: "the published post" })
    post.change(doc => {
      doc.status = "hidden"
    })
    await waitForDoc(index, doc => !doc.posts[post.documentId], { what: "the hidden post to leave the index" })
  })

  test("a conversation is in its opener's and every manager's inbox, and follows membership", async () => {
    const ada = await signUp(server.httpUrl, "Ada")
    const bob = await signUp(server.httpUrl, "Bob")
    const adaRepo = track(await connect(server, ada))
    const bobRepo = track(await connect(server, bob))
    const megRepo = track(await connect(server, meg))
    const adaInbox = await adaRepo.find((await startDocs(server.httpUrl, ada)).inbox)
    const bobInbox = await bobRepo.find((await startDocs(server.httpUrl, bob)).inbox)
    const megInbox = await megRepo.find((await startDocs(server.httpUrl, meg)).inbox)

    const conversation = newConversation(adaRepo, ada, { subject: "My account", kind: "question" })
    await waitUntilServerAcked(adaRepo, conversation)
    const id = conversation.documentId
    const mine = await waitForDoc(adaInbox, doc => doc.conversations?.[id], { timeoutMs: 1_000, what: "ada's inbox entry" })
    assert.equal(mine.owner, ada.user.id)
    assert.deepEqual(
      { subject: mine.conversations[id].subject, kind: mine.conversations[id].kind, state: mine.conversations[id].state },
      { subject: "My account", kind: "question", state: "open" },
    )
    await waitForDoc(megInbox, doc => doc.conversations?.[id], { timeoutMs: 1_000, what: "the manager's inbox entry" })
    assert.equal(bobInbox.doc().conversations?.[id], undefined)

    const megsCopy = await megRepo.find(conversation.url)
    megsCopy.change(doc => {
      doc.members.push(bob.user.id)
    })
    await waitForDoc(bobInbox, doc => doc.conversations?.[id], { what: "bob's entry once added" })
    sendMessage(megsCopy, meg, "We are on it")
    await waitForDoc(adaInbox, doc => doc.conversations[id].last_author === meg.user.id, { what: "the last author" })
    megsCopy.change(doc => {
      doc.members.splice(doc.members.indexOf(bob.user.id), 1)
    })
    await waitForDoc(bobInbox, doc => !doc.conversations[id], { what: "bob's entry to go once removed" })
  })

  test("the directory lists names and roles without emails, and follows role changes", async () => {
    const ada = await signUp(server.httpUrl, "Ada Lovelace")
    const adaRepo = track(await connect(server, ada))
    const directory = await adaRepo.find((await startDocs(server.httpUrl, ada)).directory)
    const listed = await waitForDoc(directory, doc => doc.users?.[ada.user.id], { what: "ada in the directory" })
    assert.deepEqual({ ...listed.users[ada.user.id] }, { display_name: "Ada Lovelace", role: "member" })
    assert.equal(listed.users[meg.user.id].role, "manager")
    assert.ok(!JSON.stringify(listed).includes("@example.org"), "no emails in the directory")

    const answer = await api(server.httpUrl, meg.access_token).put(`/api/users/${ada.user.id}/role`, { role: "host" })
    assert.equal(answer.status, 200, answer.text)
    await waitForDoc(directory, doc => doc.users[ada.user.id].role === "host", { what: "the new role" })
  })

  test("a manager made member stops receiving a conversation on the live connection", async () => {
    const ada = await signUp(server.httpUrl, "Ada")
    const kim = await signUp(server.httpUrl, "Kim")
    const megApi = api(server.httpUrl, meg.access_token)
    assert.equal((await megApi.put(`/api/users/${kim.user.id}/role`, { role: "manager" })).status, 200)
    const adaRepo = track(await connect(server, ada))
    const kimRepo = track(await connect(server, kim))
    const conversation = newConversation(adaRepo, ada)
    await waitUntilServerAcked(adaRepo, conversation)
    const kimsCopy = await withTimeout(kimRepo.find(conversation.url), 10_000, "the manager finds the conversation")

    assert.equal((await megApi.put(`/api/users/${kim.user.id}/role`, { role: "member" })).status, 200)
    sendMessage(conversation, ada, "something private")
    await waitUntilServerAcked(adaRepo, conversation)
    await new Promise(resolve => setTimeout(resolve, 1_000))
    const seen = kimsCopy.doc().messages.map(message => message.body)
    assert.ok(!seen.includes("something private"), `a former manager still received: ${seen}`)
  })

  test("promoting a consented question makes a public post, anonymous when asked", async () => {
    const ada = await signUp(server.httpUrl, "Ada")
    const adaRepo = track(await connect(server, ada))
    const megRepo = track(await connect(server, meg))
    const index = await adaRepo.find((await startDocs(server.httpUrl, ada)).index)
    const conversation = newConversation(adaRepo, ada, { subject: "How do refunds work?", body: "I paid twice." })
    await waitUntilServerAcked(adaRepo, conversation)
    const megApi = api(server.httpUrl, meg.access_token)
    const refused = await megApi.post(`/api/conversations/${conversation.documentId}/promote`)
    assert.equal(refused.status, 409, refused.text)
    assert.equal(refused.body.error.code, "no_consent")

    const megsCopy = await megRepo.find(conversation.url)
    sendMessage(megsCopy, meg, "We refund within a week.")
    await waitUntilServerAcked(megRepo, megsCopy)
    conversation.change(doc => {
      doc.publish = { consent: true, anonymous: true }
    })
    await waitUntilServerAcked(adaRepo, conversation)
    const promoted = await megApi.post(`/api/conversations/${conversation.documentId}/promote`)
    assert.equal(promoted.status, 201, promoted.text)
    assert.match(promoted.body.url, /^automerge:/)
    const again = await megApi.post(`/api/conversations/${conversation.documentId}/promote`)
    assert.equal(again.body.url, promoted.body.url)

    const post = await adaRepo.find(promoted.body.url)
    const doc = post.doc()
    assert.equal(doc.type, "post")
    assert.equal(doc.status, "published")
    assert.equal(doc.title, "How do refunds work?")
    assert.ok(doc.body.includes("I paid twice.") && doc.body.includes("We refund within a week."), doc.body)
    assert.equal(doc.anonymous, true)
    assert.notEqual(doc.author, ada.user.id, "an anonymous post never names its opener")
    assert.ok(!JSON.stringify(doc).includes(ada.user.id))
    const listed = await waitForDoc(index, d => d.posts[post.documentId], { what: "the promoted post in the index" })
    assert.equal(listed.posts[post.documentId].author_name, "Anonymous")
  })

  test("promotion is refused where someone besides the opener and the team wrote", async () => {
    const ada = await signUp(server.httpUrl, "Ada")
    const bob = await signUp(server.httpUrl, "Bob")
    const adaRepo = track(await connect(server, ada))
    const bobRepo = track(await connect(server, bob))
    const megRepo = track(await connect(server, meg))
    const conversation = newConversation(adaRepo, ada, { subject: "Shared worry", body: "Both of us saw it." })
    await waitUntilServerAcked(adaRepo, conversation)
    const megsCopy = await megRepo.find(conversation.url)
    megsCopy.change(doc => {
      doc.members.push(bob.user.id)
    })
    await waitUntilServerAcked(megRepo, megsCopy)
    const bobsCopy = await bobRepo.find(conversation.url)
    sendMessage(bobsCopy, bob, "Bob's own private words.")
    await waitUntilServerAcked(bobRepo, bobsCopy)
    await waitForDoc(conversation, doc => doc.messages.length === 2, { what: "Bob's message on Ada's device" })
    conversation.change(doc => {
      doc.publish = { consent: true, anonymous: false }
    })
    await waitUntilServerAcked(adaRepo, conversation)

    const refused = await api(server.httpUrl, meg.access_token).post(`/api/conversations/${conversation.documentId}/promote`)
    assert.equal(refused.status, 409, refused.text)
    assert.equal(refused.body.error.code, "others_have_spoken")
  })

  test("a conversation a manager opened is not published with the member's words on the manager's consent", async () => {
    const ada = await signUp(server.httpUrl, "Ada")
    const adaRepo = track(await connect(server, ada))
    const megRepo = track(await connect(server, meg))
    const conversation = newConversation(megRepo, meg, { kind: "direct", subject: "About your post", body: "Could we talk?", members: [meg.user.id, ada.user.id] })
    await waitUntilServerAcked(megRepo, conversation)
    const adasCopy = await adaRepo.find(conversation.url)
    sendMessage(adasCopy, ada, "Something I only tell the team.")
    await waitUntilServerAcked(adaRepo, adasCopy)
    await waitForDoc(conversation, doc => doc.messages.length === 2, { what: "Ada's message on Meg's device" })
    conversation.change(doc => {
      doc.publish = { consent: true, anonymous: false }
    })
    await waitUntilServerAcked(megRepo, conversation)

    const refused = await api(server.httpUrl, meg.access_token).post(`/api/conversations/${conversation.documentId}/promote`)
    assert.equal(refused.status, 409, refused.text)
    assert.equal(refused.body.error.code, "others_have_spoken")
  })

  test("needs and weekly figures count what happened", async () => {
    const ada = await signUp(server.httpUrl, "Ada")
    const adaRepo = track(await connect(server, ada))
    const megApi = api(server.httpUrl, meg.access_token)
    const since = Date.now() - 1
    const before = (await megApi.get(`/api/metrics/community?weeks=1`)).body.weeks[0]
    const report = newConversation(adaRepo, ada, { kind: "report", subject: "Spam" })
    const idea = newConversation(adaRepo, ada, { kind: "idea", subject: "A picnic" })
    await waitUntilServerAcked(adaRepo, report)
    await waitUntilServerAcked(adaRepo, idea)
    const megRepo = track(await connect(server, meg))
    const megsReport = await megRepo.find(report.url)
    megsReport.change(doc => {
      doc.tags.push("spam")
      doc.state = "resolved"
    })
    await waitUntilServerAcked(megRepo, megsReport)
    const post = newPost(adaRepo, ada)
    await waitUntilServerAcked(adaRepo, post)

    let needs
    for (let i = 0; i < 50; i++) {
      needs = (await megApi.get(`/api/needs?since=${since}`)).body
      if (needs.total === 2 && needs.by_tag.spam === 1) break
      await new Promise(resolve => setTimeout(resolve, 20))
    }
    assert.equal(needs.total, 2)
    assert.equal(needs.by_kind.report, 1)
    assert.equal(needs.by_kind.idea, 1)
    assert.equal(needs.by_state.resolved, 1)
    assert.equal(needs.by_state.open, 1)
    assert.equal(needs.by_tag.spam, 1)
    const csv = await megApi.get(`/api/needs?since=${since}&format=csv`)
    assert.ok(csv.text.includes("tag,spam,1\n"), csv.text)

    const week = (await megApi.get(`/api/metrics/community?weeks=1`)).body.weeks[0]
    assert.equal(week.conversations_opened - before.conversations_opened, 2)
    assert.equal(week.back_channel_messages - before.back_channel_messages, 2)
    assert.equal(week.public_posts - before.public_posts, 1)
  })

  test("after a restart the kept documents are still right and keep updating", async () => {
    const ada = await signUp(server.httpUrl, "Ada")
    let adaRepo = track(await connect(server, ada))
    const docs = await startDocs(server.httpUrl, ada)
    const post = newPost(adaRepo, ada, { title: "Survives restarts" })
    await waitUntilServerAcked(adaRepo, post)
    await waitForDoc(await adaRepo.find(docs.index), doc => doc.posts[post.documentId], { what: "the post in the index" })
    await closeAll([adaRepo])

    await server.stop()
    server = await startBackchannelServer({ binary: BINARY, dataDir })
    const again = await login(server.httpUrl, ada.email)
    assert.deepEqual(await startDocs(server.httpUrl, again), docs)
    adaRepo = track(await connect(server, again))
    const index = await adaRepo.find(docs.index)
    assert.equal(index.doc().posts[post.documentId].title, "Survives restarts")
    const copy = await adaRepo.find(post.url)
    reply(copy, again)
    await waitForDoc(index, doc => doc.posts[post.documentId].reply_count === 1, { what: "the reply count after a restart" })
  })

  test("a manager added with the CLI while the server was stopped finds every earlier conversation in their inbox", async () => {
    const ada = await signUp(server.httpUrl, "Ada")
    const adaRepo = track(await connect(server, ada))
    const conversation = newConversation(adaRepo, ada, { subject: "Before the new manager" })
    await waitUntilServerAcked(adaRepo, conversation)
    await closeAll([adaRepo])

    await server.stop()
    await addUser(dataDir, { email: "kim@example.org", name: "Kim", role: "manager" }, BINARY)
    server = await startBackchannelServer({ binary: BINARY, dataDir })
    const kim = await login(server.httpUrl, "kim@example.org")
    const kimRepo = track(await connect(server, kim))
    const inbox = await kimRepo.find((await startDocs(server.httpUrl, kim)).inbox)
    await waitForDoc(inbox, doc => doc.conversations?.[conversation.documentId], { what: "the earlier conversation" })
  })
})
