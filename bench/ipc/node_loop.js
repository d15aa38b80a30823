'use strict';
// Node's side of lua_loop.lua: the same plain loop of sends, as a Node user
// writes it. The primary calls worker.send(msg) n times in a row (no
// callback, the return value ignored: Node never refuses, it queues); the
// worker counts what arrives and answers {done: count} on the primary's end
// marker {fin: n}.
//
//   node bench/ipc/node_loop.js small|big n
//
// One case per process: the sender's peak RSS is VmHWM of this process
// (the primary). Output, one line:
//   node loop_<kind> msgs=n seconds=.. msgs_per_s=.. [gb_per_s=..]
//       refused=0 false_returns=.. hwm_kb=.. hwm_mb=.. base_hwm_mb=..
// Timing: from just before the first send to the worker's {done} arriving;
// loop_seconds is the time spent in the loop itself.

const cluster = require('node:cluster');
const fs = require('node:fs');

const SMALL_TEXT = 'hello world';
const BIG = 'x'.repeat(65536);
const now = () => process.hrtime.bigint();

function vmHwmKb() {
  const s = fs.readFileSync('/proc/self/status', 'utf8');
  return Number(/VmHWM:\s*(\d+)/.exec(s)[1]);
}

if (cluster.isPrimary) {
  const kind = process.argv[2] || 'small';
  const n = Number(process.argv[3] || (kind === 'small' ? 200000 : 20000));
  const w = cluster.fork({ BENCH_KIND: kind });
  let t0 = 0n;
  let tLoop = 0n;
  let falseReturns = 0;
  let baseHwm = 0;
  w.on('message', (msg) => {
    if (msg === 'ready') {
      baseHwm = vmHwmKb();
      t0 = now();
      if (kind === 'small') {
        for (let i = 1; i <= n; i++) {
          if (!w.send({ seq: i, text: SMALL_TEXT })) falseReturns++;
        }
      } else {
        for (let i = 1; i <= n; i++) {
          if (!w.send(BIG)) falseReturns++;
        }
      }
      tLoop = now();
      w.send({ fin: n });
    } else if (msg && msg.done !== undefined) {
      const dt = Number(now() - t0) / 1e9;
      if (msg.done !== n) {
        process.stderr.write(`node_loop.js: worker counted ${msg.done}, ${n} were sent\n`);
        process.exit(1);
      }
      const hwm = vmHwmKb();
      let line = `node loop_${kind} msgs=${n} seconds=${dt.toFixed(6)} msgs_per_s=${(n / dt).toFixed(0)}` +
        ` loop_seconds=${(Number(tLoop - t0) / 1e9).toFixed(6)}`;
      if (kind === 'big') line += ` gb_per_s=${(n * 65536 / dt / 1e9).toFixed(3)}`;
      line += ` refused=0 false_returns=${falseReturns} hwm_kb=${hwm} hwm_mb=${(hwm / 1024).toFixed(2)}` +
        ` base_hwm_mb=${(baseHwm / 1024).toFixed(2)}`;
      process.stdout.write(line + '\n');
      w.once('exit', () => process.exit(0));
      w.disconnect();
    }
  });
  setTimeout(() => {
    process.stderr.write('node_loop.js: timeout\n');
    w.process.kill('SIGKILL');
    process.exit(1);
  }, 120000).unref();
} else {
  const big = process.env.BENCH_KIND === 'big';
  let got = 0;
  let last = 0;
  process.on('message', (msg) => {
    if (big && typeof msg === 'string' && msg.length === 65536) { got++; return; }
    if (!big && msg && msg.seq !== undefined) {
      if (msg.seq <= last || msg.text !== SMALL_TEXT) throw new Error('out of order');
      last = msg.seq;
      got++;
      return;
    }
    if (msg && msg.fin !== undefined) process.send({ done: got });
    else throw new Error('unexpected message');
  });
  process.send('ready');
}
