// The installable shell in real headless Chromium (Debian `chromium`, driven
// by playwright-core) against the real server: the manifest and service
// worker make the app installable, it opens with no network after one visit,
// and the service worker shows pushes as notifications grouped by thread.

import { after, before, describe, test } from "node:test"
import assert from "node:assert/strict"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"

import { chromium } from "playwright-core"

import { REPO_ROOT, startBackchannelServer } from "../lib/servers.mjs"
import { deliverPushUntilShown } from "../lib/browser-push.mjs"
import { closeAll, connect, newPost, signUp, tempDir, waitUntilServerAcked } from "../lib/people.mjs"

const BINARY = process.env.BACKCHANNEL_BIN
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium"
const PHONE = { width: 360, height: 740 }

describe("the installable shell", () => {
  let server
  let context
  let page

  before(async () => {
    server = await startBackchannelServer({ binary: BINARY, dataDir: path.join(tempDir("browser"), "data") })
    const profile = fs.mkdtempSync(path.join(os.tmpdir(), "backchannel-chromium-"))
    // Installability is only reported for a persistent (non-incognito) profile.
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: PHONE,
      args: ["--no-sandbox"],
    })
    page = context.pages()[0] ?? (await context.newPage())
    await page.goto(server.httpUrl)
    await page.evaluate(() => navigator.serviceWorker.ready)
    // The first visit installs the worker; the next load is controlled by it.
    await page.reload()
    await page.waitForFunction(() => navigator.serviceWorker.controller !== null)
  })

  after(async () => {
    await context?.close()
    await server?.stop()
  })

  test("Chromium finds nothing that stops installing the app", async () => {
    const cdp = await context.newCDPSession(page)
    const { installabilityErrors } = await cdp.send("Page.getInstallabilityErrors")
    assert.deepEqual(installabilityErrors, [])
    const manifest = await page.evaluate(async () => {
      const response = await fetch("/manifest.webmanifest")
      return { type: response.headers.get("content-type"), body: await response.json() }
    })
    assert.match(manifest.type, /application\/manifest\+json/)
    assert.equal(manifest.body.display, "standalone")
    assert.deepEqual(manifest.body.shortcuts.map(s => s.name), ["New post", "Contact the team"])
    assert.ok(manifest.body.icons.some(icon => icon.purpose === "maskable"))
  })

  test("after one visit the app opens with no network", async () => {
    await context.setOffline(true)
    try {
      await page.reload()
      await page.waitForSelector("h1")
      assert.equal(await page.textContent("h1"), "Backchannel")
      const scripts = await page.evaluate(() => [...document.scripts].map(script => script.src))
      assert.ok(scripts.length > 0)
    } finally {
      await context.setOffline(false)
    }
  })

  test("a push becomes a notification with its title, text, thread tag and link", async () => {
    await context.grantPermissions(["notifications"], { origin: server.httpUrl })
    const payload = { title: "Reply on “Meetup venue”", body: "Bob: in the library", url: `${server.httpUrl}/#/post/abc`, tag: "abc" }
    const shown = await deliverPushUntilShown({
      context,
      page,
      origin: server.httpUrl,
      payload,
      readShown: () =>
        page.evaluate(async () => {
          const notifications = await (await navigator.serviceWorker.ready).getNotifications()
          return notifications.map(n => ({ title: n.title, body: n.body, tag: n.tag, url: n.data?.url }))
        }),
    })
    assert.deepEqual(shown, [{ title: payload.title, body: payload.body, tag: "abc", url: payload.url }])
  })
})

describe("the community feed", () => {
  let server
  let browser

  before(async () => {
    server = await startBackchannelServer({ binary: BINARY, dataDir: path.join(tempDir("browser-feed"), "data") })
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] })
  })

  after(async () => {
    await browser?.close()
    await server?.stop()
  })

  test("a member signs up in the app and sees a post another member publishes, live", async () => {
    const context = await browser.newContext({ viewport: PHONE })
    const page = await context.newPage()
    await page.goto(server.httpUrl)
    await page.getByLabel("Email").fill("ada@example.org")
    await page.getByLabel("Password").fill("community password")
    await page.getByLabel("Your name (to sign up)").fill("Ada")
    await page.getByRole("button", { name: "Sign up" }).click()
    await page.getByText("No posts yet.").waitFor()

    const bob = await signUp(server.httpUrl, "Bob")
    const repo = await connect(server, bob)
    try {
      const post = newPost(repo, bob, { title: "Meetup venue" })
      await waitUntilServerAcked(repo, post)
      await page.getByRole("link", { name: "Meetup venue" }).waitFor({ timeout: 10_000 })
      assert.match(await page.getByRole("list", { name: "Public posts" }).innerText(), /Bob · 0 replies/)
      await page.screenshot({ path: path.join(REPO_ROOT, "docs/screenshots/feed.png") })
    } finally {
      await closeAll([repo])
      await context.close()
    }
  })
})
