import { createHash } from "node:crypto";
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { defineConfig, type Plugin } from "vite";
import wasm from "vite-plugin-wasm";

/** Every file under `dir`, as a URL path. */
function publicFiles(dir: string): string[] {
  const found: string[] = [];
  const walk = (at: string): void => {
    for (const name of readdirSync(at)) {
      const path = join(at, name);
      if (statSync(path).isDirectory()) walk(path);
      else found.push("/" + relative(dir, path).split("\\").join("/"));
    }
  };
  walk(dir);
  return found;
}

/**
 * Emits /sw.js from sw/sw.js with the list of files to precache (the build's
 * own output and everything in public/) and a version derived from them, so a
 * new build installs a new service worker.
 */
function serviceWorker(): Plugin {
  return {
    name: "backchannel-service-worker",
    apply: "build",
    generateBundle(_options, bundle) {
      const files = ["/", "/index.html", ...publicFiles("public"), ...Object.keys(bundle).map(name => `/${name}`)]
        .filter((file, index, all) => all.indexOf(file) === index && file !== "/sw.js")
        .sort();
      const version = createHash("sha256").update(files.join("\n")).digest("hex").slice(0, 16);
      const source = readFileSync("sw/sw.js", "utf8")
        .replace("self.__PRECACHE__", JSON.stringify(files))
        .replace("self.__VERSION__", JSON.stringify(version));
      this.emitFile({ type: "asset", fileName: "sw.js", source });
    },
  };
}

// The server embeds dist/ into the `backchannel` binary; /api and /sync are
// proxied in `npm run dev` so the app can be developed against a running server.
export default defineConfig({
  plugins: [wasm(), serviceWorker()],
  build: { outDir: "dist", emptyOutDir: true, target: "es2022" },
  server: {
    proxy: {
      "/api": "http://127.0.0.1:8080",
      "/healthz": "http://127.0.0.1:8080",
      "/sync": { target: "ws://127.0.0.1:8080", ws: true },
    },
  },
});
