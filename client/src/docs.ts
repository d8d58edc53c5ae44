// The SPEC §4 document shapes as the app reads and writes them, and the
// changes it makes. Strings are automerge Text (the stock library's default).

export type DocId = string;

export interface Reply {
  id: string;
  author: string;
  created_at: number;
  body: string;
  deleted?: boolean;
}

export interface PostDoc {
  type: "post";
  schema: 1;
  author: string;
  created_at: number;
  status: "draft" | "published" | "hidden";
  title: string;
  body: string;
  locked?: boolean;
  anonymous?: boolean;
  replies: Reply[];
}

export type Kind = "question" | "report" | "flag" | "idea" | "story" | "direct";

export interface Message {
  id: string;
  author: string;
  created_at: number;
  body: string;
}

export interface ConversationDoc {
  type: "conversation";
  schema: 1;
  kind: Kind;
  opener: string;
  members: string[];
  subject: string;
  about?: { post?: DocId; user?: string };
  created_at: number;
  messages: Message[];
  state: "open" | "resolved";
  tags: string[];
  assignee?: string;
  publish?: { consent: boolean; anonymous: boolean };
}

export interface DraftItem {
  target?: DocId;
  kind: string;
  title?: string;
  body: string;
  updated_at: number;
  /** A "Not sent" item (unsent.ts): the rule the server named, what it was, its id in the refused copy. */
  rule?: string;
  what?: string;
  item_id?: string;
}

export interface DraftsDoc {
  type: "drafts";
  schema: 1;
  owner: string;
  items: Record<string, DraftItem>;
  mine: Record<DocId, { type: "post" | "conversation"; created_at: number }>;
}

export interface IndexEntry {
  title: string;
  author: string;
  author_name: string;
  created_at: number;
  last_activity: number;
  reply_count: number;
}

export interface IndexDoc {
  type: "index";
  posts: Record<DocId, IndexEntry>;
  /** Set on an index the server replaced (it is rebuilt when a post leaves it): the current one. */
  moved_to?: string;
}

export interface DirectoryDoc {
  type: "directory";
  users: Record<string, { display_name: string; role: string }>;
}

export interface InboxEntry {
  subject: string;
  kind: Kind;
  state: "open" | "resolved";
  last_activity: number;
  last_author: string;
}

export interface InboxDoc {
  type: "inbox";
  owner: string;
  conversations: Record<DocId, InboxEntry>;
}

/** The server's limit on a post's, reply's or message's body (docs/RULES.md). */
export const BODY_CHARS = 20_000;

export const KIND_NAMES: Record<Kind, string> = {
  question: "Question",
  report: "Report about a member",
  flag: "Flagged conversation",
  idea: "Idea",
  story: "Story",
  direct: "Direct message",
};

/** A random id for a reply or message (unique within its list). */
export function itemId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(9));
  return Array.from(bytes, byte => byte.toString(16).padStart(2, "0")).join("");
}

export function newPost(author: string): PostDoc {
  return { type: "post", schema: 1, author, created_at: Date.now(), status: "draft", title: "", body: "", replies: [] };
}

export function newConversation(opener: string, kind: Kind, subject: string, body: string, about?: ConversationDoc["about"]): ConversationDoc {
  const now = Date.now();
  const doc: ConversationDoc = {
    type: "conversation",
    schema: 1,
    kind,
    opener,
    members: [opener],
    subject,
    created_at: now,
    messages: [{ id: itemId(), author: opener, created_at: now, body }],
    state: "open",
    tags: [],
  };
  if (about) doc.about = about;
  return doc;
}

/** Items sorted the way every client shows them: by time, then id. */
export function chronological<T extends { created_at: number; id: string }>(items: readonly T[]): T[] {
  return [...items].sort((a, b) => Number(a.created_at) - Number(b.created_at) || String(a.id).localeCompare(String(b.id)));
}
