// The local Web Push service (tests/push/push_service.py) as a child process:
// it makes browser-like subscriptions, receives pushes on 127.0.0.1, checks
// their VAPID signature and claims and decrypts them with implementations
// independent of the server's (PyPI http-ece and py-vapid), and records every
// attempt for the tests to read. Run `bash tests/push/setup` once first.

import { spawn } from "node:child_process"
import fs from "node:fs"
import path from "node:path"
import { fileURLToPath } from "node:url"

const HERE = path.dirname(fileURLToPath(import.meta.url))
const REPO_ROOT = path.resolve(HERE, "../../..")
const SCRIPT = path.join(REPO_ROOT, "tests/push/push_service.py")
/** The virtualenv's Python, made by tests/push/setup; $PUSH_SERVICE_PYTHON overrides it. */
const PYTHON = process.env.PUSH_SERVICE_PYTHON ?? path.join(REPO_ROOT, "tests/push/.venv/bin/python")

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

// Children still running when this process exits are killed.
const running = new Set()
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL")
})

/** base64url of a Buffer/Uint8Array; strings are taken as base64url already. */
function toBase64Url(key) {
  return typeof key === "string" ? key : Buffer.from(key).toString("base64url")
}

/**
 * Starts a push service on 127.0.0.1 (a free port) and resolves, once it
 * listens, to its handle:
 *
 * - `origin`: "http://127.0.0.1:<port>", the `aud` a VAPID JWT must carry.
 * - `subscribe(applicationServerKey)` → `{id, subscription: {endpoint, keys: {p256dh, auth}}}`;
 *   the key is the VAPID public key, base64url (or bytes) of the uncompressed point.
 * - `script(id, responses)`: queue answers for the next valid pushes to `id`, e.g.
 *   `[{status: 503, retry_after: "2"}, {status: 410, sticky: true}, {status: 201, delay_ms: 3000}]`.
 * - `pushes(id?)` → every recorded attempt (of one subscription), in arrival order:
 *   `{subscription, status, ttl, urgency, topic, payload, claims, error, received_at}`.
 * - `errors()` → the attempts that were refused (`error` is the reason).
 * - `clear()`: forget the recorded attempts.
 * - `waitForPushes(predicateOrCount, {subscription, timeoutMs = 10000})` → the records once
 *   there are at least `count` of them, or once `predicate(records)` is truthy.
 * - `stop()`: kill the service and wait for it to exit.
 */
export async function startPushService({ startTimeoutMs = 20000 } = {}) {
  if (!fs.existsSync(PYTHON)) {
    throw new Error(`${PYTHON} is missing: run \`bash tests/push/setup\` first`)
  }
  const child = spawn(PYTHON, [SCRIPT, "--port", "0", "--exit-on-stdin-eof"], {
    cwd: REPO_ROOT,
    stdio: ["pipe", "pipe", "pipe"],
  })
  running.add(child)
  child.on("exit", () => running.delete(child))
  // Keep draining both pipes (a full pipe would block the service); keep stderr's tail.
  let stderr = ""
  child.stderr.setEncoding("utf8")
  child.stderr.on("data", chunk => {
    stderr = (stderr + chunk).slice(-64 * 1024)
    if (process.env.SHOW_PUSH_SERVICE_LOG) process.stderr.write(chunk)
  })
  child.stdout.setEncoding("utf8")

  const port = await new Promise((resolve, reject) => {
    let stdout = ""
    const fail = why => {
      clearTimeout(timer)
      child.kill("SIGKILL")
      reject(new Error(`push service did not start: ${why}\n--- its stderr:\n${stderr}`))
    }
    const timer = setTimeout(() => fail(`no "listening on" line in ${startTimeoutMs} ms`), startTimeoutMs)
    child.on("error", err => fail(err.message))
    // "close", not "exit": by then its stderr has been read to the end.
    const onClose = (code, signal) => fail(`it exited (code ${code}, signal ${signal})`)
    child.on("close", onClose)
    child.stdout.on("data", chunk => {
      stdout += chunk
      const m = /^listening on (\d+)$/m.exec(stdout)
      if (m) {
        clearTimeout(timer)
        child.off("close", onClose)
        resolve(Number(m[1]))
      }
    })
  })

  // A forgotten stop() must not keep the test process alive (the exit hook kills it).
  child.unref()
  for (const stream of [child.stdin, child.stdout, child.stderr]) stream.unref?.()

  const origin = `http://127.0.0.1:${port}`

  async function call(method, urlPath, body) {
    const res = await fetch(origin + urlPath, {
      method,
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
    const text = await res.text()
    if (!res.ok) throw new Error(`push service: ${method} ${urlPath} → ${res.status} ${text}`)
    return text ? JSON.parse(text) : null
  }

  async function pushes(subscription) {
    const query = subscription === undefined ? "" : `?subscription=${encodeURIComponent(subscription)}`
    return call("GET", `/control/pushes${query}`)
  }

  return {
    origin,
    port,
    async subscribe(applicationServerKey) {
      const { id, endpoint, keys } = await call("POST", "/control/subscriptions", {
        application_server_key: toBase64Url(applicationServerKey),
      })
      return { id, subscription: { endpoint, keys } }
    },
    async script(id, responses) {
      return call("POST", `/control/subscriptions/${encodeURIComponent(id)}/responses`, responses)
    },
    pushes,
    async errors() {
      return call("GET", "/control/errors")
    },
    async clear() {
      await call("DELETE", "/control/pushes")
    },
    async waitForPushes(predicateOrCount, { subscription, timeoutMs = 10000 } = {}) {
      const done =
        typeof predicateOrCount === "function" ? predicateOrCount : records => records.length >= predicateOrCount
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const records = await pushes(subscription)
        if (done(records)) return records
        if (Date.now() >= deadline) {
          const what = typeof predicateOrCount === "function" ? "the predicate" : `${predicateOrCount} pushes`
          const scope = subscription === undefined ? "" : ` to ${subscription}`
          throw new Error(
            `timed out after ${timeoutMs} ms waiting for ${what}${scope}; received:\n` +
              JSON.stringify(records, null, 2),
          )
        }
        await sleep(50)
      }
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise(resolve => child.once("exit", resolve))
      child.ref() // unref'd since startup: keep the loop alive until it has exited
      child.kill("SIGTERM")
      await exited
    },
  }
}
