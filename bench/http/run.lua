-- bench/http runner: wrk on 127.0.0.1 against a canned "hello world\n"
-- response, keep-alive and `Connection: close`, for luv-cluster (2 workers,
-- each policy: rr, shared, reuseport), Node's cluster (2 workers, net module,
-- SCHED_RR and SCHED_NONE; plus its http module, for information) and nginx
-- (2 worker processes). BENCH_RUNS interleaved runs (default 3: every
-- server and mode once, then again, each run starting one server further
-- on), medians, one markdown table and the target checks.
--
--   lua5.4 bench/http/run.lua                (from the repository root, after make)
--   BENCH_RUNS=1 BENCH_SECONDS=2 lua5.4 bench/http/run.lua
--
-- Environment:
--   BENCH_RUNS (3), BENCH_SECONDS (5, wrk -d), BENCH_CONNECTIONS (64, wrk -c),
--   BENCH_THREADS (2, wrk -t), BENCH_NODE_HTTP=0 (skip Node's http module rows),
--   BENCH_ONLY=lua-rr,nginx,... (only these servers, keys as in SERVERS below;
--   lua-rr-leastconn and jit-rr-leastconn are rr with settings.balance = "leastconn"),
--   BENCH_SVG=path (also write a bar chart of the medians as SVG),
--   BENCH_RETRY_BUSY=N (0: do a run again, up to N times, when other
--   processes took more than 15% of the CPU during it; the last attempt counts).
--
-- Every process it starts is bounded: a server gets a lifetime argument and
-- is stopped by its pid (SIGTERM, then SIGKILL after a timeout); wrk runs
-- for BENCH_SECONDS and is killed if it overruns. Only 127.0.0.1 is used.
-- wrk and the servers share the machine's cores: on 2 cores, wrk's two
-- threads compete with the two workers (and, under rr, the master), so the
-- figures are for comparing servers against each other, not absolute.
local uv = require("luv")
local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
package.path = dir .. "/../?.lua;" .. package.path
local lib = require("lib.runner")

local RUNS = tonumber(os.getenv("BENCH_RUNS") or "") or 3
local SECONDS = tonumber(os.getenv("BENCH_SECONDS") or "") or 5
local CONNS = tonumber(os.getenv("BENCH_CONNECTIONS") or "") or 64
local THREADS = tonumber(os.getenv("BENCH_THREADS") or "") or 2
local NODE_HTTP = os.getenv("BENCH_NODE_HTTP") ~= "0"
local SVG_PATH = os.getenv("BENCH_SVG")
local RETRY_BUSY = tonumber(os.getenv("BENCH_RETRY_BUSY") or "") or 0
local READY_MS = 20000   -- a server must say "ready" (or answer) within this
local SERVER_LIFETIME = math.max(120, SECONDS * 4 + 60) -- seconds; servers stop themselves

if dir:sub(1, 1) ~= "/" then dir = uv.cwd() .. "/" .. dir end
local root = dir .. "/../.."
local lua_bin = lib.lua_bin()

local function capture(cmd)
  local p = io.popen(cmd, "r")
  local out = p:read("a")
  p:close()
  return (out:gsub("%s+$", ""))
end
local have, build_name = lib.have, lib.build_name

-- Servers ------------------------------------------------------------------

local SERVERS = {
  { key = "lua-rr", label = "luv-cluster rr", kind = "lua", env = { LUA_CLUSTER_SCHED_POLICY = "rr" } },
  { key = "lua-rr-leastconn", label = "luv-cluster rr, balance leastconn", kind = "lua",
    env = { LUA_CLUSTER_SCHED_POLICY = "rr", BENCH_BALANCE = "leastconn" } },
  { key = "lua-shared", label = "luv-cluster shared", kind = "lua", env = { LUA_CLUSTER_SCHED_POLICY = "shared" } },
  { key = "lua-reuseport", label = "luv-cluster reuseport", kind = "lua",
    env = { LUA_CLUSTER_SCHED_POLICY = "reuseport" } },
  -- the same three under LuaJIT (BENCH_LUAJIT=luajit by default; 0: skip)
  { key = "jit-rr", label = "luv-cluster rr, LuaJIT", kind = "lua", jit = true,
    env = { LUA_CLUSTER_SCHED_POLICY = "rr" } },
  { key = "jit-rr-leastconn", label = "luv-cluster rr, balance leastconn, LuaJIT", kind = "lua", jit = true,
    env = { LUA_CLUSTER_SCHED_POLICY = "rr", BENCH_BALANCE = "leastconn" } },
  { key = "jit-shared", label = "luv-cluster shared, LuaJIT", kind = "lua", jit = true,
    env = { LUA_CLUSTER_SCHED_POLICY = "shared" } },
  { key = "jit-reuseport", label = "luv-cluster reuseport, LuaJIT", kind = "lua", jit = true,
    env = { LUA_CLUSTER_SCHED_POLICY = "reuseport" } },
  { key = "node-rr", label = "Node cluster net, SCHED_RR", kind = "node",
    env = { NODE_CLUSTER_SCHED_POLICY = "rr", BENCH_NODE_SERVER = "net" } },
  { key = "node-none", label = "Node cluster net, SCHED_NONE", kind = "node",
    env = { NODE_CLUSTER_SCHED_POLICY = "none", BENCH_NODE_SERVER = "net" } },
  { key = "node-http-rr", label = "Node cluster http, SCHED_RR (info)", kind = "node", http = true,
    env = { NODE_CLUSTER_SCHED_POLICY = "rr", BENCH_NODE_SERVER = "http" } },
  { key = "node-http-none", label = "Node cluster http, SCHED_NONE (info)", kind = "node", http = true,
    env = { NODE_CLUSTER_SCHED_POLICY = "none", BENCH_NODE_SERVER = "http" } },
  { key = "nginx", label = "nginx, 2 workers", kind = "nginx", env = {} },
}

local MODES = {
  { key = "ka", label = "keep-alive", headers = {} },
  { key = "close", label = "Connection: close", headers = { "-H", "Connection: close" } },
}

local missing = {} -- key -> why it is n/a
local have_node, have_nginx = have("node"), have("nginx")
local nginx_bin = have_nginx and capture("command -v nginx") or nil
if not have("wrk") then
  io.stderr:write("run.lua: wrk not found (apt-get install wrk)\n")
  os.exit(1)
end
local jit_bin = os.getenv("BENCH_LUAJIT") or "luajit"
if jit_bin == "0" or not have(jit_bin) then jit_bin = nil end
-- The Lua rows run under lua_bin, the LuaJIT rows under jit_bin, each
-- with the core from its own build directory (make bench-http builds both).
for _, bin in ipairs({ lua_bin, jit_bin }) do
  local path, built = lib.core_of(root, bin)
  if not built then
    io.stderr:write(("run.lua: %s is missing: run make build LUA=%s first\n"):format(path, bin))
  end
end
local only = {}
for k in (os.getenv("BENCH_ONLY") or ""):gmatch("[^,%s]+") do only[k] = true end
local active = {}
for _, s in ipairs(SERVERS) do
  if next(only) and not only[s.key] then
    missing[s.key] = "not selected"
  elseif s.jit and not jit_bin then
    missing[s.key] = "luajit not found (or BENCH_LUAJIT=0)"
  elseif s.kind == "node" and not have_node then
    missing[s.key] = "node not found"
  elseif s.http and not NODE_HTTP then
    missing[s.key] = "BENCH_NODE_HTTP=0"
  elseif s.kind == "nginx" and not have_nginx then
    missing[s.key] = "nginx not found"
  else
    active[#active + 1] = s
  end
end
for _, s in ipairs(SERVERS) do
  if missing[s.key] and missing[s.key] ~= "not selected" and missing[s.key] ~= "BENCH_NODE_HTTP=0" then
    io.stderr:write(("run.lua: %s: n/a (%s)\n"):format(s.label, missing[s.key]))
  end
end

-- Helpers (the benchmark itself runs in one coroutine) ----------------------

local sleep, wait_for, start, stop = lib.sleep, lib.wait_for, lib.start, lib.stop
-- Settings of ours that a server also reads stay out of its environment.
local function env_list(extra)
  return lib.env_list(extra, { "^LUA_CLUSTER_", "^NODE_CLUSTER_SCHED_POLICY$" })
end

-- One HTTP GET; true when a 200 comes back.
local function probe(port)
  local co = coroutine.running()
  local done, ok = false, false
  local c = uv.new_tcp()
  local t = uv.new_timer()
  local function finish(v)
    if done then return end
    done, ok = true, v
    t:close()
    if not c:is_closing() then c:close() end
    assert(coroutine.resume(co))
  end
  t:start(1000, 0, function() finish(false) end)
  c:connect("127.0.0.1", port, function(err)
    if err then return finish(false) end
    local got = ""
    c:read_start(function(rerr, data)
      if rerr or not data then return finish(false) end
      got = got .. data
      if got:find("\r\n\r\n", 1, true) then finish(got:match("^HTTP/1%.%d 200") ~= nil) end
    end)
    c:write("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
  end)
  if not done then coroutine.yield() end
  return ok
end

local read_file, write_file = lib.read_file, lib.write_file

local function rm_rf(path)
  -- only the temporary directory this runner made
  if path and path:match("^/tmp/bench%-http%-") then os.execute("rm -rf '" .. path .. "'") end
end

-- Starts one server on port; returns a handle table or nil, why.
local function start_server(s, port)
  if s.kind == "lua" then
    local env = { BENCH_PORT = tostring(port) }
    for k, v in pairs(s.env) do env[k] = v end
    local p, err = start(s.jit and jit_bin or lua_bin, { dir .. "/lua_server.lua", tostring(SERVER_LIFETIME) },
      env_list(env))
    if not p then return nil, err end
    return { proc = p }
  elseif s.kind == "node" then
    local env = { BENCH_PORT = tostring(port) }
    for k, v in pairs(s.env) do env[k] = v end
    local p, err = start("node", { dir .. "/node_server.js", tostring(SERVER_LIFETIME) }, env_list(env))
    if not p then return nil, err end
    return { proc = p }
  else
    local tmp = assert(uv.fs_mkdtemp("/tmp/bench-http-XXXXXX"))
    local conf = assert(read_file(dir .. "/nginx.conf.in"))
    local user = ""
    if uv.getuid and uv.getuid() == 0 then user = "user root;" end
    conf = conf:gsub("@PORT@", tostring(port)):gsub("@DIR@", tmp):gsub("@USER@", user)
    write_file(tmp .. "/nginx.conf", conf)
    local p, err = start(nginx_bin, { "-p", tmp .. "/", "-e", tmp .. "/error.log",
      "-c", tmp .. "/nginx.conf" }, env_list({}))
    if not p then
      rm_rf(tmp)
      return nil, err
    end
    return { proc = p, tmp = tmp }
  end
end

local function wait_ready(s, srv, port)
  local p = srv.proc
  if s.kind == "nginx" then
    local deadline = uv.now() + READY_MS
    while uv.now() < deadline and not p.exited do
      if probe(port) then
        -- its workers, for a SIGKILL should SIGTERM not end them
        srv.children = lib.server_pids(p.pid)
        table.remove(srv.children, 1)
        return true
      end
      sleep(50)
    end
    return false
  end
  return lib.wait_ready(p, READY_MS)
end

local function to_ms(v, unit)
  v = tonumber(v)
  if not v then return nil end
  if unit == "us" then return v / 1000 elseif unit == "ms" then return v
  elseif unit == "s" then return v * 1000 elseif unit == "m" then return v * 60000 end
  return nil
end

local function parse_wrk(out)
  local r = {}
  r.rps = tonumber(out:match("Requests/sec:%s*([%d%.]+)"))
  local avg, au = out:match("\n%s*Latency%s+([%d%.]+)(%a+)")
  r.avg_ms = to_ms(avg, au)
  local p50, u50 = out:match("\n%s*50%%%s+([%d%.]+)(%a+)")
  r.p50_ms = to_ms(p50, u50)
  local p99, u99 = out:match("\n%s*99%%%s+([%d%.]+)(%a+)")
  r.p99_ms = to_ms(p99, u99)
  r.requests = tonumber(out:match("(%d+) requests in"))
  local c, rd, w, t = out:match("Socket errors: connect (%d+), read (%d+), write (%d+), timeout (%d+)")
  r.socket_errors = c and (tonumber(c) + tonumber(rd) + tonumber(w) + tonumber(t)) or 0
  r.socket_detail = c and ("connect %s, read %s, write %s, timeout %s"):format(c, rd, w, t) or nil
  r.non2xx = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)")) or 0
  r.errors = r.socket_errors + r.non2xx
  return r
end

-- Server CPU µs/req: ticks from lib.cpu_window over wrk's requests.
local CLK_TCK = tonumber(capture("getconf CLK_TCK 2>/dev/null")) or 100
local BUSY = lib.BUSY

-- One server, one mode: start, wait for ready, wrk, stop, per-worker counts.
local function run_one(s, mode)
  local busy, server_ticks
  local port = lib.free_port()
  local srv, err = start_server(s, port)
  if not srv then return nil, "cannot start: " .. tostring(err) end
  local result, why
  if wait_ready(s, srv, port) then
    local args = { "-t" .. THREADS, "-c" .. CONNS, "-d" .. SECONDS .. "s", "--latency" }
    for _, h in ipairs(mode.headers) do args[#args + 1] = h end
    args[#args + 1] = ("http://127.0.0.1:%d/"):format(port)
    -- wrk is a child of this runner: cpu_window counts it in ours
    local cpu = lib.cpu_window(lib.server_pids(srv.proc.pid))
    local w, werr = start("wrk", args, env_list({}))
    if not w then
      why = "cannot start wrk: " .. tostring(werr)
    else
      if not wait_for(function() return w.exited and w.eof end, (SECONDS + 20) * 1000, 50) then
        io.stderr:write("run.lua: wrk overran, SIGKILL\n")
        stop(w)
      end
      busy, server_ticks = cpu()
      result = parse_wrk(w.out)
      if not result.rps then
        why = "wrk gave no figure: " .. w.out:gsub("\n", " ")
        result = nil
      end
    end
  else
    why = srv.proc.exited and ("server exited (code %s) before ready"):format(tostring(srv.proc.code))
      or "server not ready in time"
  end
  local stopped = stop(srv.proc, srv.children)
  if result then
    local counts = {}
    for _, l in ipairs(srv.proc.lines) do
      local id, n = l:match("^worker (%d+) requests (%d+)")
      if id then counts[#counts + 1] = { id = tonumber(id), n = tonumber(n) } end
    end
    result.counts = counts
    if #counts >= 2 then
      local mx, mn = -math.huge, math.huge
      for _, c in ipairs(counts) do
        if c.n > mx then mx = c.n end
        if c.n < mn then mn = c.n end
      end
      result.ratio = mn > 0 and mx / mn or math.huge
    end
    if not stopped then result.unclean = true end
    result.busy = busy
    if server_ticks and result.requests and result.requests > 0 then
      result.cpu_us = server_ticks * (1e6 / CLK_TCK) / result.requests
    end
  end
  if srv.tmp then
    local log = read_file(srv.tmp .. "/error.log")
    if log and log:find("%[emerg%]") then io.stderr:write("run.lua: nginx: ", log) end
    rm_rf(srv.tmp)
  end
  return result, why
end

-- The benchmark --------------------------------------------------------------

local results = {} -- results[server.key][mode.key] = { result, ... }
local failures = {}
local retried = 0 -- runs done again because other processes were busy
for _, s in ipairs(SERVERS) do results[s.key] = { ka = {}, close = {} } end

local t_start = uv.hrtime()
local function bench()
  for r = 1, RUNS do
    -- run r starts one server further on, so that no server always runs
    -- first (or right after the same neighbour) when the machine drifts
    for i = 1, #active do
      local s = active[(i + r - 2) % #active + 1]
      for _, mode in ipairs(MODES) do
        io.stderr:write(("run %d/%d: %s, %s ... "):format(r, RUNS, s.label, mode.label))
        local res, why, again = lib.run_quiet(RETRY_BUSY, function(attempt)
          if attempt > 0 then
            io.stderr:write(("run %d/%d: %s, %s, again (attempt %d) ... "):format(r, RUNS, s.label,
              mode.label, attempt + 1))
          end
          local res1, why1 = run_one(s, mode)
          if res1 then
            local cs = {}
            for _, c in ipairs(res1.counts) do cs[#cs + 1] = c.id .. ":" .. c.n end
            io.stderr:write(("%.0f req/s, p99 %s ms, %s µs CPU/req, errors %d, workers %s, other processes %s%s\n")
              :format(res1.rps, res1.p99_ms and ("%.2f"):format(res1.p99_ms) or "?",
              res1.cpu_us and ("%.1f"):format(res1.cpu_us) or "?", res1.errors,
              #cs > 0 and table.concat(cs, " ") or "n/a",
              res1.busy and ("%.0f%%"):format(100 * res1.busy) or "?",
              (res1.busy and res1.busy > BUSY) and " (suspect)" or ""))
          end
          return res1, why1
        end, function(res1) return res1.busy end)
        retried = retried + again
        if res then
          local list = results[s.key][mode.key]
          list[#list + 1] = res
        else
          failures[#failures + 1] = ("%s, %s, run %d: %s"):format(s.label, mode.label, r, why)
          io.stderr:write("FAILED: ", why, "\n")
        end
      end
    end
  end
end

local main_co = coroutine.create(function()
  local ok, err = xpcall(bench, debug.traceback)
  if not ok then
    io.stderr:write("run.lua: ", err, "\n")
    failures[#failures + 1] = "runner error: " .. err
  end
end)
assert(coroutine.resume(main_co))
uv.run()

-- Report ---------------------------------------------------------------------

local median = lib.median

local function field(key, mode, f)
  local t = {}
  for _, r in ipairs(results[key][mode]) do if r[f] then t[#t + 1] = r[f] end end
  return t
end
local function med(key, mode, f) return median(field(key, mode, f)) end
local function total(key, mode, f)
  local list = results[key][mode]
  if #list == 0 then return nil end
  local n = 0
  for _, r in ipairs(list) do n = n + (r[f] or 0) end
  return n
end

local function rate(v)
  if v == nil then return "n/a" end
  if v >= 1e6 then return ("%.2fM"):format(v / 1e6) end
  if v >= 1e3 then return ("%.1fk"):format(v / 1e3) end
  return ("%.0f"):format(v)
end
local function ms(v) return v and ("%.2f"):format(v) or "n/a" end
local function ratio(v)
  if v == nil then return "n/a" end
  if v == math.huge then return "inf" end
  return ("%.2f"):format(v)
end

local function version(cmd, pat)
  local o = capture(cmd .. " 2>&1")
  return pat and o:match(pat) or o
end

local lines = {}
local function p(s) lines[#lines + 1] = s end
p("")
p(("### bench/http: medians of %d runs, wrk -t%d -c%d -d%ds (%s cores; %s, luv %s; Node %s; nginx %s; wrk %s)"):format(
  RUNS, THREADS, CONNS, SECONDS, capture("nproc 2>/dev/null"),
  version(lua_bin .. " -v", "Lua [%d%.]+") or "Lua", uv.version_string(),
  have_node and version("node --version") or "n/a",
  have_nginx and version("nginx -v", "nginx/([%d%.]+)") or "n/a",
  version("wrk -v", "wrk ([^ ]+)") or "?"))
p("")
p("| server (2 workers) | keep-alive req/s | keep-alive p99 ms | close req/s | close p99 ms"
  .. " | per-worker max/min, keep-alive | per-worker max/min, close"
  .. " | server CPU µs/req, keep-alive / close | errors, keep-alive / close |")
p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for _, s in ipairs(SERVERS) do
  if missing[s.key] and missing[s.key] ~= "nginx not found" and missing[s.key] ~= "node not found" then
    goto continue
  end
  do
    local k = s.key
    local per_worker = function(mode)
      if s.kind == "nginx" then return "n/a" end
      return ratio(med(k, mode, "ratio"))
    end
    local errs = function(mode)
      local n = total(k, mode, "errors")
      return n and tostring(n) or "n/a"
    end
    local cpu = function(mode)
      local v = med(k, mode, "cpu_us")
      return v and ("%.1f"):format(v) or "n/a"
    end
    p(("| %s | %s | %s | %s | %s | %s | %s | %s / %s | %s / %s |"):format(s.label,
      rate(med(k, "ka", "rps")), ms(med(k, "ka", "p99_ms")),
      rate(med(k, "close", "rps")), ms(med(k, "close", "p99_ms")),
      per_worker("ka"), per_worker("close"), cpu("ka"), cpu("close"), errs("ka"), errs("close")))
  end
  ::continue::
end
p("")

-- LuaJIT beside the Lua interpreter of the other rows, from the same runs.
if jit_bin then
  p("| policy, mode | " .. build_name(lua_bin) .. " req/s | LuaJIT req/s | LuaJIT / " .. build_name(lua_bin)
    .. " | server CPU µs/req, " .. build_name(lua_bin) .. " / LuaJIT |")
  p("|---|---:|---:|---:|---:|")
  for _, pol in ipairs({ "rr", "shared", "reuseport" }) do
    for _, mode in ipairs(MODES) do
      local a, b = med("lua-" .. pol, mode.key, "rps"), med("jit-" .. pol, mode.key, "rps")
      local ca, cb = med("lua-" .. pol, mode.key, "cpu_us"), med("jit-" .. pol, mode.key, "cpu_us")
      p(("| %s, %s | %s | %s | %s | %s / %s |"):format(pol, mode.label, rate(a), rate(b),
        (a and b) and ("%.2fx"):format(b / a) or "n/a",
        ca and ("%.1f"):format(ca) or "n/a", cb and ("%.1f"):format(cb) or "n/a"))
    end
  end
  p("")
end

-- Targets
local function m(key, mode) return med(key, mode, "rps") end
local node_best_ka, node_best_key
for _, k in ipairs({ "node-rr", "node-none" }) do
  local v = m(k, "ka")
  if v and (not node_best_ka or v > node_best_ka) then node_best_ka, node_best_key = v, k end
end
local nginx_ka, nginx_close = m("nginx", "ka"), m("nginx", "close")
local checks = {}
-- nil (n/a) when there is no figure, else whether pred holds
local function holds(v, pred)
  if v == nil then return nil end
  return pred(v) and true or false
end
local function check(label, value, met)
  local mark
  if met == nil then mark = "n/a" elseif met then mark = "met" else mark = "**not met**" end
  checks[#checks + 1] = ("| %s | %s | %s |"):format(label, value, mark)
end
local POLICIES = { { "lua-rr", "rr" }, { "lua-shared", "shared" }, { "lua-reuseport", "reuseport" } }
for _, pol in ipairs(POLICIES) do
  local v = m(pol[1], "ka")
  local a = v and node_best_ka and v / node_best_ka
  local b = v and nginx_ka and v / nginx_ka
  local met = nil
  if a and b then met = a >= 1.3 and b >= 1.0 end
  check(("keep-alive, %s: >= 1.3x Node's best mode and >= nginx"):format(pol[2]),
    ("%s: %s Node best (%s %s), %s nginx (%s)"):format(rate(v),
      a and ("%.2fx"):format(a) or "n/a", node_best_key or "Node", rate(node_best_ka),
      b and ("%.2fx"):format(b) or "n/a", rate(nginx_ka)), met)
end
do
  local v, n = m("lua-rr", "close"), m("node-rr", "close")
  local a = v and n and v / n
  check("close, rr: >= 3x Node's rr", ("%s: %s Node rr (%s)"):format(rate(v),
    a and ("%.2fx"):format(a) or "n/a", rate(n)), holds(a, function(x) return x >= 3 end))
end
do
  local v = m("lua-shared", "close")
  local a = v and nginx_close and v / nginx_close
  check("close, shared: >= 0.9x nginx", ("%s: %s nginx (%s)"):format(rate(v),
    a and ("%.2fx"):format(a) or "n/a", rate(nginx_close)), holds(a, function(x) return x >= 0.9 end))
end
for _, pol in ipairs({ { "lua-rr", "rr" }, { "lua-reuseport", "reuseport" } }) do
  for _, mode in ipairs(MODES) do
    local v = med(pol[1], mode.key, "ratio")
    check(("per-worker max/min, %s, %s: <= 1.1"):format(pol[2], mode.label), ratio(v),
      holds(v, function(x) return x <= 1.1 end))
  end
end
p("| target | measured (medians) | |")
p("|---|---|---|")
for _, c in ipairs(checks) do p(c) end
p("")
local busy_runs, all_runs, max_busy = 0, 0, 0
for _, s in ipairs(active) do
  for _, mode in ipairs(MODES) do
    for _, r in ipairs(results[s.key][mode.key]) do
      all_runs = all_runs + 1
      if r.busy and r.busy > max_busy then max_busy = r.busy end
    end
  end
end
p("Per-run values (req/s; per-worker counts as id:requests; * = other processes")
p(("took more than %d%% of the machine's CPU during that run):"):format(100 * BUSY))
p("")
for _, s in ipairs(active) do
  for _, mode in ipairs(MODES) do
    local parts = {}
    for _, r in ipairs(results[s.key][mode.key]) do
      local cs = {}
      for _, c in ipairs(r.counts or {}) do cs[#cs + 1] = c.id .. ":" .. c.n end
      local e = ""
      if r.errors > 0 then
        e = (", errors: %s%s"):format(r.socket_detail or "", r.non2xx > 0 and (", non-2xx " .. r.non2xx) or "")
      end
      local mark = ""
      if r.busy and r.busy > BUSY then
        mark = "*"
        busy_runs = busy_runs + 1
      end
      parts[#parts + 1] = ("%s%s (%s%s)"):format(rate(r.rps), mark,
        #cs > 0 and table.concat(cs, " ") or "counts n/a", e)
    end
    p(("- %s, %s: %s"):format(s.label, mode.label, #parts > 0 and table.concat(parts, "; ") or "n/a"))
  end
end
p("")
p("wrk runs on the same machine as the servers: its threads and the servers'")
p("processes share the cores, so a server that uses less CPU per request also")
p("leaves more to wrk. Keep-alive p99 and close p99 are wrk's latency")
p("distribution. Per-worker max/min is from the requests each worker counted")
p("(nginx has no per-worker count here: n/a). Errors are wrk's socket errors")
p("plus non-2xx responses, summed over the runs. The Node http rows use Node's")
p("http module (its own parser and headers) and are for information only; the")
p("targets compare against the net rows. Server CPU µs/req is the user+system")
p("time of the server's processes (master and workers) during the wrk run over")
p("the requests wrk completed: it depends much less on the machine's other")
p("load than req/s does (kernel time spent in softirq, e.g. loopback TCP, is")
p("charged to no process and left out).")
p(("Other processes' CPU use during a run: at most %.0f%% of the machine;"):format(100 * max_busy))
p(("%d of %d runs above %d%% (marked *)%s%s."):format(busy_runs, all_runs, 100 * BUSY,
  busy_runs > 0 and ": their figures are suspect, rerun on a quiet machine" or "",
  retried > 0 and ("; %d runs were done again for that (BENCH_RETRY_BUSY=%d)"):format(retried, RETRY_BUSY) or ""))
if #failures > 0 then
  p("")
  p("Failed runs: " .. table.concat(failures, "; "))
end
p(("Total time: %.0f s"):format((uv.hrtime() - t_start) / 1e9))
io.stdout:write(table.concat(lines, "\n"), "\n")

-- SVG chart of the medians: two panels (keep-alive, close), one bar each.
if SVG_PATH then
  local rows = {}
  for _, s in ipairs(active) do rows[#rows + 1] = s end
  local W, LABEL, BAR_H, GAP, PAD = 820, 300, 18, 6, 30
  local panel_h = #rows * (BAR_H + GAP) + 40
  local H = 2 * panel_h + PAD * 2 + 20
  local colors = { lua = "#2a6fdb", node = "#5fa641", nginx = "#999999" }
  local out = {}
  local function o(s) out[#out + 1] = s end
  local function esc(s) return (s:gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;")) end
  o(('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="13">')
    :format(W, H))
  o(('<rect width="%d" height="%d" fill="white"/>'):format(W, H))
  o(('<text x="10" y="20" font-size="15" font-weight="bold">%s</text>'):format(esc(
    ("bench/http: requests/s, medians of %d runs, wrk -t%d -c%d -d%ds, 2 workers, %s cores"):format(
      RUNS, THREADS, CONNS, SECONDS, capture("nproc 2>/dev/null")))))
  local y = PAD + 10
  for _, mode in ipairs(MODES) do
    local maxv = 0
    for _, s in ipairs(rows) do maxv = math.max(maxv, m(s.key, mode.key) or 0) end
    o(('<text x="10" y="%d" font-weight="bold">%s</text>'):format(y + 14, esc(mode.label)))
    y = y + 26
    for _, s in ipairs(rows) do
      local v = m(s.key, mode.key)
      local len = (v and maxv > 0) and math.floor((W - LABEL - 90) * v / maxv + 0.5) or 0
      o(('<text x="%d" y="%d" text-anchor="end">%s</text>'):format(LABEL - 8, y + BAR_H - 5, esc(s.label)))
      o(('<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>'):format(LABEL, y, len, BAR_H,
        colors[s.kind] or "#444"))
      o(('<text x="%d" y="%d">%s</text>'):format(LABEL + len + 6, y + BAR_H - 5, rate(v)))
      y = y + BAR_H + GAP
    end
    y = y + 14
  end
  o("</svg>")
  write_file(SVG_PATH, table.concat(out, "\n") .. "\n")
  io.stderr:write("run.lua: wrote ", SVG_PATH, "\n")
end
