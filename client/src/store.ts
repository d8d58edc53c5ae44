// The device's copy of the community: one automerge-repo Repo per signed-in
// user, on IndexedDB and the server's /sync, and the sync status line
// (offline, syncing, or everything stored on the server, with the number of
// changes still waiting on this device).

import { Repo, cbor, decodeHeads, type AutomergeUrl, type DocHandle, type PeerId, type UrlHeads } from "@automerge/automerge-repo";
import { BrowserWebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";
import { IndexedDBStorageAdapter } from "@automerge/automerge-repo-storage-indexeddb";
import { getAllChanges, getChanges, hasHeads, view } from "@automerge/automerge/slim";

import { accessToken, currentToken, refresh, tokenIsFresh, type User } from "./api";
import type { DirectoryDoc, DocId, DraftsDoc, InboxDoc, IndexDoc } from "./docs";
import { writeText, type TypingJournal } from "./ui";
import { unsentItem, unsentKey, unsentWords } from "./unsent";

interface JournalEntry {
  documentId: DocId;
  path: (string | number)[];
  value: string;
  parentInit?: Record<string, unknown>;
}

export interface StartDocs {
  index: string;
  directory: string;
  inbox: string;
  drafts: string;
}

export interface SyncStatus {
  state: "offline" | "connecting" | "syncing" | "stored";
  /** Changes made on this device that the server has not confirmed storing. */
  waiting: number;
}

/** What the server said when it refused a change (SPEC §3, docs/RULES.md). */
export interface Refusal {
  documentId: DocId;
  rule: string;
  /** What the document was called, for telling the person. */
  title: string;
  /** How many pieces of text were kept as "Not sent" (unsent.ts). */
  kept: number;
}

const REFUSAL = /^refused change to (\w+): ([\s\S]*)$/;

/**
 * The stock adapter only logs the server's `error` message; this one also
 * reports it, so a refused change can be dropped instead of being offered
 * again on every reconnect.
 */
class SyncAdapter extends BrowserWebSocketClientAdapter {
  constructor(
    url: string,
    private readonly reportError: (text: string) => void,
  ) {
    super(url, 3000);
  }

  override receiveMessage(bytes: Uint8Array): void {
    // Errors are short; sync messages can be megabytes and are left alone.
    if (bytes.byteLength < 4096) {
      try {
        const message = cbor.decode(new Uint8Array(bytes)) as { type?: unknown; message?: unknown };
        if (message.type === "error" && typeof message.message === "string") this.reportError(message.message);
      } catch {
        // Not CBOR: the stock code logs it.
      }
    }
    super.receiveMessage(bytes);
  }
}

function syncUrl(token: string): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/sync?token=${encodeURIComponent(token)}`;
}

function urlOf(id: DocId): AutomergeUrl {
  return (id.startsWith("automerge:") ? id : `automerge:${id}`) as AutomergeUrl;
}

function sameHeads(a: readonly string[] | undefined, b: readonly string[]): boolean {
  return !!a && a.length === b.length && a.every(head => b.includes(head));
}

/**
 * A signed-in user's documents. The stock WebSocket adapter keeps the URL
 * (and so the token) it was made with, so whenever the connection is down
 * and the token has changed, the adapter is replaced by one with the current
 * token.
 */
export class Community implements TypingJournal {
  readonly repo: Repo;
  index!: DocHandle<IndexDoc>;
  directory!: DocHandle<DirectoryDoc>;
  inbox!: DocHandle<InboxDoc>;
  drafts!: DocHandle<DraftsDoc>;

  #adapter: SyncAdapter | null = null;
  #adapterToken: string | null = null;
  #serverPeer: PeerId | null = null;
  #storageId: string | null;
  #acked: Record<DocId, UrlHeads>;
  #ackedKey: string;
  #statusListeners = new Set<(status: SyncStatus) => void>();
  #statusTimer: ReturnType<typeof setTimeout> | undefined;
  #watchdog: ReturnType<typeof setInterval>;
  #downSince: number | null = null;
  #lastSessionCheck = 0;
  #closed = false;
  status: SyncStatus = { state: "connecting", waiting: 0 };
  /** When this page's copy started (a refusal restarts the page). */
  readonly startedAt = Date.now();

  constructor(readonly user: User) {
    // Saved to IndexedDB within 20 ms of a keystroke, and at once when the
    // page is hidden or closed, so a closed tab keeps what was typed.
    this.repo = new Repo({ storage: new IndexedDBStorageAdapter(`backchannel-${user.id}`), network: [], saveDebounceRate: 20 });
    this.#storageId = localStorage.getItem(`backchannel.server-storage-id`);
    this.#ackedKey = `backchannel.acked.${user.id}`;
    try {
      this.#acked = JSON.parse(localStorage.getItem(this.#ackedKey) ?? "{}") as Record<DocId, UrlHeads>;
    } catch {
      this.#acked = {};
    }
    this.repo.networkSubsystem.on("peer", ({ peerId, peerMetadata }) => {
      this.#serverPeer = peerId;
      const storageId = peerMetadata?.storageId;
      if (storageId && !peerMetadata.isEphemeral) {
        this.#storageId = storageId;
        localStorage.setItem(`backchannel.server-storage-id`, storageId);
      }
      this.#scheduleStatus();
    });
    this.repo.networkSubsystem.on("peer-disconnected", () => {
      this.#serverPeer = null;
      this.#scheduleStatus();
      // Not from inside the event: retiring an adapter emits it too.
      setTimeout(() => this.#reconnectIfStale(), 0);
    });
    addEventListener("online", this.#onOnline);
    addEventListener("offline", this.#onOffline);
    addEventListener("pagehide", this.#flush);
    document.addEventListener("visibilitychange", this.#flush);
    this.#watchdog = setInterval(() => this.#reconnectIfStale(), 4000);
    void this.#connect();
  }

  #onOnline = (): void => {
    // Reconnect now rather than at the stock adapter's next retry.
    if (!this.#serverPeer || currentToken() !== this.#adapterToken) this.#replaceAdapter();
    this.#scheduleStatus();
  };

  #onOffline = (): void => this.#scheduleStatus();

  #flush = (): void => {
    if (!this.#closed) void this.repo.flush().catch(() => undefined);
  };

  async #connect(): Promise<void> {
    try {
      await accessToken();
    } catch {
      // Offline, or the session ended (the app then asks to sign in again).
    }
    if (!this.#closed) this.#replaceAdapter();
  }

  #replacing = false;

  #replaceAdapter(): void {
    const token = currentToken();
    if (this.#closed || !token || this.#replacing) return;
    this.#replacing = true;
    try {
      const old = this.#adapter;
      this.#adapter = null;
      this.#adapterToken = token;
      if (old) this.#retire(old);
      this.#adapter = new SyncAdapter(syncUrl(token), text => void this.#refused(text));
      this.repo.networkSubsystem.addNetworkAdapter(this.#adapter);
    } finally {
      this.#replacing = false;
    }
  }

  /**
   * Closes an adapter for good. The stock adapter schedules a reconnect when
   * a connection attempt fails, and disconnect() does not cancel it: a
   * retired adapter would come back with the same peer id and push out the
   * new one, so its connect is disabled first.
   */
  #retire(adapter: BrowserWebSocketClientAdapter): void {
    (adapter as { retryInterval: number }).retryInterval = 0;
    adapter.connect = () => undefined;
    try {
      this.repo.networkSubsystem.removeNetworkAdapter(adapter);
    } catch {
      // It never connected: nothing to close.
    }
  }

  /** While disconnected, make sure the next attempt carries a valid token. */
  #reconnectIfStale(): void {
    if (this.#closed || this.#serverPeer || !navigator.onLine) {
      this.#downSince = null;
      return;
    }
    this.#downSince ??= Date.now();
    // Online, yet refused for a while: the session may have ended elsewhere
    // (signed out on another device, a reused refresh token). A refresh
    // tells; if the server refuses it the app asks to sign in again.
    if (Date.now() - this.#downSince > 10_000 && Date.now() - this.#lastSessionCheck > 60_000) {
      this.#lastSessionCheck = Date.now();
      void refresh()
        .then(() => this.#replaceAdapter())
        .catch(() => undefined);
      return;
    }
    if (!tokenIsFresh()) {
      void accessToken()
        .then(() => this.#reconnectIfStale())
        .catch(() => undefined);
      return;
    }
    if (currentToken() !== this.#adapterToken) this.#replaceAdapter();
  }

  #watched = new WeakSet<DocHandle<unknown>>();

  /** Follows a handle for the status line (the Repo has no event for new handles). */
  #watch(handle: DocHandle<unknown>): void {
    if (this.#watched.has(handle)) return;
    this.#watched.add(handle);
    const update = (): void => this.#scheduleStatus();
    handle.on("heads-changed", update);
    handle.on("remote-heads", update);
  }

  /** Opens a document from this device, or from the server when it is not here yet. */
  async open<T>(id: DocId): Promise<DocHandle<T>> {
    const url = urlOf(id);
    // The stock client marks a document it has nowhere to ask for as
    // unavailable for good; one that is not on this device waits (briefly)
    // for the server connection first.
    if (!this.repo.handles[url.slice("automerge:".length) as never] && !this.#serverPeer && navigator.onLine) {
      const local = await this.repo.storageSubsystem?.loadDocData(url.slice("automerge:".length) as never).catch(() => null);
      if (!local) await this.#whenConnected(15_000);
    }
    const handle = await this.repo.find<T>(url);
    this.#watch(handle as DocHandle<unknown>);
    this.#scheduleStatus();
    return handle;
  }

  #whenConnected(timeoutMs: number): Promise<void> {
    if (this.#serverPeer) return Promise.resolve();
    return new Promise(resolve => {
      const done = (): void => {
        clearTimeout(timer);
        this.repo.networkSubsystem.off("peer", done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.repo.networkSubsystem.on("peer", done);
    });
  }

  create<T>(initial: T): DocHandle<T> {
    const handle = this.repo.create<T>(initial);
    this.#watch(handle as DocHandle<unknown>);
    this.#scheduleStatus();
    return handle;
  }

  async start(docs: StartDocs): Promise<void> {
    [this.index, this.directory, this.inbox, this.drafts] = await Promise.all([
      this.open<IndexDoc>(docs.index),
      this.open<DirectoryDoc>(docs.directory),
      this.open<InboxDoc>(docs.inbox),
      this.open<DraftsDoc>(docs.drafts),
    ]);
    const moved = (): void => {
      const to = this.index.doc()?.moved_to;
      if (to) for (const listener of this.#movedListeners) listener(to);
    };
    this.index.on("change", moved);
    moved();
    // The stock client only syncs documents it has open: open everything
    // this user wrote, so offline work from an earlier visit goes out.
    // Likewise anything changed here that the server had not confirmed when
    // the app was last open (a reply written offline, say).
    const pending = new Set([...Object.keys(this.drafts.doc()?.mine ?? {}), ...this.#pendingAtStart()]);
    for (const id of pending) void this.open(id).catch(() => undefined);
    await this.#replayJournal();
  }

  /**
   * IndexedDB writes are asynchronous, so a tab closed (or a phone that dies)
   * right after a keystroke could lose it: every typed value is also written
   * synchronously to localStorage, replayed into its document at the next
   * start, and dropped once the document is saved.
   */
  write(documentId: DocId, path: (string | number)[], value: string, parentInit?: Record<string, unknown>): void {
    const journal = this.#journal();
    journal[`${documentId}|${path.join("/")}`] = { documentId, path, value, parentInit };
    localStorage.setItem(this.#journalKey(), JSON.stringify(journal));
    this.touched(documentId);
    clearTimeout(this.#journalTimer);
    this.#journalTimer = setTimeout(() => void this.#trimJournal(), 500);
  }

  #movedListeners = new Set<(url: string) => void>();

  /** The server rebuilt the index (a post left it, and its title must not stay in any history): `url` is the current one. */
  onIndexMoved(listener: (url: string) => void): void {
    this.#movedListeners.add(listener);
  }

  /** Drops this device's copy of a document nobody may read any more. */
  dropCopy(url: string): void {
    if (url !== this.index.url) this.repo.delete(url as AutomergeUrl);
  }

  #refusalListeners = new Set<(refusal: Refusal) => void>();

  onRefusal(listener: (refusal: Refusal) => void): void {
    this.#refusalListeners.add(listener);
  }

  #refusing = new Set<DocId>();

  /**
   * The server refused a change to a document and closed the connection.
   * The stock client would offer the same change again on every reconnect,
   * so this device's copy (the refused change with it) is dropped and the
   * server's copy fetched again. The server refuses a sync message whole, so
   * what else this device wrote there and the server does not have is kept
   * first, as "Not sent" items in the drafts document.
   */
  async #refused(text: string): Promise<void> {
    const match = REFUSAL.exec(text);
    if (!match || this.#closed) return;
    const [, documentId = "", rule = ""] = match;
    // The server closes this connection next: documents looked up from now
    // on wait for the next one.
    this.#serverPeer = null;
    if (this.#refusing.has(documentId)) return;
    this.#refusing.add(documentId);
    const handle = this.repo.handles[documentId as never] as DocHandle<{ title?: unknown; subject?: unknown }> | undefined;
    const doc = handle?.isReady() ? handle.doc() : undefined;
    const title = String(doc?.title ?? doc?.subject ?? "") || "a document";
    const kept = await this.#keepUnsent(documentId, rule, title);
    this.forget(documentId, []);
    localStorage.setItem(`${this.#ackedKey}.pending`, JSON.stringify(this.#pendingAtStart().filter(id => id !== documentId)));
    delete this.#acked[documentId];
    if (handle) this.repo.delete(documentId as never);
    // Removed twice: a throttled save of the sync state (which names the
    // refused change) may still land just after the first removal.
    await this.repo.storageSubsystem?.removeDoc(documentId as never).catch(() => undefined);
    await new Promise(resolve => setTimeout(resolve, 200));
    await this.repo.storageSubsystem?.removeDoc(documentId as never).catch(() => undefined);
    // A refused creation leaves nothing on the server to list.
    if (this.drafts?.doc()?.mine?.[documentId]) {
      const exists = await this.open(documentId).then(() => true, () => false);
      if (!exists) {
        this.drafts.change(d => {
          delete d.mine[documentId];
        });
      }
    }
    this.#refusing.delete(documentId);
    for (const listener of this.#refusalListeners) listener({ documentId, rule, title, kept });
    this.#scheduleStatus();
  }

  /**
   * Copies what this device's copy of `documentId` holds and the server's
   * does not (the copy at the heads the server last confirmed) into the
   * drafts document, saved before the copy is dropped. Returns how many.
   */
  async #keepUnsent(documentId: DocId, rule: string, title: string): Promise<number> {
    try {
      const handle = this.repo.handles[documentId as never] as DocHandle<Record<string, unknown>> | undefined;
      const doc = handle?.isReady() ? handle.doc() : undefined;
      if (!handle || !doc || !this.drafts?.isReady() || documentId === this.drafts.documentId) return 0;
      const storageId = this.#storageId;
      const serverHeads = (storageId && handle.getSyncInfo(storageId as never)?.lastHeads) || this.#acked[documentId];
      // Heads of the server's this device has not received yet cannot be
      // viewed; the rest still mark what the server has.
      const known = serverHeads ? decodeHeads(serverHeads).filter(head => hasHeads(doc, [head])) : [];
      const base = known.length ? (view(doc, known) as Record<string, unknown>) : undefined;
      const words = unsentWords(doc, base, this.user.id, id => this.nameOf(id));
      if (!words.length) return 0;
      this.drafts.change(drafts => {
        for (const found of words) drafts.items[unsentKey()] = unsentItem(found, documentId, title, rule);
      });
      await this.repo.flush([this.drafts.documentId]).catch(() => undefined);
      return words.length;
    } catch (error) {
      console.warn("could not keep the words of a refused change", error);
      return 0;
    }
  }

  /** The text of drafts item `key` was sent: the item and its journal go. */
  draftSent(key: string): void {
    this.drafts.change(doc => {
      delete doc.items[key];
    });
    this.forget(this.drafts.documentId, ["items", key]);
  }

  /** Drops what the journal holds under `path` (text that was just sent). */
  forget(documentId: DocId, path: (string | number)[]): void {
    const journal = this.#journal();
    for (const [key, entry] of Object.entries(journal)) {
      if (entry.documentId === documentId && path.every((step, i) => entry.path[i] === step)) delete journal[key];
    }
    localStorage.setItem(this.#journalKey(), JSON.stringify(journal));
  }

  #journalTimer: ReturnType<typeof setTimeout> | undefined;

  #journalKey(): string {
    return `backchannel.typing.${this.user.id}`;
  }

  #journal(): Record<string, JournalEntry> {
    try {
      return JSON.parse(localStorage.getItem(this.#journalKey()) ?? "{}") as Record<string, JournalEntry>;
    } catch {
      return {};
    }
  }

  async #trimJournal(): Promise<void> {
    const entries = Object.values(this.#journal());
    if (!entries.length || this.#closed) return;
    await this.repo.flush(entries.map(entry => entry.documentId as never)).catch(() => undefined);
    const journal = this.#journal();
    for (const [key, entry] of Object.entries(journal)) {
      const handle = this.repo.handles[entry.documentId as never];
      let value: unknown = handle?.isReady() ? handle.doc() : undefined;
      for (const step of entry.path) value = (value as Record<string | number, unknown> | undefined)?.[step];
      if (value === entry.value) delete journal[key];
    }
    localStorage.setItem(this.#journalKey(), JSON.stringify(journal));
  }

  async #replayJournal(): Promise<void> {
    for (const entry of Object.values(this.#journal())) {
      try {
        const handle = await this.open<unknown>(entry.documentId);
        let value: unknown = handle.doc();
        for (const step of entry.path) value = (value as Record<string | number, unknown> | undefined)?.[step];
        if (value !== entry.value) handle.change(doc => writeText(doc, entry.path, entry.value, entry.parentInit));
      } catch {
        // The document is gone from this device: nothing to put it back into.
      }
    }
    await this.#trimJournal();
  }

  /** Notes at once that `id` changed here, so the next start opens it even if the tab closes now. */
  touched(id: DocId): void {
    const pending = this.#pendingAtStart();
    if (!pending.includes(id)) localStorage.setItem(`${this.#ackedKey}.pending`, JSON.stringify([...pending, id]));
    this.#scheduleStatus();
  }

  #pendingAtStart(): DocId[] {
    try {
      return JSON.parse(localStorage.getItem(`${this.#ackedKey}.pending`) ?? "[]") as DocId[];
    } catch {
      return [];
    }
  }

  onStatus(listener: (status: SyncStatus) => void): () => void {
    this.#statusListeners.add(listener);
    listener(this.status);
    return () => this.#statusListeners.delete(listener);
  }

  #scheduleStatus(): void {
    this.#statusTimer ??= setTimeout(() => {
      this.#statusTimer = undefined;
      this.#updateStatus();
    }, 250);
  }

  #updateStatus(): void {
    if (this.#closed) return;
    let waiting = 0;
    let behind = false;
    const pending: DocId[] = [];
    const storageId = this.#storageId;
    for (const handle of Object.values(this.repo.handles)) {
      if (!handle.isReady()) continue;
      const id = handle.documentId;
      const doc = handle.doc();
      if (!doc) continue;
      const heads = handle.heads();
      const serverHeads = (storageId && handle.getSyncInfo(storageId as never)?.lastHeads) || this.#acked[id];
      if (storageId && handle.getSyncInfo(storageId as never)?.lastHeads) this.#acked[id] = serverHeads as UrlHeads;
      if (serverHeads && sameHeads(serverHeads, heads)) continue;
      if (!serverHeads) {
        // Nothing confirmed yet: a document made here counts whole, one
        // that came from the server is still arriving.
        if (this.#mine(id)) {
          waiting += getAllChanges(doc).length;
          pending.push(id);
        } else behind = true;
        continue;
      }
      const decoded = decodeHeads(serverHeads);
      const unsent = hasHeads(doc, decoded) ? getChanges(view(doc, decoded), doc).length : 0;
      if (unsent > 0) {
        waiting += unsent;
        pending.push(id);
      } else behind = true;
    }
    localStorage.setItem(this.#ackedKey, JSON.stringify(this.#acked));
    // Keep the ones not loaded yet, or a quick reload would forget them.
    for (const id of this.#pendingAtStart()) if (!this.repo.handles[id as never]?.isReady() && !pending.includes(id)) pending.push(id);
    localStorage.setItem(`${this.#ackedKey}.pending`, JSON.stringify(pending));
    const state: SyncStatus["state"] = !navigator.onLine
      ? "offline"
      : !this.#serverPeer
        ? this.#adapter
          ? "connecting"
          : "offline"
        : waiting > 0 || behind
          ? "syncing"
          : "stored";
    this.status = { state, waiting };
    for (const listener of this.#statusListeners) listener(this.status);
  }

  #mine(id: DocId): boolean {
    return !!this.drafts?.doc()?.mine?.[id];
  }

  /** The display name of a user, from the directory (kept offline). */
  nameOf(userId: string): string {
    if (userId === this.user.id) return "You";
    return this.directory?.doc()?.users?.[userId]?.display_name ?? "Someone";
  }

  isManager(): boolean {
    return this.user.role === "manager";
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#watchdog);
    clearTimeout(this.#statusTimer);
    removeEventListener("online", this.#onOnline);
    removeEventListener("offline", this.#onOffline);
    removeEventListener("pagehide", this.#flush);
    document.removeEventListener("visibilitychange", this.#flush);
    if (this.#adapter) this.#retire(this.#adapter);
    await this.repo.shutdown().catch(() => undefined);
  }
}
