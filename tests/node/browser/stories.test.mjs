// The app's stories in real headless Chromium (Debian `chromium`, driven by
// playwright-core) against the real server: members publish and reply live,
// work offline and lose nothing, two devices of one member converge on a
// draft, the back-channel reaches the team and nobody else, and a push
// notification's click opens its thread. The tests take the phone-size
// screenshots in docs/screenshots.

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"
import path from "node:path"

import { chromium } from "playwright-core"

import { REPO_ROOT } from "../lib/servers.mjs"
import { PASSWORD, startCommunity } from "../lib/community.mjs"
import { deliverPushUntilShown } from "../lib/browser-push.mjs"

const BINARY = process.env.BACKCHANNEL_BIN
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium"
const PHONE = { width: 360, height: 740 }
const SHOTS = path.join(REPO_ROOT, "docs/screenshots")

let community
let browser
let counter = 0

before(async () => {
  community = await startCommunity({ label: "browser-stories", managers: ["Maud"], hosts: [], ...(BINARY ? { binary: BINARY } : {}) })
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] })
})

after(async () => {
  await browser?.close()
  await community?.close()
})

/** A phone: a fresh browser context (its own IndexedDB, service worker and storage). */
async function phone() {
  const context = await browser.newContext({ viewport: PHONE, hasTouch: true, isMobile: true })
  const page = await context.newPage()
  page.on("pageerror", error => console.log(`[page error] ${error.message}`))
  if (process.env.DEBUG_PAGES) page.on("console", message => console.log(`[console] ${message.text().slice(0, 300)}`))
  await page.goto(community.server.httpUrl)
  return { context, page }
}

async function signUp(page, name) {
  counter += 1
  const email = `${name.toLowerCase()}-${counter}-${Date.now()}@example.org`
  await page.getByLabel("Email").fill(email)
  await page.getByLabel("Password").fill(PASSWORD)
  await page.getByLabel("Your name (to sign up)").fill(name)
  await page.getByRole("button", { name: "Sign up" }).click()
  await page.getByRole("heading", { name: "Community" }).waitFor()
  return email
}

async function signIn(page, email) {
  await page.getByLabel("Email").fill(email)
  await page.getByLabel("Password").fill(PASSWORD)
  await page.getByRole("button", { name: "Sign in" }).click()
  await page.getByRole("heading", { name: "Community" }).waitFor()
}

/** Waits until the status line says every change is stored on the server. */
async function stored(page) {
  try {
    await page.getByRole("status").filter({ hasText: "All changes stored on the server" }).waitFor({ timeout: 15_000 })
  } catch (error) {
    if (process.env.DEBUG_PAGES) console.log(await page.evaluate(() => {
      const repo = window.repo
      const storageId = localStorage.getItem("backchannel.server-storage-id")
      return JSON.stringify({ peers: repo.peers, handles: Object.values(repo.handles).filter(h => h.isReady()).map(h => ({ id: h.documentId, heads: h.heads(), server: h.getSyncInfo(storageId)?.lastHeads })) }, null, 1)
    }), page.url())
    if (process.env.DEBUG_PAGES) console.log(community.server.stderrText().split("\n").filter(l => /WARN|ERROR|refus/i.test(l)).slice(-20).join("\n"))
    throw new Error(`the status line still says “${await page.locator("#sync-status").innerText()}”`, { cause: error })
  }
}

/** Waits for the service worker to control the page, so a reload works offline. */
async function controlled(page) {
  await page.evaluate(() => navigator.serviceWorker.ready)
  if (!(await page.evaluate(() => navigator.serviceWorker.controller !== null))) {
    await page.reload()
    await page.waitForFunction(() => navigator.serviceWorker.controller !== null)
  }
}

async function publish(page, title, body) {
  await page.getByRole("link", { name: "New post" }).first().click()
  await page.getByLabel("Title").fill(title)
  await page.getByLabel("Text").fill(body)
  await page.getByRole("button", { name: "Publish" }).click()
  await page.getByRole("heading", { name: title }).waitFor()
  return page.url().split("#/post/")[1]
}

async function reply(page, text) {
  await page.getByLabel("Your reply").fill(text)
  await page.getByRole("button", { name: "Send reply" }).click()
}

function replies(page) {
  return page.getByRole("list", { name: "Replies" })
}

describe("public threads", () => {
  test("a post published in the app reaches another member, and their reply appears live", async () => {
    const ada = await phone()
    const bob = await phone()
    try {
      await signUp(ada.page, "Ada")
      await ada.page.getByRole("link", { name: "New post" }).first().click()
      await ada.page.getByLabel("Title").fill("Meetup venue")
      await ada.page.getByLabel("Text").fill("Where shall we meet in March?")
      await ada.page.screenshot({ path: path.join(SHOTS, "new-post.png") })
      await ada.page.getByRole("button", { name: "Publish" }).click()
      await ada.page.getByRole("heading", { name: "Meetup venue" }).waitFor()

      await signUp(bob.page, "Bob")
      await bob.page.getByRole("link", { name: "Meetup venue" }).click({ timeout: 10_000 })
      await bob.page.getByText("Where shall we meet in March?").waitFor()
      await reply(bob.page, "The library has a free room.")

      await replies(ada.page).getByText("The library has a free room.").waitFor({ timeout: 10_000 })
      assert.match(await replies(ada.page).innerText(), /Bob/)
      await stored(ada.page)
      await ada.page.screenshot({ path: path.join(SHOTS, "thread.png") })
    } finally {
      await ada.context.close()
      await bob.context.close()
    }
  })

  test("a reply and a draft post written offline survive a reload and go out once online", async () => {
    const ada = await phone()
    const bob = await phone()
    try {
      await signUp(ada.page, "Ada")
      const post = await publish(ada.page, "Offline evening", "Who is coming?")
      await signUp(bob.page, "Bob")
      await bob.page.goto(`${community.server.httpUrl}/#/post/${post}`)
      await bob.page.getByRole("heading", { name: "Offline evening" }).waitFor()
      await stored(bob.page)
      await controlled(bob.page)
      await bob.page.getByRole("heading", { name: "Offline evening" }).waitFor()

      await bob.context.setOffline(true)
      await bob.page.getByRole("status").filter({ hasText: "Offline" }).waitFor()
      await reply(bob.page, "I am, written on the train.")
      await replies(bob.page).getByText("I am, written on the train.").waitFor()
      await bob.page.getByLabel("Your reply").fill("And this one is half-typed")
      await bob.page.getByRole("status").filter({ hasText: /changes? waits? on this device/ }).waitFor()

      await bob.page.getByRole("link", { name: "New post" }).first().click()
      await bob.page.getByLabel("Title").fill("Written with no signal")
      await bob.page.getByLabel("Text").fill("Kept on the phone")
      const draftUrl = bob.page.url()

      await bob.page.reload()
      await bob.page.getByLabel("Title").waitFor()
      assert.equal(await bob.page.getByLabel("Title").inputValue(), "Written with no signal")
      assert.equal(await bob.page.getByLabel("Text").inputValue(), "Kept on the phone")
      await bob.page.goto(`${community.server.httpUrl}/#/post/${post}`)
      await replies(bob.page).getByText("I am, written on the train.").waitFor()
      assert.equal(await bob.page.getByLabel("Your reply").inputValue(), "And this one is half-typed")
      await bob.page.screenshot({ path: path.join(SHOTS, "offline.png") })

      await bob.context.setOffline(false)
      await replies(ada.page).getByText("I am, written on the train.").waitFor({ timeout: 15_000 })
      await stored(bob.page)

      // The draft reached the server too: publishing it from the phone later
      // shows it to Ada.
      await bob.page.goto(draftUrl)
      await bob.page.getByRole("button", { name: "Publish" }).click()
      await ada.page.getByRole("link", { name: "Community" }).click()
      await ada.page.getByRole("link", { name: "Written with no signal" }).waitFor({ timeout: 15_000 })
    } finally {
      await ada.context.close()
      await bob.context.close()
    }
  })

  test("two devices of one member edit the same draft offline and converge", async () => {
    const laptop = await phone()
    const mobile = await phone()
    try {
      const email = await signUp(laptop.page, "Cleo")
      await laptop.page.getByRole("link", { name: "New post" }).first().click()
      await laptop.page.getByLabel("Title").fill("Spring plans")
      await stored(laptop.page)

      await signIn(mobile.page, email)
      await mobile.page.getByRole("list", { name: "My drafts" }).getByRole("link", { name: "Spring plans" }).click({ timeout: 15_000 })
      await mobile.page.getByLabel("Title").waitFor()
      assert.equal(await mobile.page.getByLabel("Title").inputValue(), "Spring plans")
      await stored(mobile.page)

      await laptop.context.setOffline(true)
      await mobile.context.setOffline(true)
      await laptop.page.getByLabel("Text").fill("Picnic in the park.")
      await mobile.page.getByLabel("Title").fill("Spring plans (draft)")
      await mobile.page.getByLabel("Text").fill("Bring a kite.")
      await laptop.context.setOffline(false)
      await mobile.context.setOffline(false)

      const both = async page => [await page.getByLabel("Title").inputValue(), await page.getByLabel("Text").inputValue()]
      let seen
      for (let tries = 0; tries < 300; tries += 1) {
        seen = [await both(laptop.page), await both(mobile.page)]
        if (JSON.stringify(seen[0]) === JSON.stringify(seen[1]) && seen[0][1].includes("Picnic") && seen[0][1].includes("kite")) break
        await new Promise(resolve => setTimeout(resolve, 100))
      }
      assert.deepEqual(seen[0], seen[1], "both devices show the same draft")
      assert.equal(seen[0][0], "Spring plans (draft)")
      assert.match(seen[0][1], /Picnic in the park\./)
      assert.match(seen[0][1], /Bring a kite\./)
    } finally {
      await laptop.context.close()
      await mobile.context.close()
    }
  })
})

describe("the back-channel", () => {
  test("a member's question reaches the team inbox, the answer comes back live, and another member cannot find it", async () => {
    const member = await phone()
    const manager = await phone()
    const other = await phone()
    try {
      await signUp(member.page, "Dana")
      await member.page.getByRole("link", { name: "Contact the team" }).first().click()
      await member.page.getByRole("list", { name: "The team" }).getByText("Maud").waitFor()
      await member.page.screenshot({ path: path.join(SHOTS, "contact.png") })
      await member.page.getByRole("link", { name: /Ask privately/ }).click()
      await member.page.getByLabel("Subject").fill("How do I change my name?")
      await member.page.getByLabel("Message").fill("I signed up with a typo.")
      await member.page.getByRole("button", { name: "Send to the team" }).click()
      await member.page.getByRole("heading", { name: "How do I change my name?" }).waitFor()
      await stored(member.page)
      const conversation = member.page.url().split("#/conversation/")[1]

      await signIn(manager.page, community.manager.email)
      await manager.page.getByRole("link", { name: "Team inbox" }).click()
      await manager.page.getByRole("list", { name: "Team inbox" }).getByRole("link", { name: "How do I change my name?" }).waitFor({ timeout: 15_000 })
      await manager.page.screenshot({ path: path.join(SHOTS, "inbox.png") })
      await manager.page.getByRole("list", { name: "Team inbox" }).getByRole("link", { name: "How do I change my name?" }).click()
      await manager.page.getByText("I signed up with a typo.").waitFor()
      await manager.page.getByLabel("Your message").fill("Settings will have it soon; I changed it for you.")
      await manager.page.getByRole("button", { name: "Send message" }).click()

      const messages = member.page.getByRole("list", { name: "Messages" })
      await messages.getByText("Settings will have it soon; I changed it for you.").waitFor({ timeout: 15_000 })
      assert.match(await messages.innerText(), /Maud/)
      await member.page.screenshot({ path: path.join(SHOTS, "conversation.png") })

      await signUp(other.page, "Eve")
      await other.page.goto(`${community.server.httpUrl}/#/conversation/${conversation}`)
      await other.page.getByRole("heading", { name: "This conversation is not available" }).waitFor({ timeout: 15_000 })
      assert.equal(await other.page.getByText("I signed up with a typo.").count(), 0)
      await other.page.getByRole("link", { name: "My conversations" }).click()
      await other.page.getByText("No conversations yet.").waitFor()
    } finally {
      await member.context.close()
      await manager.context.close()
      await other.context.close()
    }
  })

  test("a flag from a thread reaches the managers' list of new reports and flags as it arrives", async () => {
    const member = await phone()
    const manager = await phone()
    try {
      await signIn(manager.page, community.manager.email)
      await manager.page.getByRole("link", { name: "Team inbox" }).click()
      await manager.page.getByRole("list", { name: "New reports and flags" }).waitFor()

      await signUp(member.page, "Finn")
      await publish(member.page, "Heated topic", "Opinions?")
      await member.page.getByRole("link", { name: "Flag this conversation" }).click()
      await member.page.getByLabel("Message").fill("Two members are insulting each other here.")
      await member.page.getByRole("button", { name: "Send to the team" }).click()
      await member.page.getByRole("heading", { name: "Flag: Heated topic" }).waitFor()

      await manager.page.getByRole("list", { name: "New reports and flags" }).getByRole("link", { name: "Flag: Heated topic" }).waitFor({ timeout: 15_000 })
    } finally {
      await member.context.close()
      await manager.context.close()
    }
  })
})

describe("the team's tools", () => {
  test("a manager promotes a question its opener agreed to share, and it becomes a public post", async () => {
    const member = await phone()
    const manager = await phone()
    try {
      await signUp(member.page, "Hana")
      await member.page.getByRole("link", { name: "Contact the team" }).first().click()
      await member.page.getByRole("link", { name: /Ask privately/ }).click()
      await member.page.getByLabel("Subject").fill("Can beginners join the walks?")
      await member.page.getByLabel("Message").fill("I have never hiked before.")
      await member.page.getByRole("button", { name: "Send to the team" }).click()
      await member.page.getByLabel("The team may share this question and its answer publicly").check()
      await member.page.getByLabel("Without my name").check()
      await stored(member.page)

      await signIn(manager.page, community.manager.email)
      await manager.page.getByRole("link", { name: "Team inbox" }).click()
      await manager.page.getByRole("list", { name: "Team inbox" }).getByRole("link", { name: "Can beginners join the walks?" }).click({ timeout: 15_000 })
      await manager.page.getByLabel("Your message").fill("Yes, every walk has an easy group.")
      await manager.page.getByRole("button", { name: "Send message" }).click()
      await manager.page.getByLabel("Tags").fill("walks, beginners")
      await manager.page.getByLabel("Tags").press("Enter")
      await manager.page.getByLabel("State").selectOption("resolved")
      await stored(manager.page)
      await manager.page.getByRole("button", { name: "Promote to public" }).click()
      await manager.page.getByRole("heading", { name: "Can beginners join the walks?" }).waitFor({ timeout: 15_000 })
      assert.match(await manager.page.locator("article").innerText(), /Anonymous/)
      assert.match(await manager.page.locator("article").innerText(), /every walk has an easy group/)

      await member.page.getByRole("link", { name: "Community" }).click()
      await member.page.getByRole("list", { name: "Public posts" }).getByRole("link", { name: "Can beginners join the walks?" }).waitFor({ timeout: 15_000 })

      await manager.page.getByRole("link", { name: "Team inbox" }).click()
      await manager.page.getByRole("link", { name: "Needs" }).click()
      await manager.page.getByRole("table", { name: "By tag" }).getByText("beginners").waitFor({ timeout: 15_000 })
      await manager.page.screenshot({ path: path.join(SHOTS, "needs.png") })
      await manager.page.goto(`${community.server.httpUrl}/#/metrics`)
      await manager.page.getByRole("table", { name: "The last 8 weeks" }).waitFor()
    } finally {
      await member.context.close()
      await manager.context.close()
    }
  })

  test("settings turn notifications on only when asked, and a push service that fails leaves a readable message", async () => {
    const member = await phone()
    try {
      await signUp(member.page, "Ivo")
      await member.page.getByRole("link", { name: "Settings" }).click()
      assert.equal(await member.page.evaluate(() => Notification.permission), "default", "nothing asked before the user acts")
      await member.context.grantPermissions(["notifications"], { origin: community.server.httpUrl })
      await member.page.getByRole("button", { name: "Turn on notifications" }).click()
      // This machine reaches no browser push service: subscribing fails (or
      // times out), and the screen says so instead of hanging.
      const status = member.page.locator("section", { hasText: "Notifications" }).getByRole("status")
      await status.filter({ hasNotText: "Turning notifications on…" }).waitFor({ timeout: 20_000 })
      assert.ok((await status.innerText()).length > 10)
      assert.equal(await member.page.getByRole("button", { name: /Turn (on|off) notifications/ }).isEnabled(), true)
      await member.page.screenshot({ path: path.join(SHOTS, "settings.png") })
    } finally {
      await member.context.close()
    }
  })
})

describe("sessions", () => {
  test("a session that ends asks to sign in again, and what was typed is still there after", async () => {
    const ada = await phone()
    try {
      const email = await signUp(ada.page, "Jo")
      const post = await publish(ada.page, "Half a thought", "Finish it later")
      await ada.page.getByLabel("Your reply").fill("Something I had not finished")
      await stored(ada.page)

      // The refresh token is used twice (as a thief would): the server ends
      // the session, and the app's next refresh is refused.
      const refreshToken = await ada.page.evaluate(() => JSON.parse(localStorage.getItem("backchannel.session")).refresh_token)
      const refreshWith = () => fetch(`${community.server.httpUrl}/api/auth/refresh`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ refresh_token: refreshToken }) })
      assert.equal((await refreshWith()).status, 200)
      assert.equal((await refreshWith()).status, 401)

      await ada.page.getByRole("link", { name: "Contact the team" }).first().click()
      await ada.page.getByText("Your session ended; sign in again.").waitFor({ timeout: 15_000 })
      await ada.page.getByLabel("Email").fill(email)
      await ada.page.getByLabel("Password").fill(PASSWORD)
      await ada.page.getByRole("button", { name: "Sign in" }).click()
      await ada.page.getByRole("heading", { name: "Contact the team" }).waitFor()
      await ada.page.goto(`${community.server.httpUrl}/#/post/${post}`)
      await ada.page.getByRole("heading", { name: "Half a thought" }).waitFor()
      assert.equal(await ada.page.getByLabel("Your reply").inputValue(), "Something I had not finished")
    } finally {
      await ada.context.close()
    }
  })
})

describe("refusals", () => {
  test("a change the server refuses is dropped from the device, named, and the server's copy shown", async () => {
    const ada = await phone()
    const bob = await phone()
    try {
      await signUp(ada.page, "Kim")
      const post = await publish(ada.page, "Whose words", "Replies stay their authors'")
      await signUp(bob.page, "Lev")
      await bob.page.goto(`${community.server.httpUrl}/#/post/${post}`)
      await reply(bob.page, "My own words.")
      await replies(ada.page).getByText("My own words.").waitFor({ timeout: 15_000 })
      await stored(ada.page)

      // A buggy or hand-made client rewrites another person's reply.
      await ada.page.evaluate(id => {
        window.repo.handles[id].change(doc => {
          doc.replies[0].body = "Words put in Lev's mouth."
        })
      }, post)
      await ada.page.getByRole("alert").filter({ hasText: "The server refused a change to “Whose words”" }).waitFor({ timeout: 15_000 })
      await replies(ada.page).getByText("My own words.").waitFor({ timeout: 15_000 })
      await stored(ada.page)
      assert.equal(await replies(bob.page).getByText("Words put in Lev's mouth.").count(), 0)
      // The connection is back and still syncs: a new reply arrives.
      await reply(bob.page, "Still here.")
      await replies(ada.page).getByText("Still here.").waitFor({ timeout: 15_000 })
    } finally {
      await ada.context.close()
      await bob.context.close()
    }
  })
  test("words written with a refused change are kept as not sent, and can be sent again", async () => {
    const ada = await phone()
    const bob = await phone()
    const honest = "An honest reply, written on the bus."
    const forged = "Words put in Ned's mouth."
    // Emulated offline leaves an open WebSocket open: Mia's sync sockets go
    // through a route that really cuts them while she is offline.
    let cut = false
    const open = new Set()
    await ada.page.routeWebSocket(/\/sync/, ws => {
      if (cut) return void ws.close()
      ws.connectToServer()
      open.add(ws)
    })
    // The route takes effect from the next load.
    await ada.page.reload()
    try {
      await signUp(ada.page, "Mia")
      const post = await publish(ada.page, "Kept words", "Nothing typed is lost")
      await signUp(bob.page, "Ned")
      await bob.page.goto(`${community.server.httpUrl}/#/post/${post}`)
      await reply(bob.page, "Ned's own words.")
      await replies(ada.page).getByText("Ned's own words.").waitFor({ timeout: 15_000 })
      await stored(ada.page)

      // Offline, Mia writes an honest reply and (a buggy client on the same
      // device) rewrites Ned's: both go out in one sync message, which the
      // server refuses whole.
      cut = true
      await ada.context.setOffline(true)
      for (const ws of open) await ws.close()
      open.clear()
      await ada.page.getByRole("status").filter({ hasText: "Offline" }).waitFor()
      await reply(ada.page, honest)
      await replies(ada.page).getByText(honest).waitFor()
      await ada.page.evaluate(({ id, forged }) => {
        window.repo.handles[id].change(doc => {
          const theirs = doc.replies.find(r => String(r.body) === "Ned's own words.")
          theirs.body = forged
        })
      }, { id: post, forged })
      await ada.page.getByRole("status").filter({ hasText: /changes? waits? on this device/ }).waitFor()
      cut = false
      await ada.context.setOffline(false)

      const banner = ada.page.getByRole("alert").filter({ hasText: "The server refused a change to “Kept words”" })
      await banner.waitFor({ timeout: 15_000 })
      const rule = /: (rule [\w-]+)/.exec(await banner.innerText())?.[1]
      assert.ok(rule, "the banner names the rule")
      assert.match(await banner.innerText(), /Not sent/)
      // After the restart the thread shows the server's copy, and what Mia
      // wrote that it does not have is listed as not sent.
      const notSent = ada.page.getByRole("list", { name: "Not sent" })
      const kept = notSent.getByRole("textbox", { name: "Your reply, not sent" })
      await kept.waitFor({ timeout: 15_000 })
      assert.equal(await kept.inputValue(), honest)
      assert.ok((await notSent.innerText()).includes(rule), "the not-sent list names the rule")
      // The rewrite of Ned's words cannot be sent again, but its text is shown.
      const rewrite = notSent.getByRole("listitem").filter({ hasText: forged })
      await rewrite.waitFor()
      assert.equal(await rewrite.getByRole("button", { name: "Send again" }).count(), 0)
      await replies(ada.page).getByText("Ned's own words.").waitFor({ timeout: 15_000 })
      assert.equal(await replies(ada.page).getByText(honest).count(), 0)
      await stored(ada.page)
      assert.equal(await replies(bob.page).getByText(honest).count(), 0, "the honest reply was refused with the rewrite")

      // Kept on the device: still there after another reload, and editable.
      await ada.page.reload()
      await kept.waitFor({ timeout: 15_000 })
      assert.equal(await kept.inputValue(), honest)
      await kept.fill(`${honest} Edited.`)
      await notSent.getByRole("listitem").filter({ has: ada.page.getByRole("textbox", { name: "Your reply, not sent" }) }).getByRole("button", { name: "Send again" }).click()

      await replies(bob.page).getByText(`${honest} Edited.`).waitFor({ timeout: 15_000 })
      await replies(ada.page).getByText(`${honest} Edited.`).waitFor({ timeout: 15_000 })
      await stored(ada.page)
      assert.equal(await kept.count(), 0)
      await rewrite.getByRole("button", { name: "Discard" }).click()
      await notSent.waitFor({ state: "hidden" })
      assert.equal(await replies(bob.page).getByText(forged).count(), 0)
      assert.equal(await bob.page.getByText(forged).count(), 0)
      // The connection still syncs both ways.
      await reply(bob.page, "Got it.")
      await replies(ada.page).getByText("Got it.").waitFor({ timeout: 15_000 })
      await ada.page.reload()
      await replies(ada.page).getByText("Got it.").waitFor({ timeout: 15_000 })
      assert.equal(await ada.page.getByRole("list", { name: "Not sent" }).count(), 0)
    } finally {
      await ada.context.close()
      await bob.context.close()
    }
  })
})

describe("notifications", () => {
  test("clicking a push notification opens its thread", async () => {
    const ada = await phone()
    try {
      await signUp(ada.page, "Gus")
      const post = await publish(ada.page, "Notified thread", "Tap the notification")
      await ada.page.getByRole("link", { name: "Community" }).click()
      await controlled(ada.page)
      await ada.context.grantPermissions(["notifications"], { origin: community.server.httpUrl })
      const payload = { title: "Reply on “Notified thread”", body: "Bob: hello", url: `${community.server.httpUrl}/#/post/${post}`, tag: post }
      const worker = () => {
        const [running] = ada.context.serviceWorkers()
        assert.ok(running, "the app's service worker runs")
        return running
      }
      const shown = await deliverPushUntilShown({
        context: ada.context,
        page: ada.page,
        origin: community.server.httpUrl,
        payload,
        readShown: () =>
          ada.page.evaluate(async () => (await (await navigator.serviceWorker.ready).getNotifications()).map(n => ({ title: n.title, tag: n.tag }))),
      })
      assert.deepEqual(shown, [{ title: payload.title, tag: post }])
      // Headless Chromium has no notification to tap: dispatch the click the
      // platform would, with the notification the worker showed.
      await worker().evaluate(async () => {
        const [notification] = await self.registration.getNotifications()
        self.dispatchEvent(new NotificationEvent("notificationclick", { notification }))
      })
      await ada.page.getByRole("heading", { name: "Notified thread" }).waitFor({ timeout: 10_000 })
      assert.ok(ada.page.url().endsWith(`#/post/${post}`))
    } finally {
      await ada.context.close()
    }
  })
})
