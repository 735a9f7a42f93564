// A small, unmodified-by-refreshbus app in another language: serves its JSON config.
//
//   node config-server.js <port> <config.json>
//
// GET  /              -> {"config": <parsed file>, "loads": n, "pid": pid}
// GET  /healthz       -> 200 "ok"; 503 while the config says "healthy": false
// POST /-/reload      -> re-reads the file: 200, or 500 if it is not valid JSON (old config kept)
// POST /-/reload-slow -> waits 5 s, then like /-/reload (to test reload timeouts)
// SIGHUP              -> re-reads the file (an invalid file keeps the old config)
//
// With CONFIG_SERVER_JOURNAL=<file> (the chaos suite) every load is also checked and
// recorded, one JSON line each: {"n", "why", "at", "version", "hash", "torn"}. The app then
// reads the way the sidecar's docs tell apps with several files to: it resolves the
// directory's `..data` once and reads everything from that one version directory. The
// config may name companion files with their SHA-256 (`"parts": {"part-0.txt": "<hex>"}`);
// a part that is missing, short or from another version makes the load "torn" (the read
// is recorded with what was wrong, and the old config is kept).
'use strict';
const http = require('http');
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const port = Number(process.argv[2]);
const file = process.argv[3];
const journal = process.env.CONFIG_SERVER_JOURNAL || '';
let config = null;
let loads = 0;

function sha256(data) {
  return crypto.createHash('sha256').update(data).digest('hex');
}

// The directory a consistent read happens in: `..data` resolved once, or the file's own
// directory when it is not a sidecar-managed one.
function versionDir() {
  const dir = path.dirname(file);
  try {
    return fs.realpathSync(path.join(dir, '..data'));
  } catch (err) {
    return dir;
  }
}

// Reads the config and its parts from one version directory: [text, parsed, torn reason].
// ENOENT means the sidecar pruned that version between our resolve and our read (two swaps
// in a row): resolve again, as any reader of an atomic-writer volume has to.
function readConsistent() {
  let lastErr = null;
  for (let attempt = 0; attempt < 20; attempt++) {
    const dir = versionDir();
    try {
      const text = fs.readFileSync(path.join(dir, path.basename(file)), 'utf8');
      let parsed;
      try {
        parsed = JSON.parse(text);
      } catch (err) {
        return [text, null, `invalid JSON: ${err.message}`];
      }
      const problems = [];
      for (const [name, want] of Object.entries(parsed.parts || {})) {
        const data = fs.readFileSync(path.join(dir, name));
        if (sha256(data) !== want) {
          problems.push(`${name}: ${data.length} bytes, not the content config.json names`);
        }
      }
      return [text, parsed, problems.length ? problems.join('; ') : null];
    } catch (err) {
      if (err.code !== 'ENOENT') return [null, null, `cannot read: ${err.code}`];
      lastErr = err;
    }
  }
  return [null, null, `cannot read: ${lastErr.code}`];
}

function record(why, text, parsed, torn) {
  const entry = {
    n: loads, why, at: Date.now() / 1000, version: parsed ? parsed.version ?? null : null,
    hash: text === null ? null : sha256(text), torn,
  };
  fs.appendFileSync(journal, JSON.stringify(entry) + '\n');
}

function load(why) {
  if (journal) {
    const [text, parsed, torn] = readConsistent();
    if (!torn) {
      config = parsed;
      loads += 1;
    }
    record(why, text, parsed, torn);
    return torn;
  }
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

load('start');
process.on('SIGHUP', () => {
  const err = load('SIGHUP');
  console.log(err ? `reload failed: ${err}` : `reloaded (${loads})`);
});
process.on('SIGTERM', () => process.exit(0));

function reload(res) {
  const err = load('http');
  res.writeHead(err ? 500 : 200, {'Content-Type': 'text/plain'});
  res.end(err ? err + '\n' : 'reloaded\n');
}

http.createServer((req, res) => {
  if (req.url === '/healthz') {
    const sick = config !== null && config.healthy === false;
    res.writeHead(sick ? 503 : 200, {'Content-Type': 'text/plain'});
    res.end(sick ? 'config says unhealthy\n' : 'ok\n');
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
