import { defineConfig } from "vite";

// The server embeds dist/ into the `backchannel` binary; /api and /sync are
// proxied in `npm run dev` so the app can be developed against a running server.
export default defineConfig({
  build: { outDir: "dist", emptyOutDir: true, target: "es2022" },
  server: {
    proxy: {
      "/api": "http://127.0.0.1:8080",
      "/healthz": "http://127.0.0.1:8080",
      "/sync": { target: "ws://127.0.0.1:8080", ws: true },
    },
  },
});
