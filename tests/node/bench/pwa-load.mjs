// How fast the PWA opens, in real headless Chromium against the release
// server: a cold first visit (nothing cached), a signed-in start online, and
// a signed-in start offline (the shell from the service worker, documents
// from IndexedDB). Prints medians per load; run with
//   node tests/node/bench/pwa-load.mjs
// (after `bash scripts/serve` has built the release binary).

import path from "node:path"

import { chromium } from "playwright-core"

import { defaultBackchannelBinary, startBackchannelServer } from "../lib/servers.mjs"
import { tempDir } from "../lib/people.mjs"

const RUNS = Number(process.env.RUNS ?? 5)
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium"

const median = values => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]

const server = await startBackchannelServer({ binary: defaultBackchannelBinary(), dataDir: path.join(tempDir("pwa-load"), "data") })
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] })
const cold = []
const online = []
const offline = []
try {
  for (let run = 0; run < RUNS; run += 1) {
    const context = await browser.newContext({ viewport: { width: 360, height: 740 } })
    const page = await context.newPage()
    let started = Date.now()
    await page.goto(server.httpUrl)
    await page.getByLabel("Email").waitFor()
    cold.push(Date.now() - started)

    await page.getByLabel("Email").fill(`load-${run}-${Date.now()}@example.org`)
    await page.getByLabel("Password").fill("load test password")
    await page.getByLabel("Your name (to sign up)").fill(`Reader ${run}`)
    await page.getByRole("button", { name: "Sign up" }).click()
    await page.getByRole("heading", { name: "Community" }).waitFor()
    await page.evaluate(() => navigator.serviceWorker.ready)

    started = Date.now()
    await page.reload()
    await page.getByRole("heading", { name: "Community" }).waitFor()
    online.push(Date.now() - started)

    await context.setOffline(true)
    started = Date.now()
    await page.reload()
    await page.getByRole("heading", { name: "Community" }).waitFor()
    offline.push(Date.now() - started)
    await context.close()
  }
} finally {
  await browser.close()
  await server.stop()
}
console.log(`PWA load, median of ${RUNS} (ms): cold first visit to the sign-in form ${median(cold)}; signed-in start online ${median(online)}; signed-in start offline ${median(offline)}`)
console.log(`offline start / online start: ${(median(offline) / median(online)).toFixed(2)}×`)
