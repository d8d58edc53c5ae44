// Settings: notifications on this device, muted threads, the account.

import { api, ApiError, signOut } from "./api";
import { team } from "./backchannel";
import { disableNotifications, enableNotifications, notificationsWanted, pushSupported } from "./push";
import type { Screen } from "./screen";
import { button, h, labelled, notice } from "./ui";

/** The server keeps mutes but does not list them; this device remembers their titles. */
function mutesKey(screen: Screen): string {
  return `backchannel.mutes.${screen.community.user.id}`;
}

function mutes(screen: Screen): Record<string, string> {
  try {
    return JSON.parse(localStorage.getItem(mutesKey(screen)) ?? "{}") as Record<string, string>;
  } catch {
    return {};
  }
}

export function isMuted(screen: Screen, id: string): boolean {
  return id in mutes(screen);
}

async function setMuted(screen: Screen, id: string, title: string, muted: boolean): Promise<void> {
  await api(muted ? "PUT" : "DELETE", `/api/mutes/${id}`);
  const all = mutes(screen);
  if (muted) all[id] = title || "Untitled";
  else delete all[id];
  localStorage.setItem(mutesKey(screen), JSON.stringify(all));
}

/** "Mute this thread" / "Unmute this thread", for a post or a conversation. */
export async function muteButton(screen: Screen, id: string, title: string): Promise<HTMLButtonElement> {
  const label = (): string => (isMuted(screen, id) ? "Unmute this thread" : "Mute this thread");
  const node = button(label(), () => {
    node.disabled = true;
    setMuted(screen, id, title, !isMuted(screen, id))
      .catch(() => alert("Muting needs a connection to the server; try again when online."))
      .finally(() => {
        node.disabled = false;
        node.textContent = label();
      });
  }, { className: "secondary" });
  return node;
}

export function settings(screen: Screen): void {
  const { community } = screen;
  const status = h("p", { role: "status", className: "note" });
  const toggle = h("button", { type: "button" });
  const drawToggle = (): void => {
    const on = notificationsWanted() && pushSupported() && Notification.permission === "granted";
    toggle.textContent = on ? "Turn off notifications" : "Turn on notifications";
    toggle.disabled = !pushSupported();
    status.textContent = !pushSupported()
      ? "This browser cannot show notifications from Backchannel."
      : on
        ? "Notifications are on for this device: replies, messages to you, and (for the team) new reports and flags."
        : "Notifications are off for this device.";
  };
  toggle.addEventListener("click", () => {
    const on = toggle.textContent === "Turn off notifications";
    toggle.disabled = true;
    status.textContent = on ? "Turning notifications off…" : "Turning notifications on…";
    (on ? disableNotifications() : enableNotifications())
      .then(drawToggle)
      .catch((error: unknown) => {
        drawToggle();
        status.textContent = `Notifications could not be turned on: ${error instanceof Error ? error.message : String(error)}`;
      });
  });
  drawToggle();
  const muted = h("ul", { className: "list", ariaLabel: "Muted threads" });
  const drawMutes = (): void => {
    const all = Object.entries(mutes(screen));
    muted.replaceChildren(
      ...(all.length
        ? all.map(([id, title]) =>
            h("li", {}, h("span", {}, title), button(`Unmute ${title}`, () => void setMuted(screen, id, title, false).then(drawMutes).catch(() => alert("Unmuting needs a connection to the server.")), { className: "secondary" })),
          )
        : [h("li", { className: "empty" }, "Nothing is muted.")]),
    );
  };
  drawMutes();
  const card = contactCard(screen);
  screen.view.replaceChildren(
    h("h2", {}, "Settings"),
    ...(card ? [card] : []),
    h("section", { className: "card" }, h("h3", {}, "Notifications"), status, h("div", { className: "actions" }, toggle)),
    h("section", { className: "card" }, h("h3", {}, "Muted threads"), muted),
    h(
      "section",
      { className: "card" },
      h("h3", {}, "Account"),
      h("p", {}, `${community.user.display_name} (${community.user.role})`, h("br"), community.user.email ?? ""),
      notice("Signing out keeps what you wrote on this device; it is sent when you sign in again."),
      h("div", { className: "actions" }, button("Sign out", () => signOut(), { className: "secondary" })),
    ),
  );
}

/** Managers and hosts: how and when members can reach them ("Contact the team" shows it). */
function contactCard(screen: Screen): HTMLElement | null {
  const { user } = screen.community;
  if (user.role !== "manager" && user.role !== "host") return null;
  const text = h("textarea", { name: "contact_card", rows: 4, maxLength: 2000 });
  const result = h("p", { role: "status", className: "note" });
  void team().then(members => {
    const mine = members.find(member => member.id === user.id);
    if (mine?.contact_card && !text.value) text.value = mine.contact_card;
  });
  const save = h("button", { type: "submit" }, "Save my contact card");
  const form = h("form", { className: "card" }, h("h3", {}, "My contact card"), labelled("How and when members can reach you", text), h("div", { className: "actions" }, save), result);
  form.addEventListener("submit", event => {
    event.preventDefault();
    save.disabled = true;
    api("PUT", "/api/me/contact-card", { text: text.value })
      .then(() => {
        result.textContent = "Saved: members see it under “Contact the team”.";
      })
      .catch((error: unknown) => {
        result.textContent = error instanceof ApiError ? error.message : "Saving needs a connection to the server.";
      })
      .finally(() => {
        save.disabled = false;
      });
  });
  return form;
}
