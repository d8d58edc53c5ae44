// A share of the abuse bench's honest clients, in a child process forked by
// bench/abuse-bench.mjs: stock @automerge/automerge-repo clients that each
// append a reply to their post about once a second during a phase. The send
// times (monotonic ms) go back to the parent, which matches them with the
// arrival times the observer reports.

import { captureRefusedUpgrades, makeClient, randomId, shutdownAll, sleep, waitForPeer, withTimeout } from "../../lib/servers.mjs"
import { mapLimit, monoNow, serveRole } from "../helpers.mjs"

let clients = []
let refused = 0
captureRefusedUpgrades({ onRefused: () => refused++ })
const disconnects = () => clients.reduce((n, c) => n + c.disconnects, 0)

await serveRole({
  /** specs: [{ i, url, userId, postUrl, commonUrl }]: connects them and opens both posts. */
  async connect({ specs }) {
    clients = specs.map(s => ({ ...s, repo: makeClient(s.url), disconnects: 0 }))
    for (let start = 0; start < clients.length; start += 10) {
      await Promise.all(clients.slice(start, start + 10).map(c => waitForPeer(c.repo, 60_000)))
    }
    for (const c of clients) c.repo.networkSubsystem.on("peer-disconnected", () => c.disconnects++)
    await mapLimit(clients, 10, async c => {
      c.handle = await withTimeout(c.repo.find(c.postUrl), 60_000, `client ${c.i} finding its post`)
      c.common = c.postUrl === c.commonUrl ? c.handle : await withTimeout(c.repo.find(c.commonUrl), 60_000, `client ${c.i} finding the common post`)
    })
    return clients.length
  },

  /** Honest load until endAt (monotonic ms): every client appends a reply about once a second (jittered). */
  async phase({ endAt }) {
    const sent = []
    let errors = 0
    const disc0 = disconnects()
    const refused0 = refused
    await Promise.all(
      clients.map(async c => {
        await sleep(Math.random() * 1000)
        while (monoNow() < endAt) {
          const id = randomId(16)
          sent.push([id, monoNow()])
          try {
            c.handle.change(doc => {
              doc.replies.push({ id, author: c.userId, created_at: Date.now(), body: "honest reply" })
            })
          } catch {
            errors++
          }
          await sleep(800 + Math.random() * 400)
        }
      }),
    )
    return { sent, errors, disconnects: disconnects() - disc0, refused: refused - refused0 }
  },

  async shutdown() {
    const repos = clients.map(c => c.repo)
    for (const repo of repos) {
      for (const adapter of repo.networkSubsystem.adapters) {
        adapter.retryInterval = 0
        adapter.connect = () => {}
      }
    }
    await shutdownAll(repos)
    setImmediate(() => process.exit(0))
    return true
  },
})
