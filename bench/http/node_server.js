'use strict';
// Node cluster side of bench/http: the same server as lua_server.lua with
// Node's cluster module. The primary forks 2 workers; each serves
// 127.0.0.1:BENCH_PORT and answers every HTTP/1.1 request with a canned 200
// "hello world\n".
//
//   BENCH_PORT=8080 NODE_CLUSTER_SCHED_POLICY=rr node bench/http/node_server.js [seconds]
//   BENCH_NODE_SERVER=http ...   (Node's http module instead of raw net)
//
// NODE_CLUSTER_SCHED_POLICY ("rr" or "none") is read by Node itself.
// BENCH_NODE_SERVER=net (default) runs a raw net server with the same tiny
// HTTP handling as lua_server.lua, so that the comparison is about the
// cluster machinery, not about the HTTP parser; "http" uses http.createServer.
//
// Protocol (the same as lua_server.lua): the primary prints "ready" once both
// workers are 'listening'. On SIGINT/SIGTERM (or after `seconds`, default
// 300) it asks each worker for its count ("stats" -> {requests: n}), prints
// `worker <id> requests <n>` per worker, disconnects them and exits.

const cluster = require('node:cluster');

const WORKERS = Number(process.env.BENCH_WORKERS || 2);
const HOST = '127.0.0.1';
const KIND = process.env.BENCH_NODE_SERVER || 'net';

if (cluster.isPrimary) {
  const port = Number(process.env.BENCH_PORT);
  if (!port) {
    process.stderr.write('node_server.js: set BENCH_PORT\n');
    process.exit(2);
  }
  const lifetime = Number(process.argv[2] || 300);
  const workers = [];
  let listening = 0;
  let stopping = false;

  const killAll = (code) => {
    for (const w of workers) if (!w.isDead()) w.process.kill('SIGKILL');
    process.exit(code);
  };

  const stop = () => {
    if (stopping) return;
    stopping = true;
    const hard = setTimeout(() => {
      process.stderr.write('node_server.js: workers did not finish, killing them\n');
      killAll(1);
    }, 5000);
    const counts = {};
    let left = 0;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      for (const w of workers) {
        process.stdout.write(`worker ${w.id} requests ${counts[w.id] ?? 'n/a'}\n`);
      }
      cluster.disconnect(() => {
        clearTimeout(hard);
        clearTimeout(life);
        process.removeAllListeners('SIGINT');
        process.removeAllListeners('SIGTERM');
      });
    };
    for (const w of workers) {
      if (!w.isConnected()) continue;
      left++;
      w.once('message', (msg) => {
        if (msg && typeof msg.requests === 'number') counts[w.id] = msg.requests;
        if (--left === 0) finish();
      });
      w.send('stats');
    }
    if (left === 0) finish();
    else setTimeout(finish, 2000).unref();
  };

  cluster.on('listening', (w, address) => {
    if (++listening === WORKERS) {
      const policy = cluster.schedulingPolicy === cluster.SCHED_RR ? 'rr' : 'none';
      process.stdout.write(`ready ${address.address}:${address.port} policy ${policy} ${KIND}\n`);
    }
  });
  cluster.on('exit', (w, code, signal) => {
    if (!stopping) {
      process.stderr.write(`node_server.js: worker ${w.id} exited (${signal || 'code ' + code}) before the end\n`);
      stopping = true;
      killAll(1);
    }
  });

  for (let i = 0; i < WORKERS; i++) workers.push(cluster.fork({ BENCH_PORT: String(port) }));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const life = setTimeout(stop, lifetime * 1000);
} else {
  const port = Number(process.env.BENCH_PORT);
  const BODY = 'hello world\n';
  const KEEP = `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${BODY.length}\r\n\r\n${BODY}`;
  const CLOSE = `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`;
  const MAX_HEADER = 64 * 1024;
  const CLOSE_RE = /\n[Cc][Oo][Nn][Nn][Ee][Cc][Tt][Ii][Oo][Nn]:[ \t]*[Cc][Ll][Oo][Ss][Ee]/;
  const KEEP_RE = /\n[Cc][Oo][Nn][Nn][Ee][Cc][Tt][Ii][Oo][Nn]:[ \t]*[Kk][Ee][Ee][Pp]-/;
  const LENGTH_RE = /\n[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]:[ \t]*(\d+)/;
  let requests = 0;
  const sockets = new Set();

  const wantsClose = (h) => {
    if (h.includes('onnection')) {
      if (CLOSE_RE.test(h)) return true;
      if (KEEP_RE.test(h)) return false;
    }
    const eol = h.indexOf('\r\n');
    return eol >= 0 && h.charCodeAt(eol - 1) === 48 && h.charCodeAt(eol - 3) === 49; // HTTP/1.0
  };
  const bodyLength = (h) => {
    if (!h.includes('ength')) return 0;
    const m = LENGTH_RE.exec(h);
    return m ? Number(m[1]) : 0;
  };

  let server;
  if (KIND === 'http') {
    const http = require('node:http');
    server = http.createServer((req, res) => {
      requests++;
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': BODY.length });
      res.end(BODY);
    });
    server.on('connection', (s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
  } else {
    const net = require('node:net');
    server = net.createServer((socket) => {
      sockets.add(socket);
      let pending = '';
      let ending = false;
      socket.setEncoding('latin1');
      socket.on('data', (data) => {
        if (ending) return;
        const buf = pending ? pending + data : data;
        pending = '';
        const len = buf.length;
        let pos = 0;
        let answered = 0;
        let close = false;
        while (pos < len) {
          const e = buf.indexOf('\r\n\r\n', pos);
          if (e < 0) break;
          const h = (pos === 0 && e + 4 === len) ? buf : buf.slice(pos, e + 2);
          const stop = e + 4 + bodyLength(h);
          if (stop > len) break;
          answered++;
          pos = stop;
          if (wantsClose(h)) { close = true; break; }
        }
        requests += answered;
        if (close) {
          ending = true;
          socket.end(answered === 1 ? CLOSE : KEEP.repeat(answered - 1) + CLOSE, 'latin1');
          return;
        }
        if (answered === 1) socket.write(KEEP, 'latin1');
        else if (answered > 1) socket.write(KEEP.repeat(answered), 'latin1');
        if (pos < len) {
          pending = buf.slice(pos);
          if (pending.length > MAX_HEADER) socket.destroy();
        }
      });
      socket.on('error', () => {});
      socket.on('close', () => sockets.delete(socket));
    });
  }
  server.on('error', (err) => {
    process.stderr.write(`node_server.js: worker ${cluster.worker.id} cannot listen on ${HOST}:${port}: ${err.message}\n`);
    process.exit(1);
  });
  server.listen({ host: HOST, port, backlog: 1024 });

  process.on('message', (msg) => {
    if (msg === 'stats') process.send({ requests });
  });
  // Ctrl-C reaches the whole process group: the primary collects the counts.
  process.on('SIGINT', () => {});
  cluster.worker.on('disconnect', () => {
    for (const s of sockets) s.destroy();
  });
}
