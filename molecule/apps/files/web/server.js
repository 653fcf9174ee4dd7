// node server.js: serves the built page at / and a health check at /healthz,
// on $HOST:$PORT (set by the app_service unit).
"use strict";
const fs = require("fs");
const http = require("http");
const path = require("path");

const page = fs.readFileSync(path.join(__dirname, "build", "index.html"));
// The release id app_service writes into every release.
const release = fs.readFileSync(path.join(__dirname, "RELEASE_ID"), "utf8").trim();
let stopping = false;
const server = http.createServer((req, res) => {
  if (stopping) res.setHeader("Connection", "close");
  if (req.url === "/healthz") {
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ status: "ok", release, node: process.version }));
  } else if (req.url === "/") {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
    res.end(page);
  } else {
    res.writeHead(404);
    res.end();
  }
});
server.listen(Number(process.env.PORT || 3000), process.env.HOST || "127.0.0.1");
// Graceful stop: finish the requests in flight and close the keep-alive
// connections Caddy holds (Node 18's server.close() waits for them, so the
// stop would last until systemd's TimeoutStopSec otherwise).
process.on("SIGTERM", () => {
  stopping = true;
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
