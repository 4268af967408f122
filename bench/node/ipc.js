// Node.js cluster IPC between the primary and one worker, small objects.
// Usage: node ipc.js [seconds]   (default 3 per phase)
// Phases: round trips (primary sends, worker echoes, next on reply);
// one-way worker->primary and primary->worker streams (sender respects
// back-pressure; rate measured at the receiver). Prints one JSON line.
'use strict';
const cluster = require('node:cluster');

const secs = Number(process.argv[2] || process.env.IPC_SECONDS || 3);
const now = () => Number(process.hrtime.bigint()) / 1e9;

// Send as fast as the channel allows until stop() says so.
function flood(send, isStopped) {
  let seq = 0;
  const pump = () => {
    while (!isStopped()) {
      const more = send({ t: 'm', seq: seq++, v: 'x' }, (err) => { if (!more && !err) setImmediate(pump); });
      if (!more) return;
      if ((seq & 1023) === 0) { setImmediate(pump); return; }
    }
  };
  pump();
}

if (cluster.isPrimary) {
  const w = cluster.fork();
  const out = { node: process.version, seconds: secs };
  let phase = null;
  let count = 0;
  let t0 = 0;
  const phases = ['roundtrip', 'w2p', 'p2w'];
  const next = () => {
    phase = phases.shift();
    count = 0;
    if (!phase) {
      console.log(JSON.stringify(out));
      w.disconnect();
      return;
    }
    t0 = now();
    if (phase === 'roundtrip') w.send({ t: 'ping', seq: 0, v: 'x' });
    else if (phase === 'w2p') w.send({ t: 'flood' });
    else {
      let stopped = false;
      w.send({ t: 'count' });
      flood((m, cb) => w.send(m, cb), () => stopped);
      setTimeout(() => { stopped = true; w.send({ t: 'report' }); }, secs * 1000);
    }
  };
  w.on('message', (m) => {
    if (phase === 'roundtrip') {
      count++;
      if (now() - t0 < secs) w.send({ t: 'ping', seq: count, v: 'x' });
      else { out.roundtrips_per_s = count / (now() - t0); next(); }
    } else if (phase === 'w2p') {
      if (m.t === 'm') {
        if (count++ === 0) t0 = now();
        if (now() - t0 >= secs && !out.w2p_msgs_per_s) {
          out.w2p_msgs_per_s = count / (now() - t0);
          w.send({ t: 'stop' });
        }
      } else if (m.t === 'stopped') next();
    } else if (phase === 'p2w' && m.t === 'report') {
      out.p2w_msgs_per_s = m.rate;
      next();
    }
  });
  w.on('online', next);
  setTimeout(() => { console.error('ipc.js: timed out'); process.exit(1); }, (secs * 4 + 20) * 1000).unref();
} else {
  let stopped = false;
  let count = 0;
  let t0 = 0;
  process.on('message', (m) => {
    if (m.t === 'ping') process.send(m);
    else if (m.t === 'flood') flood((x, cb) => process.send(x, cb), () => stopped);
    else if (m.t === 'stop') { stopped = true; process.send({ t: 'stopped' }); }
    else if (m.t === 'count') { count = 0; t0 = 0; }
    else if (m.t === 'm') { if (count++ === 0) t0 = now(); }
    else if (m.t === 'report') process.send({ t: 'report', rate: count / (now() - t0) });
  });
}
