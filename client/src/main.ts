// The app: sign in, then everything renders from automerge documents kept in
// IndexedDB and synced with the server over /sync (SPEC §3, §7).

import { Repo, type AutomergeUrl, type DocHandle } from "@automerge/automerge-repo";
import { BrowserWebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";
import { IndexedDBStorageAdapter } from "@automerge/automerge-repo-storage-indexeddb";

import "./styles.css";
import { accessToken, api, ApiError, currentUser, login, onSessionChange, register, signOut, type User } from "./api";

interface StartDocs {
  index: string;
  directory: string;
  inbox: string;
  drafts: string;
}

interface IndexDoc {
  posts?: Record<string, { title: string; author_name: string; reply_count: number; last_activity: number }>;
}

const root = document.getElementById("app") as HTMLElement;
const status = document.getElementById("sync-status") as HTMLElement;

function element<K extends keyof HTMLElementTagNameMap>(tag: K, props: Partial<HTMLElementTagNameMap[K]> = {}, ...children: (Node | string)[]): HTMLElementTagNameMap[K] {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function syncUrl(token: string): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/sync?token=${encodeURIComponent(token)}`;
}

let repo: Repo | null = null;

function showStatus(text: string): void {
  status.textContent = text;
}

/** One Repo per signed-in user: each user's automerge actor is their own. */
async function openRepo(user: User): Promise<Repo> {
  const next = new Repo({
    storage: new IndexedDBStorageAdapter(`backchannel-${user.id}`),
    network: [],
  });
  try {
    next.networkSubsystem.addNetworkAdapter(new BrowserWebSocketClientAdapter(syncUrl(await accessToken())));
  } catch {
    showStatus("Offline: changes are kept on this device");
  }
  next.networkSubsystem.on("peer", () => showStatus(navigator.onLine ? "Connected: changes are stored on the server" : "Offline"));
  next.networkSubsystem.on("peer-disconnected", () => showStatus("Offline: changes are kept on this device"));
  return next;
}

function renderSignIn(message = ""): void {
  const email = element("input", { type: "email", name: "email", required: true, autocomplete: "email" });
  const password = element("input", { type: "password", name: "password", required: true, minLength: 8, autocomplete: "current-password" });
  const name = element("input", { type: "text", name: "display_name", autocomplete: "name" });
  const error = element("p", { role: "alert", className: "error" }, message);
  const form = element(
    "form",
    { className: "card" },
    element("h2", {}, "Sign in or sign up"),
    element("label", {}, "Email", email),
    element("label", {}, "Password", password),
    element("label", {}, "Your name (to sign up)", name),
    element("div", { className: "actions" }, element("button", { type: "submit", name: "login" }, "Sign in"), element("button", { type: "submit", name: "register" }, "Sign up")),
    error,
  );
  form.addEventListener("submit", event => {
    event.preventDefault();
    const submitter = (event as SubmitEvent).submitter as HTMLButtonElement | null;
    const signingUp = submitter?.name === "register";
    error.textContent = "";
    (signingUp ? register(email.value, password.value, name.value) : login(email.value, password.value)).catch((failure: unknown) => {
      error.textContent = failure instanceof ApiError ? failure.message : "The server cannot be reached; try again when online.";
    });
  });
  root.replaceChildren(form);
}

function renderFeed(user: User, index: DocHandle<IndexDoc>): void {
  const list = element("ul", { className: "feed", ariaLabel: "Public posts" });
  const draw = (): void => {
    const posts = Object.entries(index.doc()?.posts ?? {}).sort(([, a], [, b]) => b.last_activity - a.last_activity);
    list.replaceChildren(
      ...(posts.length
        ? posts.map(([id, post]) =>
            element("li", {}, element("a", { href: `#/post/${id}` }, post.title), element("span", { className: "meta" }, ` ${post.author_name} · ${post.reply_count} ${post.reply_count === 1 ? "reply" : "replies"}`)),
          )
        : [element("li", { className: "empty" }, "No posts yet.")]),
    );
  };
  index.on("change", draw);
  draw();
  const out = element("button", { type: "button" }, "Sign out");
  out.addEventListener("click", () => signOut());
  root.replaceChildren(element("header", {}, element("p", {}, `Signed in as ${user.display_name}`), out), element("h2", {}, "Community"), list);
}

/** The start documents' URLs: from the server, or as last seen when offline. */
async function startDocs(user: User): Promise<StartDocs> {
  const key = `backchannel.docs.${user.id}`;
  try {
    const docs = (await api<{ docs: StartDocs }>("GET", "/api/me")).docs;
    localStorage.setItem(key, JSON.stringify(docs));
    return docs;
  } catch (error) {
    const kept = localStorage.getItem(key);
    if (kept && !(error instanceof ApiError)) return JSON.parse(kept) as StartDocs;
    throw error;
  }
}

async function start(user: User | null): Promise<void> {
  if (repo) {
    void repo.shutdown().catch(() => undefined);
    repo = null;
  }
  if (!user) {
    showStatus("");
    renderSignIn();
    return;
  }
  showStatus("Connecting…");
  repo = await openRepo(user);
  const docs = await startDocs(user);
  const index = await repo.find<IndexDoc>(docs.index as AutomergeUrl);
  renderFeed(user, index);
}

onSessionChange(user => void start(user));
void start(currentUser()).catch((error: unknown) => {
  root.replaceChildren(element("p", { role: "alert" }, error instanceof Error ? error.message : "Something went wrong"));
});

// The service worker keeps the app shell, so the app opens with no network.
// automerge's wasm loads with a top-level await, so `load` may have fired
// before this module runs.
function registerServiceWorker(): void {
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch((error: unknown) => {
    console.warn("the service worker could not be registered", error);
  });
}
if ("serviceWorker" in navigator) {
  if (document.readyState === "complete") registerServiceWorker();
  else window.addEventListener("load", registerServiceWorker);
}
