// Small DOM helpers: building elements, and text boxes that write what is
// typed into an automerge document as it is typed (so a reload, a crash or a
// closed tab keeps it).

import type { DocHandle } from "@automerge/automerge-repo";
import { updateText } from "@automerge/automerge/slim";

type Child = Node | string | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, props: Partial<HTMLElementTagNameMap[K]> & Record<string, unknown> = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key.startsWith("aria") || key.startsWith("data-") || key === "for" || key === "role") node.setAttribute(key === "ariaLabel" ? "aria-label" : key === "ariaCurrent" ? "aria-current" : key, String(value));
    else (node as unknown as Record<string, unknown>)[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
}

export function button(label: string, onClick: (event: MouseEvent) => void, props: Partial<HTMLButtonElement> & Record<string, unknown> = {}): HTMLButtonElement {
  const node = h("button", { type: "button", ...props }, label);
  node.addEventListener("click", onClick);
  return node;
}

/** A labelled control: the label's text is the control's accessible name. */
export function labelled(text: string, control: HTMLElement, hint?: string): HTMLLabelElement {
  return h("label", {}, h("span", {}, text), control, hint ? h("small", { className: "hint" }, hint) : null);
}

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function timeText(ms: number): string {
  return Number.isFinite(ms) ? timeFormat.format(ms) : "";
}

export function when(ms: number): HTMLTimeElement {
  const at = Number(ms);
  return h("time", { dateTime: Number.isFinite(at) ? new Date(at).toISOString() : "" }, timeText(at));
}

/** Shows a short message that screen readers announce. */
export function notice(text: string, kind: "info" | "error" = "info"): HTMLParagraphElement {
  return h("p", { role: kind === "error" ? "alert" : "status", className: kind === "error" ? "error" : "note" }, text);
}

type Path = (string | number)[];

function readAt(value: unknown, path: Path): unknown {
  let at = value;
  for (const key of path) at = at === null || at === undefined ? undefined : (at as Record<string | number, unknown>)[key];
  return at;
}

/** Where a typed value is also written synchronously (see Community.journal). */
export interface TypingJournal {
  write(documentId: string, path: Path, value: string, parentInit?: Record<string, unknown>): void;
}

/** Sets `path` to `value` in `doc`, creating the parent from `parentInit` when missing. */
export function writeText(doc: unknown, path: Path, value: string, parentInit?: Record<string, unknown>): void {
  const parentPath = path.slice(0, -1);
  const field = path[path.length - 1] as string | number;
  let parent = readAt(doc, parentPath) as Record<string | number, unknown> | undefined;
  if (!parent && parentInit) {
    (readAt(doc, parentPath.slice(0, -1)) as Record<string | number, unknown>)[parentPath[parentPath.length - 1] as string | number] = { ...parentInit };
    parent = readAt(doc, parentPath) as Record<string | number, unknown>;
  }
  if (!parent) return;
  if (parentInit && "updated_at" in parentInit) parent.updated_at = Date.now();
  if (typeof parent[field] !== "string") parent[field] = "";
  updateText(doc as never, path, value);
}

/**
 * Binds a text box to a Text field of a document: each keystroke is an
 * automerge change (kept in IndexedDB, synced when online), and edits from
 * other devices show up as they arrive. `parentInit` creates the field's
 * parent (a drafts item) when it is missing.
 */
export function bindText<T>(journal: TypingJournal, handle: DocHandle<T>, path: Path, control: HTMLInputElement | HTMLTextAreaElement, parentInit?: Record<string, unknown>): () => void {
  const show = (): void => {
    const text = readAt(handle.doc(), path);
    // Nothing kept yet: leave what the screen put there (a suggested subject).
    if (typeof text !== "string" || control.value === text) return;
    // Another device edited it: keep the caret where it was as far as possible.
    const focused = document.activeElement === control;
    const [start, end] = [control.selectionStart ?? 0, control.selectionEnd ?? 0];
    control.value = text;
    if (focused) control.setSelectionRange(Math.min(start, text.length), Math.min(end, text.length));
  };
  const write = (): void => {
    const value = control.value;
    journal.write(handle.documentId, path, value, parentInit);
    handle.change(doc => writeText(doc, path, value, parentInit));
  };
  control.addEventListener("input", write);
  handle.on("change", show);
  show();
  return () => handle.off("change", show);
}

/**
 * A field as a string: Text reads as a string in JS, but a plain string
 * written by another client reads as an ImmutableString object (SPEC §4: treat
 * both alike).
 */
export function textOf(value: unknown): string {
  if (typeof value === "string") return value;
  if (value === undefined || value === null) return "";
  const immutable = (value as { val?: unknown }).val;
  return typeof immutable === "string" ? immutable : String(value);
}
