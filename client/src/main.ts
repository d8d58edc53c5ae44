// Placeholder until the PWA issue: shows that the page is served by a live server.
const serverStatus = document.getElementById("server-status");

async function checkServer(): Promise<void> {
  if (!serverStatus) return;
  try {
    const response = await fetch("/healthz");
    const body: unknown = await response.json();
    const ok = typeof body === "object" && body !== null && (body as { status?: unknown }).status === "ok";
    serverStatus.textContent = ok ? "The server is up." : "The server answered, but not as expected.";
  } catch {
    serverStatus.textContent = "The server cannot be reached.";
  }
}

void checkServer();

// The service worker keeps the app shell, so the app opens with no network.
if ("serviceWorker" in navigator) {
  window.addEventListener("load", () => {
    navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch((error: unknown) => {
      console.warn("the service worker could not be registered", error);
    });
  });
}
export {};
