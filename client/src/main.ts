// The app: sign in, then every screen renders from automerge documents kept
// in IndexedDB and synced with the server over /sync (SPEC §3, §7). Screens
// are addressed by the URL's hash, so notifications and shortcuts can open
// them: #/post/<id>, #/conversation/<id>, #/new-post, #/contact, ...

import type { DocHandle } from "@automerge/automerge-repo";

import "./styles.css";
import { api, ApiError, currentUser, login, onSessionChange, register, type SessionEvent, type User } from "./api";
import { compose, contact, conversation, conversations } from "./backchannel";
import type { Kind } from "./docs";
import { metrics, needs, teamInbox } from "./manager";
import { editPost, feed, startPost, thread } from "./public";
import { refreshSubscription } from "./push";
import type { Screen } from "./screen";
import { settings } from "./settings";
import { Community, type Refusal, type StartDocs, type SyncStatus } from "./store";
import { button, h } from "./ui";

const root = document.getElementById("app") as HTMLElement;
const statusLine = document.getElementById("sync-status") as HTMLElement;
const nav = document.getElementById("tabs") as HTMLElement;

let community: Community | null = null;
let leaving: (() => void)[] = [];

function describe(status: SyncStatus): string {
  const waiting = status.waiting === 1 ? "1 change waits" : `${status.waiting} changes wait`;
  switch (status.state) {
    case "offline":
      return status.waiting ? `Offline · ${waiting} on this device` : "Offline · nothing waiting";
    case "connecting":
      return status.waiting ? `Connecting… · ${waiting}` : "Connecting…";
    case "syncing":
      return status.waiting ? `Syncing · ${waiting}` : "Syncing…";
    case "stored":
      return "All changes stored on the server";
  }
}

const announcer = document.getElementById("sync-announcer") as HTMLElement;

function showStatus(status: SyncStatus | null): void {
  statusLine.textContent = status ? describe(status) : "";
  // Screen readers hear changes of state, not every keystroke's count.
  const state = status?.state ?? "";
  if (statusLine.dataset.state !== state) announcer.textContent = status ? describe({ state, waiting: 0 } as SyncStatus).replace(/ · .*/, "") : "";
  statusLine.dataset.state = state;
}

function renderSignIn(message = ""): void {
  nav.hidden = true;
  const email = h("input", { type: "email", name: "email", required: true, autocomplete: "email" });
  const password = h("input", { type: "password", name: "password", required: true, minLength: 8, autocomplete: "current-password" });
  const name = h("input", { type: "text", name: "display_name", autocomplete: "name" });
  const error = h("p", { role: "alert", className: "error" }, message);
  const form = h(
    "form",
    { className: "card" },
    h("h2", {}, "Sign in or sign up"),
    h("label", {}, "Email", email),
    h("label", {}, "Password", password),
    h("label", {}, "Your name (to sign up)", name),
    h("div", { className: "actions" }, h("button", { type: "submit", name: "login" }, "Sign in"), h("button", { type: "submit", name: "register", className: "secondary" }, "Sign up")),
    error,
  );
  form.addEventListener("submit", event => {
    event.preventDefault();
    const submitter = (event as SubmitEvent).submitter as HTMLButtonElement | null;
    const signingUp = submitter?.name === "register";
    if (signingUp && !name.value.trim()) {
      error.textContent = "Tell the community your name to sign up.";
      name.focus();
      return;
    }
    error.textContent = "";
    (signingUp ? register(email.value, password.value, name.value.trim()) : login(email.value, password.value)).catch((failure: unknown) => {
      error.textContent = failure instanceof ApiError ? failure.message : "The server cannot be reached; try again when online.";
    });
  });
  root.replaceChildren(form);
}

function drawTabs(user: User): void {
  // Five tabs fit a 360 px screen. Managers see every conversation in the
  // team inbox, their own included, so it takes the place of "My conversations".
  const tabs: [string, string, string?][] = [
    ["#/", "Community"],
    ["#/new-post", "New post"],
    ["#/contact", "Contact", "Contact the team"],
    user.role === "manager" ? ["#/inbox", "Inbox", "Team inbox"] : ["#/conversations", "Conversations", "My conversations"],
    ["#/settings", "Settings"],
  ];
  nav.replaceChildren(h("ul", {}, ...tabs.map(([href, label, name]) => h("li", {}, h("a", { href, ariaLabel: name }, label)))));
  nav.hidden = false;
}

function markTab(): void {
  const hash = location.hash || "#/";
  for (const link of nav.querySelectorAll("a")) {
    const href = link.getAttribute("href") ?? "";
    const current = href === "#/" ? hash === "#/" || hash.startsWith("#/post/") : hash.startsWith(href);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

/** Draws the screen the hash names. */
let routeNumber = 0;

async function route(): Promise<void> {
  if (!community) return;
  for (const cleanup of leaving) cleanup();
  leaving = [];
  const number = ++routeNumber;
  // A screen still loading when the user moves on must not draw or listen.
  const current = (): boolean => number === routeNumber;
  const view = h("div", { className: "screen" });
  root.replaceChildren(view);
  const screen: Screen = {
    community,
    view,
    onLeave: cleanup => {
      if (current()) leaving.push(cleanup);
      else cleanup();
    },
    follow<T>(handle: DocHandle<T>, draw: () => void) {
      if (!current()) return;
      handle.on("change", draw);
      leaving.push(() => handle.off("change", draw));
      draw();
    },
    go: (hash, replace = false) => {
      if (!current()) return;
      if (replace) {
        history.replaceState(null, "", hash);
        void route();
      } else if (location.hash === hash) void route();
      else location.hash = hash;
    },
  };
  markTab();
  const [, page = "", id = ""] = (location.hash || "#/").split("/");
  try {
    switch (page) {
      case "":
        return feed(screen);
      case "post":
        return await thread(screen, id);
      case "new-post":
        return startPost(screen);
      case "edit":
        return await editPost(screen, id);
      case "contact":
        if (!id) return await contact(screen);
        if (!["question", "report", "idea", "story"].includes(id)) break;
        return await compose(screen, id as Kind);
      case "flag":
        if (!id) break;
        return await compose(screen, "flag", id);
      case "conversations":
        return conversations(screen);
      case "conversation":
        return await conversation(screen, id);
      case "inbox":
        return community.isManager() ? await teamInbox(screen) : conversations(screen);
      case "needs":
        return await needs(screen);
      case "metrics":
        return await metrics(screen);
      case "settings":
        return settings(screen);
    }
    view.replaceChildren(h("h2", {}, "Nothing here"), h("a", { href: "#/" }, "Back to the community"));
  } catch (error) {
    view.replaceChildren(h("p", { role: "alert", className: "error" }, error instanceof Error ? error.message : "Something went wrong"));
  } finally {
    // Move focus to the new screen's heading, as a page load would.
    const heading = current() && moved ? view.querySelector<HTMLElement>("h2") : null;
    if (heading) {
      heading.tabIndex = -1;
      heading.focus({ preventScroll: true });
    }
  }
}

/** The start documents' URLs: from the server, or as last seen when offline. */
async function startDocs(user: User): Promise<StartDocs> {
  const key = `backchannel.docs.${user.id}`;
  const kept = localStorage.getItem(key);
  const known = kept ? (JSON.parse(kept) as StartDocs) : null;
  const fetched = api<{ docs: StartDocs }>("GET", "/api/me").then(answer => {
    localStorage.setItem(key, JSON.stringify(answer.docs));
    if (known && known.index !== answer.docs.index) indexMoved(user, known.index, answer.docs.index);
    return answer.docs;
  });
  // Never wait on the network when this device already knows them.
  if (known) {
    fetched.catch(() => undefined);
    return known;
  }
  return fetched;
}

/** Old indexes this device still holds a copy of, dropped at the next start. */
const retiredKey = (user: User): string => `backchannel.retired.${user.id}`;
let reloadOnNextRoute = false;

/**
 * The server rebuilt the index: remember the new one and start again on it,
 * at once unless someone is typing (then at their next move; what they type
 * is kept either way).
 */
function indexMoved(user: User, from: string, to: string): void {
  const key = `backchannel.docs.${user.id}`;
  const docs = JSON.parse(localStorage.getItem(key) ?? "null") as StartDocs | null;
  if (docs && docs.index === from) localStorage.setItem(key, JSON.stringify({ ...docs, index: to }));
  const retired = new Set(JSON.parse(localStorage.getItem(retiredKey(user)) ?? "[]") as string[]);
  retired.add(from);
  localStorage.setItem(retiredKey(user), JSON.stringify([...retired]));
  const typing = document.activeElement instanceof HTMLTextAreaElement || document.activeElement instanceof HTMLInputElement;
  if (typing) reloadOnNextRoute = true;
  else location.reload();
}

function forgetRetired(user: User, next: Community): void {
  const retired = JSON.parse(localStorage.getItem(retiredKey(user)) ?? "[]") as string[];
  for (const url of retired) next.dropCopy(url);
  localStorage.removeItem(retiredKey(user));
}

async function start(user: User | null, event: SessionEvent | "opened"): Promise<void> {
  if (community && user && community.user.id === user.id) {
    if (community.user.role !== user.role) {
      community.user.role = user.role;
      drawTabs(user);
      await route();
    }
    return;
  }
  for (const cleanup of leaving) cleanup();
  leaving = [];
  const previous = community;
  community = null;
  document.querySelector(".refusal")?.remove();
  if (previous) await previous.close();
  if (!user) {
    showStatus(null);
    renderSignIn(event === "expired" ? "Your session ended; sign in again. Everything you wrote is kept on this device." : "");
    return;
  }
  const next = new Community(user);
  community = next;
  // For support and debugging from the browser console, as automerge-repo's
  // own examples do.
  (window as unknown as { repo: unknown }).repo = next.repo;
  next.onStatus(showStatus);
  next.onRefusal(refusal => {
    // The page starts again without the refused change (the stock client
    // keeps per-document state in memory that a dropped copy would confuse),
    // then says what happened.
    sessionStorage.setItem("backchannel.refusal", JSON.stringify(refusal));
    location.reload();
  });
  next.onIndexMoved(to => indexMoved(user, next.index.url, to));
  root.replaceChildren(h("p", { className: "note" }, "Opening…"));
  await next.start(await startDocs(user));
  if (community !== next) return;
  forgetRetired(user, next);
  drawTabs(user);
  await route();
  showRefusal();
  void refreshSubscription().catch(() => undefined);
}

let moved = false;
addEventListener("hashchange", () => {
  if (reloadOnNextRoute) {
    location.reload();
    return;
  }
  moved = true;
  void route();
});
onSessionChange((user, event) => void start(user, event).catch(failed));
void start(currentUser(), "opened").catch(failed);

/** Tells what the server refused, once, after the restart that dropped it. */
function showRefusal(): void {
  const kept = sessionStorage.getItem("backchannel.refusal");
  if (!kept) return;
  sessionStorage.removeItem("backchannel.refusal");
  const refusal = JSON.parse(kept) as Refusal;
  const banner = h(
    "div",
    { role: "alert", className: "card refusal" },
    h("p", {}, `The server refused a change to “${refusal.title}”: ${refusal.rule}. This device now shows what the server has.`),
    refusal.kept
      ? h("p", {}, `What you wrote there that the server never stored is kept under “Not sent”: edit it and send it again, or discard it.`)
      : null,
    button("Dismiss", () => banner.remove()),
  );
  root.before(banner);
}

function failed(error: unknown): void {
  const again = h("button", { type: "button" }, "Try again");
  again.addEventListener("click", () => location.reload());
  root.replaceChildren(
    h("p", { role: "alert", className: "error" }, error instanceof Error ? error.message : "Something went wrong"),
    h("p", { className: "note" }, navigator.onLine ? "The server may be unreachable for now." : "This device is offline, and this screen needs the server once."),
    h("div", { className: "actions" }, again),
  );
}

// The service worker keeps the app shell, so the app opens with no network.
// automerge's wasm loads with a top-level await, so `load` may have fired
// before this module runs.
function registerServiceWorker(): void {
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch((error: unknown) => {
    console.warn("the service worker could not be registered", error);
  });
  navigator.serviceWorker.addEventListener("message", event => {
    if ((event.data as { type?: string } | null)?.type === "push-subscription-changed") void refreshSubscription().catch(() => undefined);
  });
}
if ("serviceWorker" in navigator) {
  if (document.readyState === "complete") registerServiceWorker();
  else window.addEventListener("load", registerServiceWorker);
}
