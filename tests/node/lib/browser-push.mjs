// Delivering a push to the app's service worker in headless Chromium, through
// the DevTools protocol (there is no push service to send one through).

/**
 * Delivers `payload` to the origin's active service worker and waits until
 * `readShown()` returns a non-empty list of what it showed. DevTools drops a
 * push that reaches a worker it is still starting or replacing, without an
 * error (seen once in CI, under load), so the push is delivered again, up to
 * `attempts` times, while nothing is shown: with one tag per thread a repeat
 * replaces the notification instead of adding one.
 */
export async function deliverPushUntilShown({ context, page, origin, payload, readShown, attempts = 5, waitMs = 4_000 }) {
  const cdp = await context.newCDPSession(page)
  try {
    const activated = new Promise(resolve => {
      cdp.on("ServiceWorker.workerVersionUpdated", ({ versions }) => {
        const version = versions.find(v => v.status === "activated" && v.scriptURL.startsWith(origin))
        if (version) resolve(version.registrationId)
      })
    })
    const registered = new Promise(resolve => {
      cdp.on("ServiceWorker.workerRegistrationUpdated", ({ registrations }) => {
        const registration = registrations.find(r => !r.isDeleted && r.scopeURL.startsWith(origin))
        if (registration) resolve(registration.registrationId)
      })
    })
    await cdp.send("ServiceWorker.enable")
    let registrationId = await Promise.race([activated, new Promise(resolve => setTimeout(resolve, 5_000))])
    registrationId ??= await registered
    for (let attempt = 1; attempt <= attempts; attempt += 1) {
      await cdp.send("ServiceWorker.deliverPushMessage", { origin: origin + "/", registrationId, data: JSON.stringify(payload) })
      const deadline = Date.now() + waitMs
      while (Date.now() < deadline) {
        const shown = await readShown()
        if (shown.length > 0) {
          if (attempt > 1) console.log(`[push] shown after delivery ${attempt} of ${attempts}`)
          return shown
        }
        await new Promise(resolve => setTimeout(resolve, 50))
      }
    }
    return []
  } finally {
    await cdp.detach().catch(() => {})
  }
}
