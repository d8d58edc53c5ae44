// What every screen gets: the user's documents, a place to draw, and a way
// to stop listening to documents when the user moves on.

import type { DocHandle } from "@automerge/automerge-repo";

import type { Community } from "./store";
import { h, notice, textOf } from "./ui";

export interface Screen {
  community: Community;
  view: HTMLElement;
  /** Runs when the user leaves this screen. */
  onLeave(cleanup: () => void): void;
  /** Redraws `draw` now and whenever `handle` changes, until the user leaves. */
  follow<T>(handle: DocHandle<T>, draw: () => void): void;
  /** Shows the screen `hash` names; `replace` keeps Back from returning here. */
  go(hash: string, replace?: boolean): void;
}

/** Opens a document for a screen, or explains why it cannot be shown. */
export async function openOrExplain<T>(screen: Screen, id: string, what: string, type: string): Promise<DocHandle<T> | null> {
  try {
    const handle = await screen.community.open<T>(id);
    const doc = handle.doc() as { type?: unknown } | undefined;
    if (doc && textOf(doc.type) === type) return handle;
  } catch {
    // unavailable: not on this device and the server has none we may read
  }
  screen.view.replaceChildren(
    h("h2", {}, `This ${what} is not available`),
    notice(navigator.onLine ? `It does not exist, or you may not read it.` : `It is not on this device yet; it opens once you are online.`),
    h("a", { href: "#/" }, "Back to the community"),
  );
  return null;
}
