// The stock automerge-repo sync server, as the reference the Backchannel
// server is compared against. Modelled on automerge-repo's
// examples/sync-server (an HTTP server whose upgrade requests go to a `ws`
// WebSocketServer, a NodeFS-backed Repo that does not share generously),
// minus express and the metrics endpoint.
//
// Usage: node lib/reference-server.mjs --data <dir> [--port 0] [--host 127.0.0.1]
// Prints one JSON line on stdout once it listens: {"port": N, "pid": N}.
// Stops cleanly on SIGTERM / SIGINT (flushes the repo to disk, exits 0).

import fs from "node:fs"
import http from "node:http"
import { parseArgs } from "node:util"
import { WebSocketServer } from "ws"
import { Repo } from "@automerge/automerge-repo"
import { WebSocketServerAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"

const { values } = parseArgs({
  options: {
    data: { type: "string" },
    port: { type: "string", default: "0" },
    host: { type: "string", default: "127.0.0.1" },
  },
})
if (!values.data) {
  console.error("usage: reference-server.mjs --data <dir> [--port N] [--host H]")
  process.exit(2)
}
fs.mkdirSync(values.data, { recursive: true })

const wss = new WebSocketServer({ noServer: true })
const repo = new Repo({
  network: [new WebSocketServerAdapter(wss)],
  storage: new NodeFSStorageAdapter(values.data),
  peerId: "storage-server-bench",
  // A server only syncs documents that a peer asks for by id.
  sharePolicy: async () => false,
})

const server = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/plain" })
  res.end("automerge-repo reference sync server is running\n")
})
server.on("upgrade", (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, ws => {
    wss.emit("connection", ws, request)
  })
})

server.listen(Number(values.port), values.host, () => {
  const { port } = server.address()
  process.stdout.write(JSON.stringify({ port, pid: process.pid }) + "\n")
})

let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  try {
    wss.close() // also makes the adapter terminate every socket
    server.close()
    server.closeAllConnections?.()
    await repo.flush()
  } finally {
    process.exit(0)
  }
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
