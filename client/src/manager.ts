// For managers: the shared inbox (every conversation, filtered by kind,
// state, tag and assignee, with new reports and flags on top as they
// arrive), the needs counts and the weekly community figures.

import type { DocHandle } from "@automerge/automerge-repo";

import { api, ApiError } from "./api";
import { team } from "./backchannel";
import { KIND_NAMES, type ConversationDoc, type Kind } from "./docs";
import type { Screen } from "./screen";
import { h, labelled, notice, textOf, when } from "./ui";

/** How many conversations the inbox opens at once (newest first) to read tags and assignees. */
const OPEN_LIMIT = 300;

export async function teamInbox(screen: Screen): Promise<void> {
  const { community } = screen;
  const kind = h("select", { name: "kind" }, h("option", { value: "" }, "All kinds"), ...Object.entries(KIND_NAMES).map(([value, name]) => h("option", { value }, name)));
  const state = h("select", { name: "state" }, h("option", { value: "" }, "Open and resolved"), h("option", { value: "open" }, "Open"), h("option", { value: "resolved" }, "Resolved"));
  const tag = h("select", { name: "tag" }, h("option", { value: "" }, "Any tag"));
  const assignee = h("select", { name: "assignee" }, h("option", { value: "" }, "Anyone"), h("option", { value: "none" }, "Nobody"), h("option", { value: "me" }, "Me"));
  state.value = "open";
  const urgent = h("ul", { className: "list urgent", ariaLabel: "New reports and flags" });
  const list = h("ul", { className: "list", ariaLabel: "Team inbox" });
  const opened = new Map<string, DocHandle<ConversationDoc>>();
  const members = await team();
  for (const member of members) if (member.role === "manager" && member.id !== community.user.id) assignee.append(h("option", { value: member.id }, member.display_name));

  const draw = (): void => {
    const entries = Object.entries(community.inbox.doc()?.conversations ?? {}).sort(([, a], [, b]) => b.last_activity - a.last_activity);
    for (const [id] of entries.slice(0, OPEN_LIMIT)) {
      if (opened.has(id)) continue;
      opened.set(id, null as never);
      community
        .open<ConversationDoc>(id)
        .then(handle => {
          opened.set(id, handle);
          screen.follow(handle, draw);
        })
        .catch(() => opened.delete(id));
    }
    const tags = new Set<string>();
    for (const handle of opened.values()) for (const t of handle?.doc()?.tags ?? []) tags.add(textOf(t));
    const chosenTag = tag.value;
    tag.replaceChildren(h("option", { value: "" }, "Any tag"), ...[...tags].sort().map(t => h("option", { value: t }, t)));
    tag.value = chosenTag;
    const wanted = entries.filter(([id, entry]) => {
      const doc = opened.get(id)?.doc();
      if (kind.value && entry.kind !== kind.value) return false;
      if (state.value && entry.state !== state.value) return false;
      if (tag.value && !(doc?.tags ?? []).some(t => textOf(t) === tag.value)) return false;
      const who = doc?.assignee === undefined ? undefined : textOf(doc.assignee);
      if (assignee.value === "none" && who) return false;
      if (assignee.value === "me" && who !== community.user.id) return false;
      if (assignee.value && assignee.value !== "none" && assignee.value !== "me" && who !== assignee.value) return false;
      return true;
    });
    const row = ([id, entry]: [string, { subject: string; kind: Kind; state: string; last_activity: number; last_author: string }]): HTMLLIElement => {
      const doc = opened.get(id)?.doc();
      const extra = [doc?.assignee ? `assigned to ${community.nameOf(textOf(doc.assignee))}` : "", ...(doc?.tags ?? []).map(t => `#${textOf(t)}`)].filter(Boolean).join(" ");
      return h(
        "li",
        { className: `${entry.state} kind-${entry.kind}` },
        h("a", { href: `#/conversation/${id}` }, textOf(entry.subject) || "(no subject)"),
        h("span", { className: "meta" }, `${KIND_NAMES[entry.kind] ?? entry.kind} · ${entry.state} · last from ${community.nameOf(textOf(entry.last_author))} · `, when(entry.last_activity), extra ? ` · ${extra}` : ""),
      );
    };
    const alerts = entries.filter(([, entry]) => (entry.kind === "report" || entry.kind === "flag") && entry.state === "open");
    urgent.replaceChildren(...(alerts.length ? alerts.map(row) : [h("li", { className: "empty" }, "No open reports or flags.")]));
    list.replaceChildren(...(wanted.length ? wanted.map(row) : [h("li", { className: "empty" }, "Nothing matches these filters.")]));
  };
  for (const control of [kind, state, tag, assignee]) control.addEventListener("change", draw);
  screen.follow(community.inbox, draw);
  screen.view.replaceChildren(
    h("div", { className: "heading" }, h("h2", {}, "Team inbox"), h("span", { className: "actions" }, h("a", { href: "#/needs" }, "Needs"), h("a", { href: "#/metrics" }, "Community figures"))),
    h("section", {}, h("h3", {}, "New reports and flags"), urgent),
    h("section", {}, h("h3", {}, "All conversations"), h("div", { className: "filters" }, labelled("Kind", kind), labelled("State", state), labelled("Tag", tag), labelled("Assignee", assignee)), list),
  );
}

function table(caption: string, head: string[], rows: (string | number)[][]): HTMLTableElement {
  return h(
    "table",
    {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, ...head.map(cell => h("th", { scope: "col" }, cell)))),
    h("tbody", {}, ...rows.map(row => h("tr", {}, ...row.map((cell, i) => (i === 0 ? h("th", { scope: "row" }, String(cell)) : h("td", {}, String(cell))))))),
  );
}

function failed(screen: Screen, error: unknown): void {
  screen.view.append(notice(error instanceof ApiError ? error.message : "These figures come from the server; they show once you are online.", "error"));
}

interface Needs {
  since: number;
  until: number;
  total: number;
  by_kind: Record<string, number>;
  by_tag: Record<string, number>;
  by_state: Record<string, number>;
}

export async function needs(screen: Screen): Promise<void> {
  const days = h("select", { name: "period" }, ...[7, 30, 90, 365].map(n => h("option", { value: String(n) }, `Last ${n} days`)));
  days.value = "30";
  const figures = h("div", { className: "figures" });
  const load = async (): Promise<void> => {
    figures.replaceChildren(notice("Counting…"));
    try {
      const since = Date.now() - Number(days.value) * 86_400_000;
      const answer = await api<Needs>("GET", `/api/needs?since=${since}`);
      figures.replaceChildren(
        h("p", {}, `${answer.total} conversations opened since `, when(answer.since)),
        table("By kind", ["Kind", "Conversations"], Object.entries(answer.by_kind).map(([k, n]) => [KIND_NAMES[k as Kind] ?? k, n])),
        table("By state", ["State", "Conversations"], Object.entries(answer.by_state)),
        table("By tag", ["Tag", "Conversations"], Object.entries(answer.by_tag).sort(([, a], [, b]) => b - a)),
      );
    } catch (error) {
      figures.replaceChildren();
      failed(screen, error);
    }
  };
  days.addEventListener("change", () => void load());
  screen.view.replaceChildren(h("h2", {}, "Needs"), labelled("Period", days), figures);
  await load();
}

interface Week {
  week_start: number;
  public_posts: number;
  public_replies: number;
  back_channel_messages: number;
  conversations_opened: number;
  conversations_promoted: number;
  back_channel_share: number;
}

export async function metrics(screen: Screen): Promise<void> {
  screen.view.replaceChildren(h("h2", {}, "Community figures"), notice("Per week. A rising back-channel share means private messages are replacing the public side."));
  try {
    const { weeks } = await api<{ weeks: Week[] }>("GET", "/api/metrics/community?weeks=8");
    const day = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
    screen.view.append(
      h(
        "div",
        { className: "scroll" },
        table(
          "The last 8 weeks",
          ["Week of", "Posts", "Replies", "Back-channel messages", "Conversations opened", "Promoted", "Back-channel share"],
          weeks.map(w => [day.format(w.week_start), w.public_posts, w.public_replies, w.back_channel_messages, w.conversations_opened, w.conversations_promoted, `${Math.round(w.back_channel_share * 100)}%`]),
        ),
      ),
    );
  } catch (error) {
    failed(screen, error);
  }
}
