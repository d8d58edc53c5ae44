// Small helpers the benchmarks share.

export const range = n => Array.from({ length: n }, (_, i) => i)
export const yieldToLoop = () => new Promise(resolve => setImmediate(resolve))

/** Runs fn over items with at most `limit` in flight; keeps order. */
export async function mapLimit(items, limit, fn) {
  const out = new Array(items.length)
  let next = 0
  await Promise.all(
    range(Math.min(limit, items.length)).map(async () => {
      while (next < items.length) {
        const k = next++
        out[k] = await fn(items[k], k)
      }
    }),
  )
  return out
}

/** The q-quantile of an ascending array, interpolated. */
export function quantile(sorted, q) {
  if (sorted.length === 0) return NaN
  const pos = (sorted.length - 1) * q
  const lo = Math.floor(pos)
  const hi = Math.ceil(pos)
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo)
}

/** The median of numbers (finite ones only), or NaN if none. */
export function median(values) {
  const xs = values.filter(Number.isFinite).sort((a, b) => a - b)
  if (xs.length === 0) return NaN
  const mid = xs.length >> 1
  return xs.length % 2 ? xs[mid] : (xs[mid - 1] + xs[mid]) / 2
}

/**
 * Milliseconds on the system's monotonic clock (CLOCK_MONOTONIC, which
 * process.hrtime reads): the same clock in every process on the machine, so
 * a time taken in one child process can be compared with one from another.
 */
export const monoNow = () => Number(process.hrtime.bigint()) / 1e6

// ---------------------------------------------------------------------------
// bench child processes: the parent calls request(type, value) and gets the
// handler's answer; a child may also emit events the parent did not ask for.

/**
 * Forks `script` as a bench child process (its stdout and stderr go to the
 * parent's stderr). Returns { name, pid, child, exited, request(type, value),
 * kill() }; onEvent(event, value) gets the child's emit()s.
 */
export async function forkRole(script, { name = script, onEvent, env } = {}) {
  const { fork } = await import("node:child_process")
  const child = fork(script, [], {
    stdio: ["ignore", 2, 2, "ipc"],
    serialization: "advanced",
    // e.g. BENCH_CHILD_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" to profile the children
    execArgv: [...process.execArgv, ...(process.env.BENCH_CHILD_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? [])],
    env: { ...process.env, ...env },
  })
  const role = asRole(child, name, m => child.connected && (child.send(m), true), onEvent)
  child.on("message", role.onMessage)
  return role.api
}

/**
 * Like forkRole, for a child that is not Node (the Rust honest worker,
 * `sync_load honest-worker`): requests go as JSON lines on its stdin, with
 * the parent's monotonic `now` (ms) so the child can read the parent's
 * clock; answers come back as JSON lines on its stdout.
 */
export async function spawnRole(command, args, { name = command, onEvent, env } = {}) {
  const { spawn } = await import("node:child_process")
  const { createInterface } = await import("node:readline")
  const child = spawn(command, args, { stdio: ["pipe", "pipe", 2], env: { ...process.env, ...env } })
  const role = asRole(child, name, m => child.stdin.writable && (child.stdin.write(`${JSON.stringify({ ...m, now: monoNow() })}\n`), true), onEvent)
  createInterface({ input: child.stdout }).on("line", line => {
    try {
      role.onMessage(JSON.parse(line))
    } catch {
      process.stderr.write(`${name}: ${line}\n`)
    }
  })
  return role.api
}

/** request/answer bookkeeping shared by forkRole and spawnRole. */
function asRole(child, name, send, onEvent) {
  let next = 0
  const pending = new Map()
  const exited = new Promise(resolve =>
    child.once("exit", (code, signal) => {
      for (const p of pending.values()) p.reject(new Error(`${name} exited (code ${code}, signal ${signal}) before answering ${p.type}`))
      pending.clear()
      resolve({ code, signal })
    }),
  )
  const onMessage = m => {
    if (m && m.reply !== undefined) {
      const p = pending.get(m.reply)
      if (!p) return
      pending.delete(m.reply)
      if (m.error !== undefined) p.reject(new Error(`${name}: ${m.error}`))
      else p.resolve(m.value)
    } else if (m && m.event) {
      onEvent?.(m.event, m.value)
    }
  }
  const killOnExit = () => {
    try {
      child.kill("SIGKILL")
    } catch {
      // already gone
    }
  }
  process.once("exit", killOnExit)
  exited.then(() => process.removeListener("exit", killOnExit))
  const api = {
    name,
    pid: child.pid,
    child,
    exited,
    request(type, value) {
      const id = next++
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject, type })
        if (!send({ id, type, value })) {
          pending.delete(id)
          reject(new Error(`${name} is gone (asked for ${type})`))
        }
      })
    },
    kill: killOnExit,
  }
  return { api, onMessage }
}

/**
 * In a bench child: answers the parent's requests with handlers[type](value)
 * (sync or async). Adds `loopDelay({reset})`: this process's event-loop delay
 * (p99 and max, ms) since the last reset, a sign of a saturated process.
 * Exits when the parent goes. Returns { emit(event, value) }.
 */
export async function serveRole(handlers) {
  const { monitorEventLoopDelay } = await import("node:perf_hooks")
  const delay = monitorEventLoopDelay({ resolution: 10 })
  delay.enable()
  const all = {
    ...handlers,
    loopDelay: ({ reset = false } = {}) => {
      const out = { p99_ms: delay.count ? delay.percentile(99) / 1e6 : 0, max_ms: delay.count ? delay.max / 1e6 : 0 }
      if (reset) delay.reset()
      return out
    },
  }
  process.on("message", async m => {
    if (!m || m.id === undefined) return
    const fn = all[m.type]
    try {
      if (!fn) throw new Error(`no handler for ${m.type}`)
      const value = await fn(m.value)
      process.send({ reply: m.id, value })
    } catch (err) {
      process.send({ reply: m.id, error: String(err?.stack ?? err) })
    }
  })
  process.on("disconnect", () => process.exit(0))
  return { emit: (event, value) => process.connected && process.send({ event, value }) }
}
