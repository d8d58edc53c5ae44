// The abuse bench's observer, in its own child process forked by
// bench/abuse-bench.mjs: one stock client (its own user) with every post
// open; it reports when each honest reply first arrives (monotonic ms), in
// batches, as "arrivals" events.

import { captureRefusedUpgrades, makeClient, shutdownAll, waitForPeer, withTimeout } from "../../lib/servers.mjs"
import { monoNow, serveRole } from "../helpers.mjs"

let repo
captureRefusedUpgrades()
let batch = []
const role = await serveRole({
  /** Connects to url and opens every post in postUrls. */
  async connect({ url, postUrls }) {
    repo = makeClient(url)
    await waitForPeer(repo, 30_000)
    const seen = new Set()
    for (const postUrl of postUrls) {
      const oh = await withTimeout(repo.find(postUrl), 60_000, `observer finding ${postUrl}`)
      oh.on("change", ({ doc, patches }) => {
        const now = monoNow()
        let from = Infinity
        for (const p of patches) {
          if (p.path[0] !== "replies") continue
          if (p.path.length === 1) from = 0
          else if (p.path.length === 2 && p.action === "insert") from = Math.min(from, p.path[1])
        }
        if (from === Infinity) return
        for (let k = from; k < doc.replies.length; k++) {
          const id = doc.replies[k].id
          if (seen.has(id)) continue
          seen.add(id)
          batch.push([id, now])
        }
      })
    }
    return true
  },

  /** Sends what has arrived so far at once (the parent asks before it counts). */
  flush() {
    flush()
    return true
  },

  async shutdown() {
    for (const adapter of repo?.networkSubsystem.adapters ?? []) {
      adapter.retryInterval = 0
      adapter.connect = () => {}
    }
    if (repo) await shutdownAll([repo])
    setImmediate(() => process.exit(0))
    return true
  },
})
function flush() {
  if (batch.length === 0) return
  role.emit("arrivals", batch)
  batch = []
}
setInterval(flush, 100).unref()
