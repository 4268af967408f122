// Hello-world Node.js cluster: the seed example, used as a benchmark peer.
// Usage: node hello_cluster.js [workers]   (or WORKERS=n)
// Env: PORT (default 8000), HOST (default 127.0.0.1),
//      NODE_CLUSTER_SCHED_POLICY=rr|none (read by Node itself).
// Prints "ready <port> <workers> <policy>" once every worker listens.
// SIGTERM/SIGINT: the primary kills its workers, waits for them, and exits 0.
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');

const port = Number(process.env.PORT || 8000);
const host = process.env.HOST || '127.0.0.1';

if (cluster.isPrimary) {
  const n = Number(process.argv[2] || process.env.WORKERS || 2);
  const policy = cluster.schedulingPolicy === cluster.SCHED_RR ? 'rr' : 'none';
  let listening = 0;
  let stopping = false;
  for (let i = 0; i < n; i++) cluster.fork();
  cluster.on('listening', () => {
    if (++listening === n) console.log(`ready ${port} ${n} ${policy}`);
  });
  cluster.on('exit', (w, code, signal) => {
    if (!stopping) console.error(`worker ${w.process.pid} died (${signal || code})`);
    if (stopping && Object.keys(cluster.workers).length === 0) process.exit(0);
  });
  const stop = () => {
    if (stopping) return;
    stopping = true;
    const live = Object.values(cluster.workers);
    if (live.length === 0) process.exit(0);
    for (const w of live) w.process.kill('SIGTERM');
    setTimeout(() => {
      for (const w of Object.values(cluster.workers)) w.process.kill('SIGKILL');
      process.exit(0);
    }, 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  process.on('SIGINT', () => {}); // the primary decides when we stop
  http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('hello world\n');
  }).listen(port, host);
}
