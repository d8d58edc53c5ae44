// Words the server never stored because it refused the sync message that
// carried them (SPEC §3: one refused change refuses the whole message). When
// a refusal drops this device's copy of a document, what this device wrote
// there that the server does not have is kept first, as "Not sent" items in
// the drafts document (`unsent:<id>`), with the rule the server named. A new
// reply or message of the person's own can be edited and sent again, as a
// fresh change on top of the server's copy; anything else (a rewrite of
// someone else's words, a changed title) is shown so nothing typed is lost,
// and can only be discarded.

import type { DocHandle } from "@automerge/automerge-repo";

import { BODY_CHARS, itemId, type ConversationDoc, type DraftItem, type PostDoc } from "./docs";
import type { Screen } from "./screen";
import { bindText, button, h, labelled, textOf } from "./ui";

/** One piece of text found in the local copy and not in the server's. */
export interface UnsentWords {
  /** `reply` and `message` can be sent again; `text` cannot. */
  kind: "reply" | "message" | "text";
  /** What it was, for the person: "Your reply", "A change to Ned's reply". */
  what: string;
  body: string;
  /** The reply's or message's id in the refused copy. */
  itemId?: string;
}

type Loose = Record<string, unknown> | undefined;

function itemsOf(list: unknown): Record<string, unknown>[] {
  return Array.isArray(list) ? (list as Record<string, unknown>[]) : [];
}

/**
 * What `local` (this device's copy) holds that `base` (the copy as the server
 * last confirmed it; undefined for none) does not: new replies or messages,
 * changed bodies, a changed title, text or subject.
 */
export function unsentWords(local: Loose, base: Loose, me: string, nameOf: (userId: string) => string): UnsentWords[] {
  const type = textOf(local?.type);
  const found: UnsentWords[] = [];
  const fields: [string, string][] =
    type === "conversation" ? [["subject", "The subject"]] : [["title", "The post's title"], ["body", "The post's text"]];
  // With nothing the server confirmed to compare against, only what is
  // plainly this person's own is theirs to keep.
  const own = !!base || textOf(local?.author ?? local?.opener) === me;
  for (const [field, what] of own ? fields : []) {
    const now = textOf(local?.[field]);
    if (now.trim() && now !== textOf(base?.[field])) found.push({ kind: "text", what, body: now });
  }
  const conversation = type === "conversation";
  const noun = conversation ? "message" : "reply";
  const before = new Map(itemsOf(base?.[conversation ? "messages" : "replies"]).map(item => [textOf(item.id), item]));
  for (const item of itemsOf(local?.[conversation ? "messages" : "replies"])) {
    const body = textOf(item.body);
    if (!body.trim()) continue;
    const author = textOf(item.author);
    if (!base && author !== me) continue;
    const old = before.get(textOf(item.id));
    if (old && textOf(old.body) === body) continue;
    if (!old && author === me && !item.deleted) found.push({ kind: conversation ? "message" : "reply", what: `Your ${noun}`, body, itemId: textOf(item.id) });
    else if (author === me) found.push({ kind: "text", what: `A change to your ${noun}`, body });
    else found.push({ kind: "text", what: old ? `A change to ${nameOf(author)}'s ${noun}` : `A ${noun} in ${nameOf(author)}'s name`, body });
  }
  return found;
}

/** The drafts item that keeps `words` (no undefined fields: automerge refuses them). */
export function unsentItem(words: UnsentWords, target: string, title: string, rule: string): DraftItem {
  const item: DraftItem = { target, kind: `unsent-${words.kind}`, title, body: words.body, updated_at: Date.now(), rule, what: words.what };
  if (words.itemId) item.item_id = words.itemId;
  return item;
}

export function unsentKey(): string {
  return `unsent:${itemId()}`;
}

function unsentEntries(screen: Screen, target?: string): [string, DraftItem][] {
  return Object.entries(screen.community.drafts.doc()?.items ?? {})
    .filter(([key, item]) => key.startsWith("unsent:") && (!target || textOf(item.target) === target))
    .sort(([, a], [, b]) => Number(a.updated_at) - Number(b.updated_at) || 0);
}

/**
 * The "Not sent" list: every kept item, or only those of `target` (on its
 * thread or conversation). Rebuilt only when the set of items changes, so
 * typing in one keeps its focus; hidden when there is none.
 */
export function notSent(screen: Screen, target?: { id: string; handle: DocHandle<unknown>; landed: (itemId: string) => boolean }): HTMLElement {
  const { community } = screen;
  const list = h("ul", { className: "list not-sent", ariaLabel: "Not sent" });
  const section = h(
    "section",
    { className: "card not-sent" },
    h("h3", {}, "Not sent"),
    h("p", { className: "note" }, "The server refused these with another change, so it never stored them. They are kept on this device and your other devices until you send them again or discard them."),
    list,
  );
  let shown = "";
  let unbind: (() => void)[] = [];
  screen.onLeave(() => unbind.forEach(cleanup => cleanup()));
  const draw = (): void => {
    let entries = unsentEntries(screen, target?.id);
    // One that is in the server's copy after all (the server had it when the
    // refusal came) is not offered twice. Only after the restart that
    // dropped the refused copy: until then the document shown is that copy.
    const landed = entries.filter(([, item]) => target && item.item_id && Number(item.updated_at) < community.startedAt && target.landed(textOf(item.item_id)));
    if (landed.length) {
      entries = entries.filter(entry => !landed.includes(entry));
      setTimeout(() => landed.forEach(([key]) => community.draftSent(key)), 0);
    }
    const keys = entries.map(([key]) => key).join(" ");
    section.hidden = entries.length === 0;
    if (keys === shown) return;
    shown = keys;
    unbind.forEach(cleanup => cleanup());
    unbind = [];
    list.replaceChildren(...entries.map(([key, item]) => drawItem(screen, key, item, !target, cleanup => unbind.push(cleanup))));
  };
  screen.follow(community.drafts, draw);
  if (target) screen.follow(target.handle, draw);
  return section;
}

function drawItem(screen: Screen, key: string, item: DraftItem, linked: boolean, onUnbind: (cleanup: () => void) => void): HTMLLIElement {
  const { community } = screen;
  const target = textOf(item.target);
  const kind = textOf(item.kind);
  const what = textOf(item.what) || "Your words";
  const where = textOf(item.title) || (kind === "unsent-message" ? "a conversation" : "a post");
  const href = kind === "unsent-message" ? `#/conversation/${target}` : `#/post/${target}`;
  const error = h("p", { role: "alert", className: "error" });
  const heading = h("p", { className: "meta" }, `${what} on `, linked ? h("a", { href }, `“${where}”`) : `“${where}”`, ` · refused: ${textOf(item.rule)}`);
  const discard = button("Discard", () => community.draftSent(key), { className: "secondary" });
  if (kind !== "unsent-reply" && kind !== "unsent-message") {
    return h("li", {}, heading, h("p", { className: "kept" }, textOf(item.body)), h("p", { className: "note" }, "This cannot be sent again; copy what you need."), h("div", { className: "actions" }, discard));
  }
  const noun = kind === "unsent-reply" ? "reply" : "message";
  const box = h("textarea", { rows: 3, name: `unsent-${key}`, maxLength: BODY_CHARS });
  box.value = textOf(item.body);
  onUnbind(bindText(community, community.drafts, ["items", key, "body"], box));
  const send = button("Send again", () => {
    const text = box.value.trim();
    if (!text) return;
    error.textContent = "";
    send.disabled = true;
    resend(screen, kind === "unsent-reply" ? "reply" : "message", target, text)
      .then(() => community.draftSent(key))
      .catch((failure: unknown) => {
        error.textContent = failure instanceof Error ? failure.message : "It could not be sent.";
      })
      .finally(() => {
        send.disabled = false;
      });
  });
  return h("li", {}, heading, labelled(`Your ${noun}, not sent`, box), error, h("div", { className: "actions" }, send, discard));
}

/** Adds `text` as a new reply or message on top of the copy this device has now. */
async function resend(screen: Screen, kind: "reply" | "message", target: string, text: string): Promise<void> {
  const { community } = screen;
  const me = community.user.id;
  if (kind === "reply") {
    const post = (await community.open<PostDoc>(target).catch(() => null)) as DocHandle<PostDoc> | null;
    const doc = post?.doc();
    if (!post || !doc || textOf(doc.type) !== "post") throw new Error("This post is not available.");
    // The server refuses replies to a closed or unpublished thread.
    if (doc.locked || textOf(doc.status) !== "published") throw new Error("Replies to this post are closed.");
    post.change(d => {
      d.replies.push({ id: itemId(), author: me, created_at: Date.now(), body: text });
    });
    community.touched(post.documentId);
    return;
  }
  const conversation = (await community.open<ConversationDoc>(target).catch(() => null)) as DocHandle<ConversationDoc> | null;
  const doc = conversation?.doc();
  if (!conversation || !doc || textOf(doc.type) !== "conversation") throw new Error("This conversation is not available.");
  if (!(doc.members ?? []).map(textOf).includes(me) && textOf(doc.opener) !== me && !community.isManager()) throw new Error("You are no longer in this conversation.");
  conversation.change(d => {
    d.messages.push({ id: itemId(), author: me, created_at: Date.now(), body: text });
  });
  community.touched(conversation.documentId);
}
