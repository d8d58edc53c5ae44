// Web Push in the app (SPEC §6): permission is asked only after the user
// turns notifications on; the subscription is made with the server's VAPID
// key and registered with the server. A push service that never answers
// must not freeze the app, so subscribe() races a timeout.

import { api } from "./api";

const SUBSCRIBE_TIMEOUT_MS = 15_000;
const ENABLED_KEY = "backchannel.notifications";

export function pushSupported(): boolean {
  return "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;
}

export function notificationsWanted(): boolean {
  return localStorage.getItem(ENABLED_KEY) === "on";
}

function base64UrlToBytes(text: string): Uint8Array<ArrayBuffer> {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const raw = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
  return Uint8Array.from(raw, char => char.charCodeAt(0));
}

function sameKey(held: ArrayBuffer | null, wanted: Uint8Array): boolean {
  if (!held) return false;
  const bytes = new Uint8Array(held);
  return bytes.length === wanted.length && bytes.every((byte, i) => byte === wanted[i]);
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms / 1000} s; try again later`)), ms);
    promise.then(
      value => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}

async function register(subscription: PushSubscription): Promise<void> {
  await api("POST", "/api/push/subscriptions", subscription.toJSON());
}

/** Turns notifications on for this device. Must run from a user action. */
export async function enableNotifications(): Promise<void> {
  if (!pushSupported()) throw new Error("This browser cannot show notifications from Backchannel.");
  const permission = await Notification.requestPermission();
  if (permission !== "granted") throw new Error("Notifications are blocked for this site; allow them in the browser's settings.");
  const registration = await withTimeout(navigator.serviceWorker.ready, SUBSCRIBE_TIMEOUT_MS, "The app's service worker");
  const { public_key } = await api<{ public_key: string }>("GET", "/api/push/public-key");
  const key = base64UrlToBytes(public_key);
  let existing = await registration.pushManager.getSubscription();
  if (existing && !sameKey(existing.options.applicationServerKey, key)) {
    // Made for another server key (the server's was replaced): start again.
    await existing.unsubscribe().catch(() => undefined);
    existing = null;
  }
  const subscription =
    existing ??
    (await withTimeout(
      registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key }),
      SUBSCRIBE_TIMEOUT_MS,
      "The browser's push service",
    ));
  await register(subscription);
  localStorage.setItem(ENABLED_KEY, "on");
}

export async function disableNotifications(): Promise<void> {
  localStorage.setItem(ENABLED_KEY, "off");
  if (!pushSupported()) return;
  const registration = await navigator.serviceWorker.getRegistration();
  const subscription = await registration?.pushManager.getSubscription();
  if (!subscription) return;
  await api("DELETE", "/api/push/subscriptions", { endpoint: subscription.endpoint }).catch(() => undefined);
  await subscription.unsubscribe();
}

/**
 * Registers this device's current subscription again (at start, and when the
 * service worker reports a `pushsubscriptionchange`): the server forgets
 * subscriptions when a session ends or a push service drops them.
 */
export async function refreshSubscription(): Promise<void> {
  if (!pushSupported() || !notificationsWanted() || Notification.permission !== "granted") return;
  const registration = await navigator.serviceWorker.getRegistration();
  const subscription = await registration?.pushManager.getSubscription();
  if (subscription) await register(subscription);
}
