// A small, unmodified-by-refreshbus app in another language: serves its JSON config.
//
//   node config-server.js <port> <config.json>
//
// GET  /              -> {"config": <parsed file>, "loads": n, "pid": pid}
// GET  /healthz       -> 200 "ok"
// POST /-/reload      -> re-reads the file: 200, or 500 if it is not valid JSON (old config kept)
// POST /-/reload-slow -> waits 5 s, then like /-/reload (to test reload timeouts)
// SIGHUP              -> re-reads the file (an invalid file keeps the old config)
'use strict';
const http = require('http');
const fs = require('fs');

const port = Number(process.argv[2]);
const file = process.argv[3];
let config = null;
let loads = 0;

function load() {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    return `cannot read ${file}: ${err.code}`;
  }
  try {
    config = JSON.parse(text);
  } catch (err) {
    return `invalid JSON in ${file}: ${err.message}`;
  }
  loads += 1;
  return null;
}

load();
process.on('SIGHUP', () => {
  const err = load();
  console.log(err ? `reload failed: ${err}` : `reloaded (${loads})`);
});
process.on('SIGTERM', () => process.exit(0));

function reload(res) {
  const err = load();
  res.writeHead(err ? 500 : 200, {'Content-Type': 'text/plain'});
  res.end(err ? err + '\n' : 'reloaded\n');
}

http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, {'Content-Type': 'text/plain'});
    res.end('ok\n');
  } else if (req.url === '/-/reload' && req.method === 'POST') {
    reload(res);
  } else if (req.url === '/-/reload-slow' && req.method === 'POST') {
    setTimeout(() => reload(res), 5000);
  } else if (req.url === '/' && req.method === 'GET') {
    res.writeHead(200, {'Content-Type': 'application/json'});
    res.end(JSON.stringify({config, loads, pid: process.pid}) + '\n');
  } else {
    res.writeHead(404);
    res.end();
  }
}).listen(port, '127.0.0.1', () => console.log(`listening on ${port}`));
