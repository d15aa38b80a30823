'use strict';
// Node cluster side of bench/ipc: the same modes as lua_cluster.lua, with
// Node's own cluster module and process.send / worker.send (default 'json'
// serialization, what a Node user gets).
//
//   node bench/ipc/node_cluster.js [small_n [big_n [pingpong_n [spawn_n]]]]
// (a count of 0 skips that mode)
//
// Output: one line per figure, `node <metric> key=value ...`.
// Each mode uses a fresh worker (the mode goes in BENCH_MODE) and ends by
// itself: bounded counts, and the master disconnects every worker it forked.

const cluster = require('node:cluster');
const fs = require('node:fs');

const CHUNK = 10000; // small messages per burst
const BIG_CHUNK = Number(process.env.BENCH_BIG_CHUNK || 16); // 64 KiB messages per burst
const IN_FLIGHT = 2; // bursts the sender may have unwritten at once
const SMALL_TEXT = 'hello world';
const BIG = 'x'.repeat(65536);

const now = () => Number(process.hrtime.bigint()) / 1e9; // seconds

// Sends n messages made by make(i) through sendFn(msg, cb), in bursts of
// CHUNK with a write callback on the last message of each burst, keeping at
// most IN_FLIGHT bursts unwritten: bounded memory whatever the receiver does.
function burstSend(sendFn, n, make, done, chunk) {
  chunk = chunk || CHUNK;
  let next = 1;
  let outstanding = 0;
  let pumping = false;
  function pump() {
    if (pumping) return;
    pumping = true;
    while (outstanding < IN_FLIGHT && next <= n) {
      const last = Math.min(n, next + chunk - 1);
      outstanding++;
      for (; next < last; next++) sendFn(make(next));
      sendFn(make(next), (err) => {
        if (err) throw err;
        outstanding--;
        if (next > n && outstanding === 0) { if (done) done(); return; }
        setImmediate(pump);
      });
      next++;
    }
    pumping = false;
  }
  pump();
}

const small = (i) => ({ seq: i, text: SMALL_TEXT });
const big = (i) => BIG;

if (cluster.isPrimary) {
  const num = (s, d) => (s === undefined ? d : Number(s));
  const SMALL_N = num(process.argv[2], 200000);
  const BIG_N = num(process.argv[3], 2000);
  const PP_N = num(process.argv[4], 20000);
  const SPAWN_N = num(process.argv[5], 32);

  const out = (line) => process.stdout.write('node ' + line + '\n');

  function forkMode(mode, extra) {
    return cluster.fork(Object.assign({ BENCH_MODE: mode }, extra || {}));
  }

  function finish(workers, next) {
    let left = workers.length;
    if (left === 0) return next();
    for (const w of workers) {
      w.once('exit', () => { if (--left === 0) next(); });
      if (w.isConnected()) w.disconnect();
    }
  }

  // worker -> master one-way (small tables or 64 KiB strings)
  function w2m(mode, n, next) {
    const w = forkMode(mode, { BENCH_N: String(n) });
    let got = 0;
    let t0 = 0;
    w.on('message', (msg) => {
      if (msg === 'ready') { t0 = now(); w.send('go'); return; }
      got++;
      if (mode === 'w2m_small') {
        if (msg.seq !== got) throw new Error('out of order ' + msg.seq + ' != ' + got);
      } else if (msg.length !== 65536) {
        throw new Error('bad big message');
      }
      if (got === n) {
        const dt = now() - t0;
        if (mode === 'w2m_small') {
          out(`oneway_small_w2m msgs=${n} seconds=${dt.toFixed(6)} msgs_per_s=${(n / dt).toFixed(0)}`);
        } else {
          const bytes = n * 65536;
          out(`oneway_64k msgs=${n} seconds=${dt.toFixed(6)} msgs_per_s=${(n / dt).toFixed(0)} bytes_per_s=${(bytes / dt).toFixed(0)} gb_per_s=${(bytes / dt / 1e9).toFixed(3)}`);
        }
        finish([w], next);
      }
    });
  }

  // master -> worker one-way: the worker answers {done:n} after the n-th
  function m2w(n, next) {
    const w = forkMode('m2w_small', { BENCH_N: String(n) });
    let t0 = 0;
    w.on('message', (msg) => {
      if (msg === 'ready') {
        t0 = now();
        burstSend((m, cb) => w.send(m, cb), n, small);
      } else if (msg && msg.done !== undefined) {
        const dt = now() - t0;
        if (msg.done !== n) throw new Error('worker got ' + msg.done);
        out(`oneway_small_m2w msgs=${n} seconds=${dt.toFixed(6)} msgs_per_s=${(n / dt).toFixed(0)}`);
        finish([w], next);
      }
    });
  }

  function pingpong(n, next) {
    const w = forkMode('echo');
    const lat = new Float64Array(n);
    let i = 0;
    let t0 = 0;
    let ts = 0;
    function ping() {
      ts = now();
      w.send({ seq: i + 1, text: SMALL_TEXT });
    }
    w.on('message', (msg) => {
      if (msg === 'ready') { t0 = now(); ping(); return; }
      lat[i] = now() - ts;
      if (msg.seq !== i + 1) throw new Error('bad pong');
      i++;
      if (i < n) { ping(); return; }
      const dt = now() - t0;
      lat.sort();
      const pct = (p) => lat[Math.min(n - 1, Math.round(p * (n - 1)))] * 1e6;
      out(`pingpong rts=${n} seconds=${dt.toFixed(6)} rt_per_s=${(n / dt).toFixed(0)} p50_us=${pct(0.5).toFixed(2)} p99_us=${pct(0.99).toFixed(2)}`);
      finish([w], next);
    });
  }

  function spawn(n, next) {
    const ws = [];
    let online = 0;
    const t0 = now();
    for (let k = 0; k < n; k++) {
      const w = forkMode('idle');
      ws.push(w);
      w.once('online', () => {
        if (++online === n) {
          const dt = now() - t0;
          out(`spawn workers=${n} ms=${(dt * 1e3).toFixed(1)}`);
          finish(ws, next);
        }
      });
    }
  }

  function rss(next) {
    const w = forkMode('idle');
    w.once('online', () => {
      setTimeout(() => {
        const status = fs.readFileSync(`/proc/${w.process.pid}/status`, 'utf8');
        const kb = Number(/VmRSS:\s*(\d+)/.exec(status)[1]);
        out(`idle_rss kb=${kb} mb=${(kb / 1024).toFixed(2)}`);
        finish([w], next);
      }, 500);
    });
  }

  // a count of 0 skips that mode
  const skip = (next) => next();
  const steps = [
    SMALL_N > 0 ? (next) => w2m('w2m_small', SMALL_N, next) : skip,
    SMALL_N > 0 ? (next) => m2w(SMALL_N, next) : skip,
    BIG_N > 0 ? (next) => w2m('w2m_big', BIG_N, next) : skip,
    PP_N > 0 ? (next) => pingpong(PP_N, next) : skip,
    SPAWN_N > 0 ? (next) => spawn(SPAWN_N, next) : skip,
    (next) => rss(next),
  ];
  let s = 0;
  (function step() {
    if (s < steps.length) steps[s++](step);
  })();
  // hard stop in case something hangs
  setTimeout(() => {
    process.stderr.write('node_cluster.js: timeout\n');
    for (const id in cluster.workers) cluster.workers[id].process.kill('SIGKILL');
    process.exit(1);
  }, 120000).unref();
} else {
  const mode = process.env.BENCH_MODE;
  const n = Number(process.env.BENCH_N || 0);
  const send = (m, cb) => process.send(m, cb);
  if (mode === 'w2m_small' || mode === 'w2m_big') {
    process.on('message', (msg) => {
      if (msg === 'go') {
        if (mode === 'w2m_small') burstSend(send, n, small);
        else burstSend(send, n, big, null, BIG_CHUNK);
      }
    });
    process.send('ready');
  } else if (mode === 'm2w_small') {
    let got = 0;
    process.on('message', (msg) => {
      got++;
      if (msg.seq !== got) throw new Error('out of order');
      if (got === n) process.send({ done: got });
    });
    process.send('ready');
  } else if (mode === 'echo') {
    process.on('message', (msg) => process.send(msg));
    process.send('ready');
  }
  // 'idle': the IPC channel keeps it alive until the master disconnects it
}
