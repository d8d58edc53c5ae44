// The JSON API (SPEC §2) with the session kept in localStorage: access
// tokens are refreshed before they expire and on a 401, so an open app
// stays signed in for the refresh token's 30 days.

export interface User {
  id: string;
  email?: string;
  display_name: string;
  role: "member" | "host" | "manager";
  created_at: number;
}

interface Session {
  user: User;
  access_token: string;
  refresh_token: string;
  /** When the access token expires, in ms since the epoch. */
  expires_at: number;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const KEY = "backchannel.session";

function load(): Session | null {
  try {
    const text = localStorage.getItem(KEY);
    return text ? (JSON.parse(text) as Session) : null;
  } catch {
    return null;
  }
}

/** Why the session changed: a sign-in, a background refresh, or its end. */
export type SessionEvent = "signed-in" | "refreshed" | "signed-out" | "expired";

let session: Session | null = load();
const listeners = new Set<(user: User | null, event: SessionEvent) => void>();
let refreshTimer: ReturnType<typeof setTimeout> | undefined;

function save(next: Session | null, event: SessionEvent): void {
  if (next) localStorage.setItem(KEY, JSON.stringify(next));
  else localStorage.removeItem(KEY);
  adopt(next, event);
}

function adopt(next: Session | null, event: SessionEvent): void {
  session = next;
  scheduleRefresh();
  for (const listener of listeners) listener(next?.user ?? null, event);
}

// Another tab or window (the installed app beside a browser tab) signed in,
// out, or refreshed: follow it, or this one would present a refresh token
// already used, which ends the session (SPEC §2).
addEventListener("storage", event => {
  if (event.key !== KEY && event.key !== null) return;
  const next = load();
  const before = session?.user.id;
  if (next?.access_token === session?.access_token) return;
  adopt(next, !next ? "signed-out" : next.user.id === before ? "refreshed" : "signed-in");
});

/**
 * Refreshes the access token a minute before it expires, so a reconnecting
 * sync connection always has a valid one; a failure (offline) tries again
 * 30 s later or when the network returns.
 */
function scheduleRefresh(): void {
  clearTimeout(refreshTimer);
  if (!session) return;
  const due = Math.max(0, session.expires_at - Date.now() - 60_000);
  refreshTimer = setTimeout(() => {
    refresh().catch(() => {
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(scheduleRefresh, 30_000);
    });
  }, due);
}
addEventListener("online", () => {
  if (session && session.expires_at - Date.now() < 60_000) scheduleRefresh();
});
scheduleRefresh();

/** The access token as it is now (possibly expired), for building a sync URL. */
export function currentToken(): string | null {
  return session?.access_token ?? null;
}

/** Whether the access token is still valid for a while. */
export function tokenIsFresh(): boolean {
  return !!session && session.expires_at - Date.now() > 30_000;
}

export function currentUser(): User | null {
  return session?.user ?? null;
}

export function onSessionChange(listener: (user: User | null, event: SessionEvent) => void): void {
  listeners.add(listener);
}

async function call(method: string, path: string, body?: unknown, token?: string): Promise<unknown> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  const parsed: unknown = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = (parsed as { error?: { code?: string; message?: string } } | null)?.error;
    throw new ApiError(response.status, error?.code ?? "error", error?.message ?? `the server answered ${response.status}`);
  }
  return parsed;
}

function signedIn(answer: unknown, event: SessionEvent = "signed-in"): User {
  const a = answer as { user: User; access_token: string; refresh_token: string; expires_in: number };
  save({ user: a.user, access_token: a.access_token, refresh_token: a.refresh_token, expires_at: Date.now() + a.expires_in * 1000 }, event);
  return a.user;
}

export async function register(email: string, password: string, displayName: string): Promise<User> {
  return signedIn(await call("POST", "/api/auth/register", { email, password, display_name: displayName }));
}

export async function login(email: string, password: string): Promise<User> {
  return signedIn(await call("POST", "/api/auth/login", { email, password }));
}

let refreshing: Promise<void> | null = null;

/** A fresh access token; refreshes it (once, shared) when it is about to expire. */
export async function accessToken(): Promise<string> {
  if (!session) throw new ApiError(401, "signed_out", "sign in first");
  if (session.expires_at - Date.now() < 60_000) await refresh();
  if (!session) throw new ApiError(401, "signed_out", "sign in first");
  return session.access_token;
}

/** Runs `task` while no other tab refreshes the same session. */
function exclusively(task: () => Promise<void>): Promise<void> {
  return navigator.locks ? navigator.locks.request("backchannel-refresh", task).then(() => undefined) : task();
}

export function refresh(): Promise<void> {
  refreshing ??= exclusively(async () => {
    const before = session;
    const current = load();
    if (!current) return;
    if (before && current.user.id === before.user.id && current.refresh_token !== before.refresh_token) {
      // Another tab refreshed it while this one waited.
      adopt(current, "refreshed");
      return;
    }
    try {
      const answer = await call("POST", "/api/auth/refresh", { refresh_token: current.refresh_token });
      signedIn(answer, "refreshed");
    } catch (error) {
      // Only a refusal ends the session; a network error keeps it for later.
      if (error instanceof ApiError && error.status === 401) save(null, "expired");
      else throw error;
    }
  }).finally(() => {
    refreshing = null;
  });
  return refreshing;
}

/** An authenticated call; refreshes once and retries on a 401. */
export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  try {
    return (await call(method, path, body, await accessToken())) as T;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401 && session) {
      await refresh();
      return (await call(method, path, body, await accessToken())) as T;
    }
    throw error;
  }
}

export function signOut(): void {
  const token = session?.access_token;
  save(null, "signed-out");
  if (token) void call("POST", "/api/auth/logout", undefined, token).catch(() => undefined);
}
