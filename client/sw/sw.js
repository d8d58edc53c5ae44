// The service worker (served at /sw.js, scope /). The build replaces
// PRECACHE and VERSION (see vite.config.ts): every file of the app shell, so
// after one visit the app opens with no network. Documents are not here:
// they live in IndexedDB through automerge-repo.
/* global self, caches, clients */
const PRECACHE = self.__PRECACHE__;
const VERSION = self.__VERSION__;
const CACHE = `backchannel-shell-${VERSION}`;

self.addEventListener("install", event => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then(cache => cache.addAll(PRECACHE))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", event => {
  event.waitUntil(
    caches
      .keys()
      .then(names => Promise.all(names.filter(name => name.startsWith("backchannel-shell-") && name !== CACHE).map(name => caches.delete(name))))
      .then(() => self.clients.claim()),
  );
});

function isLive(url) {
  return url.pathname.startsWith("/api/") || url.pathname === "/sync" || url.pathname === "/healthz";
}

self.addEventListener("fetch", event => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || isLive(url)) return;
  if (request.mode === "navigate") {
    // The shell first: a slow or absent network never delays opening the app.
    event.respondWith(caches.match("/index.html", { cacheName: CACHE }).then(cached => cached ?? fetch(request)));
    return;
  }
  event.respondWith(
    caches.match(request, { cacheName: CACHE }).then(
      cached =>
        cached ??
        fetch(request).then(response => {
          if (response.ok && url.pathname.startsWith("/assets/")) {
            const copy = response.clone();
            void caches.open(CACHE).then(cache => cache.put(request, copy));
          }
          return response;
        }),
    ),
  );
});

// Web Push (SPEC §6): {title, body, url, tag}; one notification per thread.
self.addEventListener("push", event => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch {
    data = { title: "Backchannel", body: event.data ? event.data.text() : "" };
  }
  const title = data.title || "Backchannel";
  event.waitUntil(
    self.registration.showNotification(title, {
      body: data.body || "",
      tag: data.tag,
      renotify: Boolean(data.tag),
      icon: "/icons/icon-192.png",
      badge: "/icons/icon-192.png",
      data: { url: data.url || "/" },
    }),
  );
});

self.addEventListener("notificationclick", event => {
  event.notification.close();
  const target = new URL(event.notification.data?.url || "/", self.location.origin).href;
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then(windows => {
      const open = windows.find(client => "navigate" in client);
      if (!open) return self.clients.openWindow(target);
      // Focusing may be refused (no user gesture reached the worker); the
      // window still shows the thread.
      return open
        .navigate(target)
        .then(navigated => (navigated ?? open).focus())
        .catch(() => self.clients.openWindow(target))
        .catch(() => undefined);
    }),
  );
});

// The push service replaced or dropped the subscription: make a new one with
// the same server key and let open windows register it (the worker has no
// session of its own; a window that opens later registers it at start).
self.addEventListener("pushsubscriptionchange", event => {
  const options = event.oldSubscription?.options;
  event.waitUntil(
    (options ? self.registration.pushManager.subscribe(options) : Promise.resolve(null))
      .catch(() => null)
      .then(() => self.clients.matchAll({ type: "window", includeUncontrolled: true }))
      .then(windows => windows.forEach(client => client.postMessage({ type: "push-subscription-changed" }))),
  );
});
