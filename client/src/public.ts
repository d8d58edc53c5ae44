// The public side: the feed from the index, a thread with its replies and a
// reply box, and writing a new post (a draft in its own document until it is
// published).

import type { DocHandle } from "@automerge/automerge-repo";

import { BODY_CHARS, chronological, itemId, newPost, type PostDoc } from "./docs";
import { muteButton } from "./settings";
import { openOrExplain, type Screen } from "./screen";
import { bindText, button, h, labelled, notice, textOf, timeText, when } from "./ui";
import { notSent } from "./unsent";

export function feed(screen: Screen): void {
  const { community } = screen;
  const list = h("ul", { className: "list", ariaLabel: "Public posts" });
  const drafts = h("ul", { className: "list", ariaLabel: "My drafts" });
  const draftsSection = h("section", {}, h("h3", {}, "My drafts"), drafts);
  const draw = (): void => {
    const posts = Object.entries(community.index.doc()?.posts ?? {}).sort(([, a], [, b]) => b.last_activity - a.last_activity);
    list.replaceChildren(
      ...(posts.length
        ? posts.map(([id, post]) =>
            h(
              "li",
              {},
              h("a", { href: `#/post/${id}` }, textOf(post.title) || "(untitled)"),
              h("span", { className: "meta" }, `${textOf(post.author_name)} · ${post.reply_count} ${post.reply_count === 1 ? "reply" : "replies"}`),
            ),
          )
        : [h("li", { className: "empty" }, "No posts yet.")]),
    );
  };
  const following = new Set<string>();
  const drawDrafts = (): void => {
    const mine = Object.entries(community.drafts.doc()?.mine ?? {}).filter(([id, entry]) => entry.type === "post" && !community.index.doc()?.posts?.[id]);
    const shown = mine.filter(([id]) => {
      const handle = community.repo.handles[id as never] as DocHandle<PostDoc> | undefined;
      if (!following.has(id)) {
        following.add(id);
        void community.open<PostDoc>(id).then(opened => screen.follow(opened, drawDrafts)).catch(() => undefined);
      }
      return !handle?.isReady() || textOf(handle.doc()?.status) === "draft";
    });
    draftsSection.hidden = shown.length === 0;
    drafts.replaceChildren(...shown.map(([id]) => h("li", {}, h("a", { href: `#/edit/${id}` }, draftTitle(screen, id)))));
  };
  screen.follow(community.index, draw);
  screen.follow(community.index, drawDrafts);
  screen.follow(community.drafts, drawDrafts);
  screen.view.replaceChildren(h("div", { className: "heading" }, h("h2", {}, "Community"), h("a", { href: "#/new-post", className: "button" }, "New post")), notSent(screen), list, draftsSection);
}

function draftTitle(screen: Screen, id: string): string {
  const handle = screen.community.repo.handles[id as never] as DocHandle<PostDoc> | undefined;
  const title = handle?.isReady() ? textOf(handle.doc()?.title) : "";
  return title || "Untitled draft";
}

export async function thread(screen: Screen, id: string): Promise<void> {
  const { community } = screen;
  const post = await openOrExplain<PostDoc>(screen, id, "post", "post");
  if (!post) return;
  const me = community.user.id;
  // The words go from the post as it is now; they stay in its history, which
  // its readers hold (docs/RULES.md).
  const deleteReply = (replyId: string): void => {
    post.change(d => {
      const found = d.replies.find(r => textOf(r.id) === replyId);
      if (found) {
        found.deleted = true;
        found.body = "";
      }
    });
    community.touched(post.documentId);
  };
  const title = h("h2", { tabIndex: -1 });
  const byline = h("p", { className: "meta" });
  const body = h("div", { className: "post-body" });
  const replies = h("ol", { className: "list replies", ariaLabel: "Replies" });
  const managerTools = h("div", { className: "actions" });
  const box = h("textarea", { rows: 3, name: "reply", maxLength: BODY_CHARS });
  const send = h("button", { type: "submit" }, "Send reply");
  const form = h("form", { className: "card" }, labelled("Your reply", box), h("div", { className: "actions" }, send));
  const draftKey = `reply:${id}`;
  screen.onLeave(bindText(community, community.drafts, ["items", draftKey, "body"], box, { target: id, kind: "reply", body: "", updated_at: Date.now() }));
  form.addEventListener("submit", event => {
    event.preventDefault();
    const text = box.value.trim();
    const now = post.doc();
    // The server refuses replies to a closed or unpublished thread.
    if (!text || !now || now.locked || textOf(now.status) !== "published") return;
    post.change(doc => {
      doc.replies.push({ id: itemId(), author: me, created_at: Date.now(), body: text });
    });
    community.touched(post.documentId);
    community.draftSent(draftKey);
    box.value = "";
  });
  const draw = (): void => {
    const doc = post.doc();
    if (!doc) return;
    title.textContent = textOf(doc.title) || "(untitled)";
    const status = textOf(doc.status);
    byline.replaceChildren(`${doc.anonymous ? "Anonymous" : community.nameOf(textOf(doc.author))} · `, when(doc.created_at), status === "hidden" ? " · hidden" : "", doc.locked ? " · replies are closed" : "");
    body.textContent = textOf(doc.body);
    const items = chronological(doc.replies ?? []);
    replies.replaceChildren(
      ...(items.length
        ? items.map(reply =>
            h(
              "li",
              {},
              h("p", { className: "meta" }, `${community.nameOf(textOf(reply.author))} · `, when(reply.created_at)),
              h("p", { className: reply.deleted ? "deleted" : "" }, reply.deleted ? "(deleted)" : textOf(reply.body)),
              textOf(reply.author) === me && !reply.deleted && status === "published"
                ? button("Delete my reply", () => {
                    if (!confirm("Delete your reply? Everyone will see “(deleted)” instead.")) return;
                    deleteReply(textOf(reply.id));
                  }, { className: "link", ariaLabel: `Delete my reply from ${timeText(reply.created_at)}` })
                : community.isManager() && !reply.deleted && status === "published"
                  ? button("Delete this reply", () => {
                      if (!confirm(`Delete this reply by ${community.nameOf(textOf(reply.author))}? Everyone will see “(deleted)” instead.`)) return;
                      deleteReply(textOf(reply.id));
                    }, { className: "link", ariaLabel: `Delete the reply by ${community.nameOf(textOf(reply.author))} from ${timeText(reply.created_at)}` })
                  : null,
            ),
          )
        : [h("li", { className: "empty" }, "No replies yet.")]),
    );
    form.hidden = !!doc.locked || status !== "published";
    // On a hidden post managers may change only its status (RULES.md).
    const tools: HTMLButtonElement[] = [];
    if (community.isManager() && status === "published") {
      tools.push(
        button(doc.locked ? "Reopen replies" : "Close replies", () => post.change(d => {
          d.locked = !d.locked;
        })),
        button("Hide the post", () => post.change(d => {
          d.status = "hidden";
        })),
      );
    }
    if (community.isManager() && status === "hidden") {
      tools.push(button("Show the post again", () => post.change(d => {
        d.status = "published";
      })));
    }
    managerTools.replaceChildren(...tools);
  };
  screen.follow(post, draw);
  screen.view.replaceChildren(
    h("article", { className: "card" }, title, byline, body),
    h("div", { className: "actions" }, h("a", { href: `#/flag/${id}`, className: "button secondary" }, "Flag this conversation"), await muteButton(screen, id, textOf(post.doc()?.title)), managerTools),
    h("h3", {}, "Replies"),
    replies,
    notSent(screen, { id, handle: post as DocHandle<unknown>, landed: item => (post.doc()?.replies ?? []).some(reply => textOf(reply.id) === item) }),
    form,
  );
}

/** Makes a new draft post in its own document and opens it for writing. */
export function startPost(screen: Screen): void {
  const { community } = screen;
  const handle = community.create<PostDoc>(newPost(community.user.id));
  community.drafts.change(doc => {
    doc.mine[handle.documentId] = { type: "post", created_at: Date.now() };
  });
  community.touched(handle.documentId);
  screen.go(`#/edit/${handle.documentId}`, true);
}

export async function editPost(screen: Screen, id: string): Promise<void> {
  const { community } = screen;
  const post = await openOrExplain<PostDoc>(screen, id, "draft", "post");
  if (!post) return;
  if (textOf(post.doc()?.status) !== "draft") {
    screen.go(`#/post/${id}`, true);
    return;
  }
  const title = h("input", { type: "text", name: "title", maxLength: 200 });
  const body = h("textarea", { name: "body", rows: 8, maxLength: BODY_CHARS });
  const error = h("p", { role: "alert", className: "error" });
  screen.onLeave(bindText(community, post, ["title"], title));
  screen.onLeave(bindText(community, post, ["body"], body));
  const edited = (): void => community.touched(post.documentId);
  title.addEventListener("input", edited);
  body.addEventListener("input", edited);
  const publish = button("Publish", () => {
    if (!title.value.trim()) {
      error.textContent = "Give your post a title first.";
      title.focus();
      return;
    }
    post.change(doc => {
      doc.status = "published";
    });
    community.touched(post.documentId);
    screen.go(`#/post/${id}`, true);
  }, { className: "primary" });
  screen.view.replaceChildren(
    h("h2", {}, "New post"),
    notice("A draft: only you see it. It is kept on this device as you type and synced to your other devices."),
    h("form", { className: "card" }, labelled("Title", title), labelled("Text", body), error, h("div", { className: "actions" }, publish)),
  );
}
