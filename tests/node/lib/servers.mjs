// Shared helpers for the Node-side benchmark and interop tests: start the
// reference (stock automerge-repo) sync server or the Backchannel server as a
// child process, register Backchannel users, build stock automerge-repo
// clients, and wait for the things the stock client API lets us observe.
//
// Everything here uses only the public API of @automerge/automerge-repo 2.5.x
// (plus `repo.networkSubsystem`, a public property the Repo itself exposes).

import { spawn } from "node:child_process"
import fs from "node:fs"
import path from "node:path"
import readline from "node:readline"
import { fileURLToPath } from "node:url"
import { Repo } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"

const HERE = path.dirname(fileURLToPath(import.meta.url))
/** tests/node */
export const NODE_TESTS_DIR = path.resolve(HERE, "..")
/** The repository root (tests/node/../..). */
export const REPO_ROOT = path.resolve(HERE, "../../..")
const REFERENCE_SERVER_SCRIPT = path.join(HERE, "reference-server.mjs")

/** Where the Backchannel binary is: $BACKCHANNEL_BIN, else <repo>/target/release/backchannel. */
export function defaultBackchannelBinary() {
  return process.env.BACKCHANNEL_BIN
    ? path.resolve(process.env.BACKCHANNEL_BIN)
    : path.resolve(REPO_ROOT, "target/release/backchannel")
}

// ---------------------------------------------------------------------------
// process helpers

/** Resident set size of a process in bytes (VmRSS from /proc/<pid>/status), or NaN if gone. */
export function readRssBytes(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, "utf8")
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)
    return m ? Number(m[1]) * 1024 : NaN
  } catch {
    return NaN
  }
}

/**
 * CPU time (user + system) a process has used, in seconds, from
 * /proc/<pid>/stat (assumes the usual 100 clock ticks per second), or NaN.
 */
export function readCpuSeconds(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    // Fields after the ")" that closes the command name; utime and stime are
    // fields 14 and 15 of the whole line, so 12 and 13 after it.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return NaN
  }
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
export { sleep }

/** A promise for the child's exit: {code, signal}. Already-exited children resolve at once. */
function exitPromise(child) {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode })
  }
  return new Promise(resolve => {
    child.once("exit", (code, signal) => resolve({ code, signal }))
  })
}

/** Keeps the last `limit` characters of a stream's text. */
function textCollector(limit = 4 * 1024 * 1024) {
  let text = ""
  return {
    add(chunk) {
      text += chunk
      if (text.length > limit) text = text.slice(text.length - limit)
    },
    get text() {
      return text
    },
  }
}

// Strip ANSI escape sequences (tracing colours its output by default).
// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]/g
export function stripAnsi(s) {
  return s.replace(ANSI, "")
}

/**
 * Finds the address in a Backchannel "listening on http://<addr> ..." log line.
 * Returns "<host>:<port>" or null.
 */
export function parseListeningLine(line) {
  const m = /listening on http:\/\/(\S+)/.exec(stripAnsi(line))
  return m ? m[1] : null
}

/**
 * Sends `signal` and waits for the child to exit; escalates to SIGKILL after
 * `graceMs`. Resolves to {code, signal, escalated}.
 */
async function terminate(child, signal, graceMs) {
  const exited = exitPromise(child)
  if (child.exitCode !== null || child.signalCode !== null) return { ...(await exited), escalated: false }
  child.kill(signal)
  let timer
  const timedOut = new Promise(resolve => {
    timer = setTimeout(() => resolve("timeout"), graceMs)
  })
  const first = await Promise.race([exited, timedOut])
  clearTimeout(timer)
  if (first !== "timeout") return { ...first, escalated: false }
  child.kill("SIGKILL")
  return { ...(await exited), escalated: true }
}

// Children still running when this process exits are killed, so a crashed
// bench or test never leaves a server behind.
const liveChildren = new Set()
process.once("exit", () => {
  for (const child of liveChildren) {
    try {
      child.kill("SIGKILL")
    } catch {
      // already gone
    }
  }
})
function track(child) {
  liveChildren.add(child)
  child.once("exit", () => liveChildren.delete(child))
}

// ---------------------------------------------------------------------------
// the reference server

/**
 * Starts the stock automerge-repo sync server (lib/reference-server.mjs) in a
 * child process on 127.0.0.1, port chosen by the OS.
 * Returns { name, url, pid, stop(), kill(), rssBytes(), stderrText() }.
 */
export async function startReferenceServer({ dataDir, startTimeoutMs = 20_000 } = {}) {
  if (!dataDir) throw new Error("startReferenceServer: dataDir is required")
  fs.mkdirSync(dataDir, { recursive: true })
  const child = spawn(process.execPath, [REFERENCE_SERVER_SCRIPT, "--data", dataDir], {
    cwd: NODE_TESTS_DIR,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env },
  })
  track(child)
  const stderr = textCollector()
  child.stderr.setEncoding("utf8")
  child.stderr.on("data", chunk => stderr.add(chunk))
  const stdout = textCollector()

  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`reference server did not report its port within ${startTimeoutMs} ms\nstderr:\n${stderr.text}`))
    }, startTimeoutMs)
    const lines = readline.createInterface({ input: child.stdout })
    lines.on("line", line => {
      stdout.add(line + "\n")
      let parsed
      try {
        parsed = JSON.parse(line)
      } catch {
        return
      }
      if (parsed && Number.isInteger(parsed.port)) {
        clearTimeout(timer)
        resolve(parsed.port)
      }
    })
    child.once("exit", (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`reference server exited before listening (code ${code}, signal ${signal})\nstderr:\n${stderr.text}`))
    })
    child.once("error", err => {
      clearTimeout(timer)
      reject(err)
    })
  })

  return {
    name: "reference",
    url: `ws://127.0.0.1:${port}`,
    pid: child.pid,
    child,
    stop: ({ graceMs = 10_000 } = {}) => terminate(child, "SIGTERM", graceMs),
    kill: () => terminate(child, "SIGKILL", 10_000),
    rssBytes: () => readRssBytes(child.pid),
    cpuSeconds: () => readCpuSeconds(child.pid),
    stderrText: () => stderr.text,
    stdoutText: () => stdout.text,
  }
}

// ---------------------------------------------------------------------------
// the Backchannel server

/**
 * Spawns `<binary> serve --bind 127.0.0.1:0 --data <dataDir>` and waits for its
 * "listening on http://<addr>" log line on stderr.
 * Returns { name, addr, httpUrl, syncUrl(token), pid, stop(), kill(), rssBytes(), stderrText() }.
 *
 * `args` replaces the default argument list (for tests that need other flags);
 * `env` is merged over process.env and the default RUST_LOG.
 */
export async function startBackchannelServer({
  binary = defaultBackchannelBinary(),
  dataDir,
  args,
  env = {},
  startTimeoutMs = 30_000,
} = {}) {
  if (!dataDir && !args) throw new Error("startBackchannelServer: dataDir is required")
  if (!fs.existsSync(binary)) {
    throw new Error(
      `Backchannel binary not found at ${binary}: build it (cargo build --release) or set BACKCHANNEL_BIN`,
    )
  }
  if (dataDir) fs.mkdirSync(dataDir, { recursive: true })
  const argv = args ?? ["serve", "--bind", "127.0.0.1:0", "--data", dataDir]
  const child = spawn(binary, argv, {
    cwd: REPO_ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    // Tests and benchmarks sign up many users from 127.0.0.1 at once: no
    // per-address sign-up limit, and room for every password check to wait.
    env: {
      ...process.env,
      RUST_LOG: "warn,backchannel=info",
      NO_COLOR: "1",
      BACKCHANNEL_SIGNUPS_PER_ADDRESS: "0",
      BACKCHANNEL_PASSWORD_HASH_QUEUE: "100000",
      // Every test client connects from 127.0.0.1.
      BACKCHANNEL_SYNC_CONNECTIONS_PER_ADDRESS: "0",
      ...env,
    },
  })
  track(child)
  const stderr = textCollector()
  const stdout = textCollector()
  child.stdout.setEncoding("utf8")
  child.stdout.on("data", chunk => stdout.add(chunk))

  const addr = await new Promise((resolve, reject) => {
    let settled = false
    const settle = (fn, value) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      fn(value)
    }
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      settle(reject, new Error(`backchannel did not log "listening on http://" within ${startTimeoutMs} ms\nstderr:\n${stderr.text}`))
    }, startTimeoutMs)
    // readline keeps consuming stderr for the process' lifetime, so the pipe never fills.
    const lines = readline.createInterface({ input: child.stderr })
    lines.on("line", line => {
      stderr.add(line + "\n")
      if (settled) return
      const found = parseListeningLine(line)
      if (found) settle(resolve, found)
    })
    child.once("exit", (code, signal) => {
      // Give readline a tick to deliver the last lines before reporting.
      setImmediate(() =>
        settle(reject, new Error(`backchannel exited before listening (code ${code}, signal ${signal})\nstderr:\n${stderr.text}`)),
      )
    })
    child.once("error", err => settle(reject, err))
  })

  return {
    name: "backchannel",
    addr,
    httpUrl: `http://${addr}`,
    syncUrl: token => `ws://${addr}/sync?token=${encodeURIComponent(token)}`,
    pid: child.pid,
    child,
    stop: ({ graceMs = 10_000 } = {}) => terminate(child, "SIGTERM", graceMs),
    kill: () => terminate(child, "SIGKILL", 10_000),
    rssBytes: () => readRssBytes(child.pid),
    cpuSeconds: () => readCpuSeconds(child.pid),
    stderrText: () => stderr.text,
    stdoutText: () => stdout.text,
  }
}

/**
 * POST /api/auth/register. Returns the parsed body {user, access_token, refresh_token, expires_in};
 * throws an Error with the status and body on any non-2xx answer.
 */
export async function registerUser(httpUrl, { email, password, display_name }) {
  const url = new URL("/api/auth/register", httpUrl)
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json" },
    body: JSON.stringify({ email, password, display_name }),
  })
  const text = await res.text()
  if (!res.ok) {
    throw new Error(`POST ${url.pathname} for ${email} failed: ${res.status} ${res.statusText}: ${text}`)
  }
  try {
    return JSON.parse(text)
  } catch {
    throw new Error(`POST ${url.pathname} for ${email}: ${res.status} with a body that is not JSON: ${text}`)
  }
}

/**
 * POST /api/auth/login. Returns {user, access_token, refresh_token, expires_in};
 * throws an Error with the status and body on any non-2xx answer.
 */
export async function loginUser(httpUrl, { email, password }) {
  const url = new URL("/api/auth/login", httpUrl)
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json" },
    body: JSON.stringify({ email, password }),
  })
  const text = await res.text()
  if (!res.ok) throw new Error(`POST ${url.pathname} for ${email} failed: ${res.status} ${res.statusText}: ${text}`)
  return JSON.parse(text)
}

/**
 * GET a JSON API path with a bearer token; resolves to {status, body} (body
 * parsed when it is JSON, else the text).
 */
export async function apiGet(httpUrl, pathname, token) {
  return apiSend(httpUrl, "GET", pathname, token)
}

/**
 * Sends a JSON body to an API path (PUT, POST, DELETE) with a bearer token;
 * resolves to {status, body, text, headers}, body parsed when it is JSON.
 */
export async function apiSend(httpUrl, method, pathname, token, payload) {
  const res = await fetch(new URL(pathname, httpUrl), {
    method,
    headers: {
      accept: "application/json",
      ...(payload === undefined ? {} : { "content-type": "application/json" }),
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: payload === undefined ? undefined : JSON.stringify(payload),
  })
  const text = await res.text()
  let body = text
  try {
    body = JSON.parse(text)
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, body, text, headers: res.headers }
}

/**
 * `backchannel user add --data <dataDir> --email E --name N --role R`, the
 * password on standard input. Must run while no server holds dataDir.
 * Resolves to the new user's id (the command's stdout).
 */
export async function addUserWithCli({ binary = defaultBackchannelBinary(), dataDir, email, name, role, password }) {
  fs.mkdirSync(dataDir, { recursive: true })
  const child = spawn(binary, ["user", "add", "--data", dataDir, "--email", email, "--name", name, "--role", role], {
    cwd: REPO_ROOT,
    stdio: ["pipe", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: "warn", NO_COLOR: "1" },
  })
  track(child)
  let stdout = ""
  let stderr = ""
  child.stdout.setEncoding("utf8")
  child.stderr.setEncoding("utf8")
  child.stdout.on("data", chunk => (stdout += chunk))
  child.stderr.on("data", chunk => (stderr += chunk))
  child.stdin.end(`${password}\n`)
  // "close", not "exit": it waits for stdout to be read to its end.
  const { code, signal } = await new Promise((resolve, reject) => {
    child.once("error", reject)
    child.once("close", (code, signal) => resolve({ code, signal }))
  })
  if (code !== 0) throw new Error(`backchannel user add ${email} (${role}) failed (code ${code}, signal ${signal}): ${stderr}`)
  return stdout.trim()
}

// ---------------------------------------------------------------------------
// targets: the same load code against either server

/**
 * A target is { name, server, pid, connectUrl(i), identity(i), rssBytes(), cpuSeconds(), stop() }.
 * identity(i) resolves to { url, userId } for client i (cached: the same i is
 * the same user); connectUrl(i) is identity(i).then(x => x.url).
 * userId is null on the reference server, which has no users.
 */
export async function referenceTarget({ dataDir }) {
  const server = await startReferenceServer({ dataDir })
  return {
    name: "reference",
    server,
    pid: server.pid,
    identity: async () => ({ url: server.url, userId: null }),
    connectUrl: async () => server.url,
    rssBytes: () => server.rssBytes(),
    cpuSeconds: () => server.cpuSeconds(),
    stop: () => server.stop(),
  }
}

/**
 * Backchannel target: each client index registers its own user
 * (bench-<runId>-<i>@example.org) and connects with its access token.
 */
export async function backchannelTarget({ dataDir, binary = defaultBackchannelBinary(), runId = randomId(8) }) {
  let server = await startBackchannelServer({ binary, dataDir })
  const identities = new Map()
  const identity = i => {
    if (!identities.has(i)) {
      const p = registerUser(server.httpUrl, {
        email: `bench-${runId}-${i}@example.org`,
        password: "bench password 1",
        display_name: `Bench ${i}`,
      }).then(body => ({
        // A getter: after restart() the server listens on another port.
        get url() {
          return server.syncUrl(body.access_token)
        },
        userId: body.user.id,
        session: body,
      }))
      p.catch(() => identities.delete(i))
      identities.set(i, p)
    }
    return identities.get(i)
  }
  const target = {
    name: "backchannel",
    server,
    pid: server.pid,
    identity,
    connectUrl: async i => (await identity(i)).url,
    rssBytes: () => server.rssBytes(),
    cpuSeconds: () => server.cpuSeconds(),
    stop: () => server.stop(),
    /**
     * Stops and starts the server on the same data folder (accounts, sessions
     * and tokens survive), so memory freed by earlier work (Argon2 hashing at
     * sign-up keeps ~19 MiB per concurrent hash in the allocator) does not
     * hide what new connections cost.
     */
    restart: async () => {
      await server.stop()
      server = await startBackchannelServer({ binary, dataDir })
      target.server = server
      target.pid = server.pid
    },
  }
  return target
}

/** Builds a target by name: "reference" or "backchannel". */
export function startTarget(name, opts) {
  if (name === "reference") return referenceTarget(opts)
  if (name === "backchannel") return backchannelTarget(opts)
  throw new Error(`unknown target ${JSON.stringify(name)} (expected reference or backchannel)`)
}

// ---------------------------------------------------------------------------
// clients

/**
 * A stock automerge-repo client: one WebSocketClientAdapter to `url`, NodeFS
 * storage in storageDir if given (else in memory, which also makes the peer
 * "ephemeral" and gives it no storageId).
 * `retryIntervalMs` is the adapter's reconnect interval (stock default 5000).
 */
export function makeClient(url, { storageDir, peerId, retryIntervalMs, ...repoOptions } = {}) {
  const adapter = retryIntervalMs === undefined ? new WebSocketClientAdapter(url) : new WebSocketClientAdapter(url, retryIntervalMs)
  return new Repo({
    network: [adapter],
    storage: storageDir ? new NodeFSStorageAdapter(storageDir) : undefined,
    ...(peerId ? { peerId } : {}),
    ...repoOptions,
  })
}

/**
 * Resolves with { peerId, peerMetadata } once the repo has a connected peer
 * (the server answered our `join` with `peer`); rejects after timeoutMs.
 */
export function waitForPeer(repo, timeoutMs = 10_000) {
  const existing = repo.peers[0]
  if (existing) {
    return Promise.resolve({ peerId: existing, peerMetadata: repo.peerMetadataByPeerId[existing] })
  }
  return new Promise((resolve, reject) => {
    const onPeer = ({ peerId, peerMetadata }) => {
      clearTimeout(timer)
      resolve({ peerId, peerMetadata })
    }
    const timer = setTimeout(() => {
      repo.networkSubsystem.off("peer", onPeer)
      reject(new Error(`no peer handshake within ${timeoutMs} ms (url ${adapterUrls(repo)})`))
    }, timeoutMs)
    repo.networkSubsystem.on("peer", onPeer)
  })
}

function adapterUrls(repo) {
  return repo.networkSubsystem.adapters.map(a => a.url ?? "?").join(", ")
}

/**
 * Polls `predicate` (sync or async) every intervalMs until it returns truthy;
 * resolves to that value, rejects after timeoutMs with `what` in the message.
 */
export async function waitFor(predicate, { timeoutMs = 10_000, intervalMs = 20, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await predicate()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(intervalMs)
  }
}

/** True when two heads arrays (as from handle.heads()) hold the same hashes. */
export function headsEqual(a, b) {
  if (!a || !b || a.length !== b.length) return false
  const sa = [...a].sort()
  const sb = [...b].sort()
  return sa.every((h, i) => h === sb[i])
}

/** Waits until handle.heads() equals `heads`, listening for "heads-changed". */
export function waitForHeads(handle, heads, timeoutMs = 10_000) {
  if (handle.isReady() && headsEqual(handle.heads(), heads)) return Promise.resolve()
  return new Promise((resolve, reject) => {
    const check = () => {
      if (handle.isReady() && headsEqual(handle.heads(), heads)) {
        cleanup()
        resolve()
      }
    }
    const poll = setInterval(check, 50)
    const timer = setTimeout(() => {
      cleanup()
      reject(new Error(`document ${handle.documentId} did not reach heads ${JSON.stringify(heads)} within ${timeoutMs} ms`))
    }, timeoutMs)
    const cleanup = () => {
      clearInterval(poll)
      clearTimeout(timer)
      handle.off("heads-changed", check)
    }
    handle.on("heads-changed", check)
  })
}

/**
 * The server's storageId as the client learnt it from the `peer` handshake, or
 * undefined (the server sent none, or we are not connected).
 */
export function serverStorageId(repo) {
  const peer = repo.peers[0]
  return peer ? repo.getStorageIdOfPeer(peer) : undefined
}

/**
 * Waits until the server acknowledged the handle's current heads, as the stock
 * client sees it: the sync state with the server's storageId
 * (handle.getSyncInfo(storageId).lastHeads, updated with a "remote-heads"
 * event). Only works when the server announces a storageId in its `peer`
 * message; returns false at once if it does not, true once the heads match.
 */
export async function waitUntilServerAcked(repo, handle, timeoutMs = 10_000) {
  const storageId = serverStorageId(repo)
  if (!storageId) return false
  // Compare with the heads as they are now, not as they were at the call: a
  // change from another peer may merge in meanwhile, and the server's answer
  // then names the merged heads, which include ours.
  const acked = () => headsEqual(handle.getSyncInfo(storageId)?.lastHeads, handle.heads())
  if (acked()) return true
  await new Promise((resolve, reject) => {
    const onRemote = () => {
      if (acked()) done(resolve)
    }
    const poll = setInterval(onRemote, 50)
    const timer = setTimeout(
      () => done(reject, new Error(`server did not acknowledge heads of ${handle.documentId} within ${timeoutMs} ms`)),
      timeoutMs,
    )
    const done = (fn, arg) => {
      clearInterval(poll)
      clearTimeout(timer)
      handle.off("remote-heads", onRemote)
      fn(arg)
    }
    handle.on("remote-heads", onRemote)
  })
  return true
}

/**
 * Checks from a second, fresh, storage-less client that the server serves
 * `docUrl` with exactly `heads`. A doc the server does not know yet comes back
 * "unavailable" and stays so in that Repo, hence a new Repo per attempt.
 * Resolves once it matches; rejects after timeoutMs.
 */
export async function verifyServerHas(connectUrl, docUrl, heads, { timeoutMs = 30_000 } = {}) {
  const deadline = Date.now() + timeoutMs
  let lastError
  while (Date.now() < deadline) {
    const repo = makeClient(typeof connectUrl === "function" ? await connectUrl() : connectUrl)
    try {
      await waitForPeer(repo, Math.max(1000, deadline - Date.now()))
      const handle = await withTimeout(repo.find(docUrl), deadline - Date.now(), `find ${docUrl}`)
      await waitForHeads(handle, heads, Math.max(1, Math.min(5_000, deadline - Date.now())))
      return
    } catch (err) {
      lastError = err
      await sleep(100)
    } finally {
      await repo.shutdown().catch(() => {})
    }
  }
  throw new Error(`server does not serve ${docUrl} at the expected heads within ${timeoutMs} ms: ${lastError?.message}`)
}

/** Rejects with a readable error if `promise` does not settle within ms. */
export function withTimeout(promise, ms, what = "operation") {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${Math.round(ms)} ms`)), Math.max(0, ms))
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/**
 * Takes the client offline with the stock adapter: closes its sockets (no
 * automatic reconnect: disconnect() clears the retry timer) and the repo sees
 * the server peer leave. Edits made meanwhile stay local.
 */
export function goOffline(repo) {
  for (const adapter of repo.networkSubsystem.adapters) adapter.disconnect()
}

/**
 * Brings a client that went offline with goOffline() back. It calls
 * adapter.connect(peerId, peerMetadata) itself: the stock
 * `repo.networkSubsystem.reconnect()` passes no metadata, so the client would
 * rejoin without its storageId. Resolves once the handshake is done.
 */
export async function goOnline(repo, timeoutMs = 10_000) {
  const metadata = await repo.networkSubsystem.peerMetadata
  const ready = waitForPeer(repo, timeoutMs)
  for (const adapter of repo.networkSubsystem.adapters) adapter.connect(repo.peerId, metadata)
  return ready
}

/**
 * The stock WebSocketClientAdapter rethrows, from inside the socket's "error"
 * listener, every connection error except ECONNREFUSED. In Node a refused
 * WebSocket upgrade (e.g. an HTTP 401 for a bad token) therefore becomes an
 * uncaught exception, "Unexpected server response: 401", that kills the
 * process (a browser would just retry). This installs a process-wide
 * "uncaughtException" handler that records such errors instead (the adapter
 * keeps retrying every retryInterval) and lets every other error crash the
 * process as usual. Returns { errors, dispose() }; errors[i] = { message, status }.
 */
export function captureRefusedUpgrades({ onRefused } = {}) {
  const errors = []
  const handler = err => {
    const m = /^Unexpected server response: (\d+)/.exec(err?.message ?? "")
    if (!m) {
      // Not ours: behave like Node's default (print and exit 1).
      process.removeListener("uncaughtException", handler)
      console.error(err)
      process.exit(1)
    }
    const entry = { message: err.message, status: Number(m[1]) }
    errors.push(entry)
    onRefused?.(entry)
  }
  process.on("uncaughtException", handler)
  return { errors, dispose: () => process.removeListener("uncaughtException", handler) }
}

/**
 * Shuts every repo down (closes sockets, flushes storage); never throws.
 * The stock repo.shutdown() of a client whose socket is still CONNECTING makes
 * `ws` emit "WebSocket was closed before the connection was established" with
 * no listener left, an uncaught exception; a no-op error listener avoids it.
 */
export async function shutdownAll(repos) {
  await Promise.all(
    repos.map(r => {
      for (const adapter of r.networkSubsystem.adapters) adapter.socket?.on?.("error", () => {})
      return r.shutdown().catch(() => {})
    }),
  )
}

/** A random [a-z0-9] string. */
export function randomId(length = 12) {
  let s = ""
  while (s.length < length) s += Math.random().toString(36).slice(2)
  return s.slice(0, length)
}
