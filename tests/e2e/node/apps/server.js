// Demo Node.js app for the end-to-end suite (unmodified by refreshbus): serves the JSON
// file named by $CONFIG_FILE (default /etc/demo/config/config.json), re-read on SIGHUP or
// on POST /-/reload (500, old config kept, if the file is not valid JSON).
// Fault injection for the suite: POST /-/fail-reloads makes every later reload answer 500;
// a config with "healthy": false makes /healthz (the readiness probe) answer 503;
// POST /-/reload-slow reloads like /-/reload after $RELOAD_SLOW_MS (default 3000) ms, which
// keeps a round in flight (under the sidecar's default 5 s reload timeout).
'use strict';
const http = require('http');
const fs = require('fs');

const file = process.env.CONFIG_FILE || '/etc/demo/config/config.json';
const port = Number(process.env.PORT || 8080);
let config = null;
let loads = 0;
let failReloads = false;
const slowMs = Number(process.env.RELOAD_SLOW_MS || 3000);

function load() {
  try {
    config = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    return `cannot load ${file}: ${err.message}`;
  }
  loads += 1;
  return null;
}

const first = load();
if (first) console.log(first);
process.on('SIGHUP', () => {
  const err = load();
  console.log(err ? `reload failed: ${err}` : `reloaded (${loads})`);
});
process.on('SIGTERM', () => process.exit(0));

function reload(res) {
  const err = failReloads ? 'reloads are set to fail' : load();
  res.writeHead(err ? 500 : 200, {'Content-Type': 'text/plain'});
  res.end(err ? err + '\n' : 'reloaded\n');
}

http.createServer((req, res) => {
  if (req.url === '/healthz') {
    const healthy = !(config && config.healthy === false);
    res.writeHead(healthy ? 200 : 503, {'Content-Type': 'text/plain'});
    res.end(healthy ? 'ok\n' : 'unhealthy: the config says "healthy": false\n');
  } else if (req.url === '/-/fail-reloads' && req.method === 'POST') {
    failReloads = true;
    res.writeHead(200, {'Content-Type': 'text/plain'});
    res.end('reloads will fail\n');
  } else if (req.url === '/-/reload' && req.method === 'POST') {
    reload(res);
  } else if (req.url === '/-/reload-slow' && req.method === 'POST') {
    setTimeout(() => reload(res), slowMs);
  } else {
    res.writeHead(200, {'Content-Type': 'application/json'});
    res.end(JSON.stringify({config, loads, pid: process.pid}) + '\n');
  }
}).listen(port, '0.0.0.0', () => console.log(`listening on ${port}, config ${file}`));
