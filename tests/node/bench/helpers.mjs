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
