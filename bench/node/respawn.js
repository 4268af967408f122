// Node.js worker start-up latency, sequential, median of N (default 20).
// Usage: node respawn.js [n]   Env: PORT (default 0 = any free port).
// fork: cluster.fork() -> 'online' and -> 'listening'.
// kill: SIGKILL of a listening worker -> replacement 'listening' (forked on 'exit').
// Prints one JSON line with medians and all samples in ms.
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');

const n = Number(process.argv[2] || process.env.FORKS || 20);
const ms = () => Number(process.hrtime.bigint()) / 1e6;
const median = (a) => { const s = [...a].sort((x, y) => x - y); const k = s.length >> 1; return s.length % 2 ? s[k] : (s[k - 1] + s[k]) / 2; };
const round = (a) => a.map((x) => Math.round(x * 100) / 100);

if (cluster.isPrimary) {
  const online = [], listening = [], killed = [];
  const forkOne = (record) => new Promise((resolve) => {
    const t0 = ms();
    const w = cluster.fork();
    w.once('online', () => record && online.push(ms() - t0));
    w.once('listening', () => { if (record) listening.push(ms() - t0); resolve(w); });
  });
  const exited = (w) => new Promise((resolve) => w.once('exit', resolve));
  (async () => {
    for (let i = 0; i < n; i++) {
      const w = await forkOne(true);
      w.process.kill('SIGTERM');
      await exited(w);
    }
    let w = await forkOne(false);
    for (let i = 0; i < n; i++) {
      const t0 = ms();
      const gone = exited(w);
      w.process.kill('SIGKILL');
      await gone;
      w = cluster.fork();
      await new Promise((resolve) => w.once('listening', resolve));
      killed.push(ms() - t0);
    }
    w.process.kill('SIGTERM');
    await exited(w);
    console.log(JSON.stringify({
      node: process.version, n,
      fork_online_ms: median(online), fork_listening_ms: median(listening),
      kill_listening_ms: median(killed),
      samples: { online: round(online), listening: round(listening), kill: round(killed) },
    }));
  })();
  setTimeout(() => { console.error('respawn.js: timed out'); process.exit(1); }, 120000).unref();
} else {
  http.createServer((req, res) => res.end('ok\n')).listen(Number(process.env.PORT || 0), '127.0.0.1');
}
