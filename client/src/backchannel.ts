// The back-channel: "Contact the team" with the team's contact cards and the
// kinds of conversation, my conversations from the inbox, and a conversation
// with its messages (plus the manager controls on it).

import type { DocHandle } from "@automerge/automerge-repo";

import { api, ApiError } from "./api";
import { BODY_CHARS, chronological, itemId, KIND_NAMES, newConversation, type ConversationDoc, type Kind, type PostDoc } from "./docs";
import { muteButton } from "./settings";
import { openOrExplain, type Screen } from "./screen";
import { bindText, button, h, labelled, notice, textOf, when } from "./ui";
import { notSent } from "./unsent";

export interface TeamMember {
  id: string;
  display_name: string;
  role: string;
  contact_card: string | null;
}

/** The team, from the server, or as last seen when offline. */
export async function team(): Promise<TeamMember[]> {
  try {
    const members = await api<TeamMember[]>("GET", "/api/team");
    localStorage.setItem("backchannel.team", JSON.stringify(members));
    return members;
  } catch {
    try {
      return JSON.parse(localStorage.getItem("backchannel.team") ?? "[]") as TeamMember[];
    } catch {
      return [];
    }
  }
}

const CHOICES: { kind: Kind; label: string; text: string }[] = [
  { kind: "question", label: "Ask privately", text: "No question is too small. Only the team sees it." },
  { kind: "report", label: "Report a member", text: "Tell the team about someone's behaviour. They will not see your report." },
  { kind: "idea", label: "Share an idea", text: "Something the community could do or needs." },
  { kind: "story", label: "Share a story", text: "Something that happened, good or bad." },
];

export async function contact(screen: Screen): Promise<void> {
  screen.view.replaceChildren(
    h("h2", {}, "Contact the team"),
    h(
      "ul",
      { className: "choices", ariaLabel: "What would you like to do?" },
      ...CHOICES.map(choice => h("li", {}, h("a", { href: `#/contact/${choice.kind}`, className: "choice" }, h("strong", {}, choice.label), h("span", {}, choice.text)))),
      h("li", {}, h("p", { className: "note" }, "To flag a public conversation that went wrong, use “Flag this conversation” on its thread.")),
    ),
  );
  const members = await team();
  screen.view.append(
    h("h3", {}, "The team"),
    h(
      "ul",
      { className: "list", ariaLabel: "The team" },
      ...(members.length
        ? members.map(member => h("li", { className: "contact-card" }, h("strong", {}, member.display_name), h("span", { className: "meta" }, ` · ${member.role}`), h("p", {}, member.contact_card ?? "No contact details yet.")))
        : [h("li", { className: "empty" }, navigator.onLine ? "No team members yet." : "The team's cards show once you have been online.")]),
    ),
  );
}

/**
 * Writing to the team: the subject and message are kept in the drafts
 * document as they are typed; sending creates the conversation (which works
 * offline and goes out on reconnect).
 */
export async function compose(screen: Screen, kind: Kind, aboutPost?: string): Promise<void> {
  const { community } = screen;
  const key = aboutPost ? `flag:${aboutPost}` : `contact:${kind}`;
  const subject = h("input", { type: "text", name: "subject", maxLength: 200 });
  const message = h("textarea", { name: "message", rows: 6, maxLength: BODY_CHARS });
  const error = h("p", { role: "alert", className: "error" });
  let about: ConversationDoc["about"] | undefined = aboutPost ? { post: aboutPost } : undefined;
  const fields: HTMLElement[] = [];
  let heading: string = KIND_NAMES[kind];
  if (aboutPost) {
    heading = "Flag this conversation";
    const post = community.repo.handles[aboutPost as never];
    const title = post?.isReady() ? textOf((post.doc() as PostDoc | undefined)?.title) : "";
    fields.push(notice(`You are flagging “${title || "a public thread"}”. Tell the team what went wrong; only the team sees this.`));
    if (!subject.value && title) subject.value = `Flag: ${title}`;
  }
  if (kind === "report") {
    const who = h("select", { name: "member" }, h("option", { value: "" }, "Choose a member"));
    for (const [id, entry] of Object.entries(community.directory.doc()?.users ?? {})) {
      if (id !== community.user.id) who.append(h("option", { value: id }, textOf(entry.display_name)));
    }
    who.addEventListener("change", () => {
      about = who.value ? { user: who.value } : undefined;
    });
    fields.push(labelled("Which member", who));
  }
  // Bound after the suggested subject is in the box, so a new draft keeps it.
  const draftItem = (): Record<string, unknown> => ({ kind, body: "", title: subject.value, updated_at: Date.now(), ...(aboutPost ? { target: aboutPost } : {}) });
  screen.onLeave(bindText(community, community.drafts, ["items", key, "title"], subject, draftItem()));
  screen.onLeave(bindText(community, community.drafts, ["items", key, "body"], message, draftItem()));
  const send = h("button", { type: "submit" }, "Send to the team");
  const form = h("form", { className: "card" }, ...fields, labelled("Subject", subject), labelled("Message", message), error, h("div", { className: "actions" }, send));
  form.addEventListener("submit", event => {
    event.preventDefault();
    const text = message.value.trim();
    const title = subject.value.trim() || text.slice(0, 60);
    if (!text) {
      error.textContent = "Write a message first.";
      message.focus();
      return;
    }
    if (kind === "report" && !about?.user) {
      error.textContent = "Choose the member you are reporting.";
      return;
    }
    const handle = community.create<ConversationDoc>(newConversation(community.user.id, aboutPost ? "flag" : kind, title, text, about));
    community.drafts.change(doc => {
      doc.mine[handle.documentId] = { type: "conversation", created_at: Date.now() };
      delete doc.items[key];
    });
    community.forget(community.drafts.documentId, ["items", key]);
    community.touched(handle.documentId);
    screen.go(`#/conversation/${handle.documentId}`, true);
  });
  screen.view.replaceChildren(h("h2", {}, heading), form);
}

export function conversations(screen: Screen): void {
  const { community } = screen;
  const list = h("ul", { className: "list", ariaLabel: "Conversations" });
  const draw = (): void => {
    const listed = community.inbox.doc()?.conversations ?? {};
    const entries = Object.entries(listed)
      .filter(([id]) => community.isManager() === false || community.drafts.doc()?.mine?.[id])
      .sort(([, a], [, b]) => b.last_activity - a.last_activity);
    // Conversations opened on this device that the server has not listed yet.
    const waiting = Object.entries(community.drafts.doc()?.mine ?? {}).filter(([id, entry]) => entry.type === "conversation" && !listed[id]);
    list.replaceChildren(
      ...waiting.map(([id]) => h("li", {}, h("a", { href: `#/conversation/${id}` }, "A new conversation"), h("span", { className: "meta" }, "waiting to reach the team"))),
      ...entries.map(([id, entry]) =>
        h("li", { className: entry.state === "resolved" ? "resolved" : "" }, h("a", { href: `#/conversation/${id}` }, textOf(entry.subject) || "(no subject)"), h("span", { className: "meta" }, `${KIND_NAMES[entry.kind] ?? entry.kind} · ${entry.state} · `, when(entry.last_activity))),
      ),
    );
    if (!list.children.length) list.append(h("li", { className: "empty" }, "No conversations yet. “Contact the team” starts one."));
  };
  screen.follow(community.inbox, draw);
  screen.follow(community.drafts, draw);
  screen.view.replaceChildren(
    h("div", { className: "heading" }, h("h2", {}, "My conversations"), h("a", { href: "#/contact", className: "button" }, "Contact the team")),
    ...(community.isManager() ? [notice("Conversations you opened. Everything members send the team is in the team inbox.")] : []),
    list,
  );
}

export async function conversation(screen: Screen, id: string): Promise<void> {
  const { community } = screen;
  const handle = await openOrExplain<ConversationDoc>(screen, id, "conversation", "conversation");
  if (!handle) return;
  const me = community.user.id;
  const subject = h("h2", { tabIndex: -1 });
  const meta = h("p", { className: "meta" });
  const messages = h("ol", { className: "list messages", ariaLabel: "Messages" });
  const box = h("textarea", { name: "message", rows: 3, maxLength: BODY_CHARS });
  const form = h("form", { className: "card" }, labelled("Your message", box), h("div", { className: "actions" }, h("button", { type: "submit" }, "Send message")));
  const draftKey = `message:${id}`;
  screen.onLeave(bindText(community, community.drafts, ["items", draftKey, "body"], box, { target: id, kind: "message", body: "", updated_at: Date.now() }));
  form.addEventListener("submit", event => {
    event.preventDefault();
    const text = box.value.trim();
    if (!text) return;
    handle.change(doc => {
      doc.messages.push({ id: itemId(), author: me, created_at: Date.now(), body: text });
    });
    community.touched(handle.documentId);
    community.draftSent(draftKey);
    box.value = "";
  });
  const consentBox = h("fieldset", { className: "card" });
  let updateConsent: (() => void) | undefined;
  const teamControls = h("div", { className: "card" });
  const members = community.isManager() ? await team() : [];
  const draw = (): void => {
    const doc = handle.doc();
    if (!doc) return;
    subject.textContent = textOf(doc.subject) || "(no subject)";
    const kind = textOf(doc.kind) as Kind;
    const opener = textOf(doc.opener);
    meta.replaceChildren(`${KIND_NAMES[kind] ?? kind} · ${textOf(doc.state) === "resolved" ? "resolved" : "open"} · opened by ${community.nameOf(opener)} `, when(doc.created_at));
    messages.replaceChildren(
      ...chronological(doc.messages ?? []).map(message =>
        h("li", { className: textOf(message.author) === me ? "mine" : "" }, h("p", { className: "meta" }, `${community.nameOf(textOf(message.author))} · `, when(message.created_at)), h("p", {}, textOf(message.body))),
      ),
    );
    if (opener === me) {
      updateConsent ??= openerControls(consentBox, handle);
      updateConsent();
    }
    consentBox.hidden = opener !== me;
    teamControls.hidden = !community.isManager();
    if (community.isManager() && !teamControls.contains(document.activeElement)) drawTeamControls(screen, teamControls, handle, members);
  };
  screen.follow(handle, draw);
  screen.view.replaceChildren(subject, meta, h("div", { className: "actions" }, await muteButton(screen, id, textOf(handle.doc()?.subject))), messages, notSent(screen, { id, handle: handle as DocHandle<unknown>, landed: item => (handle.doc()?.messages ?? []).some(message => textOf(message.id) === item) }), form, consentBox, teamControls);
}

/**
 * The opener's consent to sharing the question and answer publicly. Built
 * once and updated in place, so a change does not take the person's focus.
 */
function openerControls(container: HTMLElement, handle: DocHandle<ConversationDoc>): () => void {
  const consent = h("input", { type: "checkbox", name: "consent" });
  const anonymous = h("input", { type: "checkbox", name: "anonymous" });
  const save = (): void =>
    handle.change(d => {
      d.publish = { consent: consent.checked, anonymous: consent.checked && anonymous.checked };
    });
  consent.addEventListener("change", save);
  anonymous.addEventListener("change", save);
  container.replaceChildren(
    h("legend", {}, "Sharing with the community"),
    h("label", { className: "check" }, consent, h("span", {}, "The team may share this question and its answer publicly")),
    h("label", { className: "check" }, anonymous, h("span", {}, "Without my name")),
  );
  return () => {
    const publish = handle.doc()?.publish;
    consent.checked = !!publish?.consent;
    anonymous.checked = !!publish?.anonymous;
    anonymous.disabled = !publish?.consent;
  };
}

function drawTeamControls(screen: Screen, container: HTMLElement, handle: DocHandle<ConversationDoc>, members: TeamMember[]): void {
  const doc = handle.doc();
  if (!doc) return;
  const state = h("select", { name: "state" }, h("option", { value: "open" }, "Open"), h("option", { value: "resolved" }, "Resolved"));
  state.value = textOf(doc.state);
  state.addEventListener("change", () => handle.change(d => {
    d.state = state.value as ConversationDoc["state"];
  }));
  const tags = h("input", { type: "text", name: "tags", value: (doc.tags ?? []).map(textOf).join(", ") });
  tags.addEventListener("change", () => {
    const next = [...new Set(tags.value.split(",").map(tag => tag.trim().toLowerCase()).filter(Boolean))];
    handle.change(d => {
      d.tags.splice(0, d.tags.length, ...next);
    });
  });
  const assignee = h("select", { name: "assignee" }, h("option", { value: "" }, "Nobody"), ...members.filter(m => m.role === "manager").map(m => h("option", { value: m.id }, m.display_name)));
  assignee.value = textOf(doc.assignee);
  assignee.addEventListener("change", () => handle.change(d => {
    if (assignee.value) d.assignee = assignee.value;
    else delete d.assignee;
  }));
  const result = h("p", { role: "status", className: "note" });
  const promote = button("Promote to public", () => {
    promote.disabled = true;
    api<{ url: string }>("POST", `/api/conversations/${handle.documentId}/promote`)
      .then(({ url }) => screen.go(`#/post/${url.replace(/^automerge:/, "")}`))
      .catch((error: unknown) => {
        promote.disabled = false;
        result.textContent = error instanceof ApiError ? error.message : "Promoting needs a connection to the server.";
      });
  });
  promote.disabled = !doc.publish?.consent;
  container.replaceChildren(
    h("h3", {}, "Team"),
    labelled("State", state),
    labelled("Tags", tags, "Comma-separated, for counting needs"),
    labelled("Assignee", assignee),
    h("div", { className: "actions" }, promote),
    doc.publish?.consent ? notice(`The opener agreed to share this publicly${doc.publish.anonymous ? ", without their name" : ""}.`) : notice("The opener has not agreed to share this publicly."),
    result,
  );
}
