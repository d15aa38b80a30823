-- bench/ipc runner (`make bench`): builds the raw C baseline, then runs,
-- BENCH_RUNS times (default 5, interleaved so that a noisy moment hits all
-- of them):
--   * the plain loop of sends, one fresh process per case (lua_loop.lua
--     and node_loop.js): the master sends 200,000 small tables, or 20,000
--     64 KiB strings, in a plain for loop, and the worker counts them;
--   * the other modes (windowed one-way, ping-pong, spawn, idle RSS) from
--     lua_cluster.lua and node_cluster.js;
--   * the raw C socketpair baseline (raw_socketpair.c);
-- every luv-cluster case under the Lua interpreter (LUA, default lua5.4)
-- and under LuaJIT (BENCH_LUAJIT, default luajit; 0 skips it), each with
-- the core of its own build directory (build/<name>/, make bench builds
-- both). Prints one markdown table of the medians against the targets.
--
--   lua5.4 bench/ipc/run.lua            (from the repository root, after make)
--   BENCH_RUNS=1 lua5.4 bench/ipc/run.lua
--
-- Counts per run (each run ends by itself within seconds):
local COUNTS = {
  raw = { small = 20000000, big = 40000, pingpong = 20000, pingpong_epoll = 20000 },
  node = { small = 200000, big = 2000, pingpong = 20000, spawn = 32 },
  lua = { small = 1000000, big = 20000, pingpong = 20000, spawn = 32 },
  -- the plain loop, the same for luv-cluster and Node
  loop = { small = tonumber(os.getenv("BENCH_LOOP_SMALL") or "") or 200000,
           big = tonumber(os.getenv("BENCH_LOOP_BIG") or "") or 20000 },
}
local RUNS = tonumber(os.getenv("BENCH_RUNS") or "") or 5
local TIMEOUT = 150 -- seconds, per process

local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
local root = dir .. "/../.."
package.path = dir .. "/../?.lua;" .. package.path
local lib = require("lib.runner")

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function capture(cmd)
  local p = io.popen(cmd, "r")
  local outp = p:read("a")
  local ok, how, code = p:close()
  return outp, ok, how, code
end

local have, build_name = lib.have, lib.build_name

local lua_bin = os.getenv("LUA") or "lua5.4"
local jit_bin = os.getenv("BENCH_LUAJIT") or "luajit"
if jit_bin == "0" or not have(jit_bin) then jit_bin = nil end

for _, bin in ipairs({ lua_bin, jit_bin }) do
  local path, built = lib.core_of(root, bin)
  if not built then
    io.stderr:write(("run.lua: %s is missing: run make build LUA=%s first\n"):format(path, bin))
    os.exit(1)
  end
end

local timeout_prefix = have("timeout") and ("timeout -k 5 " .. TIMEOUT .. " ") or ""

-- build the C baseline
local raw_bin = root .. "/build/bench/raw_socketpair"
do
  local cc = os.getenv("CC") or "cc"
  local cmd = ("mkdir -p %s && %s -O2 -o %s %s 2>&1"):format(
    sh_quote(root .. "/build/bench"), cc, sh_quote(raw_bin), sh_quote(dir .. "/raw_socketpair.c"))
  local o, ok = capture(cmd)
  if not ok then
    io.stderr:write("run.lua: building the raw C baseline failed:\n", o)
    raw_bin = nil
  end
end

-- Jobs: one process each; `impl` is the column its figures go to, `who`
-- the prefix of its output lines.
local jobs = {}
local function job(impl, who, label, cmd) jobs[#jobs + 1] = { impl = impl, who = who, label = label, cmd = cmd } end
local have_node = have("node")
if not have_node then io.stderr:write("run.lua: node not found, skipping Node\n") end
local luas = { { impl = "lua", bin = lua_bin } }
if jit_bin then luas[2] = { impl = "jit", bin = jit_bin } end

-- the plain loops first, each case in a fresh process
for _, kind in ipairs({ "small", "big" }) do
  local n = COUNTS.loop[kind]
  if have_node then
    job("node", "node", "node loop " .. kind, ("node %s %s %d"):format(sh_quote(dir .. "/node_loop.js"), kind, n))
  end
  for _, l in ipairs(luas) do
    job(l.impl, "lua", l.bin .. " loop " .. kind,
      ("%s %s %s %d"):format(sh_quote(l.bin), sh_quote(dir .. "/lua_loop.lua"), kind, n))
  end
end
if raw_bin then
  job("raw", "raw", "raw C", ("%s %d %d %d %d"):format(sh_quote(raw_bin),
    COUNTS.raw.small, COUNTS.raw.big, COUNTS.raw.pingpong, COUNTS.raw.pingpong_epoll))
end
if have_node then
  local c = COUNTS.node
  job("node", "node", "node cluster", ("node %s %d %d %d %d"):format(
    sh_quote(dir .. "/node_cluster.js"), c.small, c.big, c.pingpong, c.spawn))
end
for _, l in ipairs(luas) do
  local c = COUNTS.lua
  job(l.impl, "lua", l.bin .. " cluster", ("%s %s %d %d %d %d"):format(
    sh_quote(l.bin), sh_quote(dir .. "/lua_cluster.lua"), c.small, c.big, c.pingpong, c.spawn))
end

-- results[impl][metric.key] = { values... }
local results = { raw = {}, node = {}, lua = {}, jit = {} }
local failures = {}

local function parse(impl, who, text)
  for line in text:gmatch("[^\n]+") do
    local w, metric, rest = line:match("^(%w+) ([%w_]+) (.*)$")
    if w == who and metric then
      for k, v in rest:gmatch("([%w_]+)=([%d%.eE+-]+)") do
        local key = metric .. "." .. k
        local t = results[impl][key] or {}
        results[impl][key] = t
        t[#t + 1] = tonumber(v)
      end
    end
  end
end

-- The machine's load average around the runs: a shared machine's noise.
local function loadavg()
  local fh = io.open("/proc/loadavg", "r")
  if not fh then return "?" end
  local l = fh:read("l") or "?"
  fh:close()
  return (l:match("^(%S+ %S+ %S+)") or l)
end
local load_start = loadavg()
local t_start = os.time()
for r = 1, RUNS do
  for _, jb in ipairs(jobs) do
    io.stderr:write(("run %d/%d: %s ...\n"):format(r, RUNS, jb.label))
    local o, ok, how, code = capture(timeout_prefix .. jb.cmd)
    io.stderr:write(o)
    if not ok then
      failures[#failures + 1] = ("%s run %d: %s %s"):format(jb.label, r, tostring(how), tostring(code))
      io.stderr:write("run.lua: ", failures[#failures], "\n")
    end
    parse(jb.impl, jb.who, o)
  end
end

local function median(t)
  if not t or #t == 0 then return nil end
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local n = #s
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

local function get(impl, key) return median(results[impl][key]) end

local function fmt_num(v, kind)
  if v == nil then return "n/a" end
  if kind == "rate" then
    if v >= 1e6 then return ("%.2fM"):format(v / 1e6) end
    if v >= 1e3 then return ("%.1fk"):format(v / 1e3) end
    return ("%.0f"):format(v)
  elseif kind == "gb" then
    return ("%.3f"):format(v)
  elseif kind == "us" or kind == "ms" then
    return ("%.1f"):format(v)
  elseif kind == "mb" then
    return ("%.2f"):format(v)
  elseif kind == "s_ms" then
    return ("%.1f"):format(v * 1e3)
  elseif kind == "count" then
    return ("%.0f"):format(v)
  end
  return tostring(v)
end

local SMALL_N, BIG_N = COUNTS.loop.small, COUNTS.loop.big
local function thousands(n)
  return (tostring(n):reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", ""))
end

-- A row: label, kind (number format), the key of each column (lua and jit
-- share `lua`), target text, check(v, node, raw) -> met, ratio(v, node,
-- raw) -> text for the "vs reference" columns.
local function x_node(l, n) return l and n and ("%.1fx Node"):format(l / n) end
local function pct_raw(l, _, r) return l and r and ("%.0f%% of raw C"):format(100 * l / r) end
local rows = {
  { section = ("plain loop: `for i = 1, %s do worker:send(msg) end`, master->worker, return ignored")
      :format(thousands(SMALL_N)) },
  { label = ("loop of %s small sends (msg/s)"):format(thousands(SMALL_N)), kind = "rate",
    lua = "loop_small.msgs_per_s", node = "loop_small.msgs_per_s", raw = "oneway_small.msgs_per_s",
    target = ">= 2.5M and >= 10x Node",
    check = function(l, n) return l and n and l >= 10 * n and l >= 2.5e6 end, ratio = x_node },
  { label = "  time in the sender's loop itself (ms, info)", kind = "s_ms",
    lua = "loop_small.loop_seconds", node = "loop_small.loop_seconds", target = "-" },
  { label = "  sender peak RSS, VmHWM (MiB)", kind = "mb",
    lua = "loop_small.hwm_mb", node = "loop_small.hwm_mb", raw = "sender_hwm_small.mb",
    target = "<= 64 MiB", check = function(l) return l and l <= 64 end,
    ratio = function(l, n) return l and n and ("Node %.1fx larger"):format(n / l) end },
  { label = "  refused sends (ENOBUFS)", kind = "count",
    lua = "loop_small.refused", node = "loop_small.refused", target = "-" },
  { label = "  sends that returned false (over sendHighWaterMark, info)", kind = "count",
    lua = "loop_small.false_returns", node = "loop_small.false_returns", target = "-" },
  { label = ("loop of %s x 64 KiB strings (GB/s)"):format(thousands(BIG_N)), kind = "gb",
    lua = "loop_big.gb_per_s", node = "loop_big.gb_per_s", raw = "oneway_64k.gb_per_s",
    target = ">= 3 GB/s", check = function(l) return l and l >= 3 end,
    ratio = function(l, n, r)
      if not l then return nil end
      local t = {}
      if n then t[#t + 1] = ("%.1fx Node"):format(l / n) end
      if r then t[#t + 1] = ("%.0f%% of raw C"):format(100 * l / r) end
      return table.concat(t, ", ")
    end },
  { label = "  time in the sender's loop itself (ms, info)", kind = "s_ms",
    lua = "loop_big.loop_seconds", node = "loop_big.loop_seconds", target = "-" },
  { label = "  sender peak RSS, VmHWM (MiB)", kind = "mb",
    lua = "loop_big.hwm_mb", node = "loop_big.hwm_mb", raw = "sender_hwm_64k.mb",
    target = "<= 64 MiB", check = function(l) return l and l <= 64 end,
    ratio = function(l, n) return l and n and ("Node %.1fx larger"):format(n / l) end },
  { label = "  refused sends (ENOBUFS)", kind = "count",
    lua = "loop_big.refused", node = "loop_big.refused", target = "-" },
  { label = "  sends that returned false (over sendHighWaterMark, info)", kind = "count",
    lua = "loop_big.false_returns", node = "loop_big.false_returns", target = "-" },
  { section = "windowed sends (bursts with a write callback, at most 2 bursts unwritten: info)" },
  { label = "windowed small, worker->master, bursts of 10,000 (msg/s)", kind = "rate",
    lua = "oneway_small_w2m.msgs_per_s", node = "oneway_small_w2m.msgs_per_s",
    raw = "oneway_small.msgs_per_s", target = "-", ratio = x_node },
  { label = "windowed small, master->worker, bursts of 10,000 (msg/s)", kind = "rate",
    lua = "oneway_small_m2w.msgs_per_s", node = "oneway_small_m2w.msgs_per_s",
    raw = "oneway_small.msgs_per_s", target = "-", ratio = x_node },
  { label = "windowed 64 KiB strings, worker->master, bursts of 16 (GB/s)", kind = "gb",
    lua = "oneway_64k.gb_per_s", node = "oneway_64k.gb_per_s", raw = "oneway_64k.gb_per_s",
    target = "-", ratio = pct_raw },
  { section = "round trips, spawn, memory" },
  { label = "ping-pong (round trips/s)", kind = "rate",
    lua = "pingpong.rt_per_s", node = "pingpong.rt_per_s", raw = "pingpong.rt_per_s",
    target = ">= 80% of raw C",
    check = function(l, _, r) return l and r and l >= 0.8 * r end, ratio = pct_raw },
  { label = "ping-pong (rt/s), raw C column over epoll instead (info)", kind = "rate",
    lua = "pingpong.rt_per_s", node = "pingpong.rt_per_s", raw = "pingpong_epoll.rt_per_s",
    target = "-",
    ratio = function(l, _, r) return l and r and ("%.0f%% of raw C epoll"):format(100 * l / r) end },
  { label = "ping-pong p50 (µs)", kind = "us",
    lua = "pingpong.p50_us", node = "pingpong.p50_us", raw = "pingpong.p50_us", target = "-",
    ratio = function(l, _, r) return l and r and ("%.2fx raw C"):format(l / r) end },
  { label = "ping-pong p99 (µs)", kind = "us",
    lua = "pingpong.p99_us", node = "pingpong.p99_us", raw = "pingpong.p99_us", target = "-",
    ratio = function(l, _, r) return l and r and ("%.2fx raw C"):format(l / r) end },
  { label = "32 workers fork->'online' (ms)", kind = "ms",
    lua = "spawn.ms", node = "spawn.ms", target = "<= 250 ms",
    check = function(l) return l and l <= 250 end,
    ratio = function(l, n) return l and n and ("Node %.1fx slower"):format(n / l) end },
  { label = "idle worker RSS (MB)", kind = "mb",
    lua = "idle_rss.mb", node = "idle_rss.mb", target = "<= 3.5 MB",
    check = function(l) return l and l <= 3.5 end,
    ratio = function(l, n) return l and n and ("Node %.1fx larger"):format(n / l) end },
}

local function cell(s) return s or "-" end
local function first_line(cmd)
  return (capture(cmd .. " 2>&1"):match("[^\n]*"))
end

local lines = {}
local function p(str) lines[#lines + 1] = str end
local lua_name = build_name(lua_bin)
p("")
p(("### bench/ipc: medians of %d runs (%s cores, Node %s, %s%s)"):format(RUNS,
  (capture("nproc 2>/dev/null"):gsub("%s+$", "")),
  (capture("node --version 2>/dev/null"):gsub("%s+$", "")),
  first_line(sh_quote(lua_bin) .. " -v"):match("Lua [%d%.]+") or lua_name,
  jit_bin and (", " .. (first_line(sh_quote(jit_bin) .. " -v"):match("LuaJIT [%w%.%-]+") or "LuaJIT")) or ""))
p("")
p(("| metric | luv-cluster %s | luv-cluster LuaJIT | Node cluster | raw C | %s vs reference"
  .. " | LuaJIT vs reference | target | met (%s / LuaJIT) |"):format(lua_name, lua_name, lua_name))
p("|---|---:|---:|---:|---:|---|---|---|:---:|")
local function met_of(row, v, n, r)
  if not row.check then return "-" end
  if v == nil then return "n/a" end
  return row.check(v, n, r) and "yes" or "**no**"
end
for _, row in ipairs(rows) do
  if row.section then
    p(("| *%s* | | | | | | | | |"):format(row.section))
  else
    local l = get("lua", row.lua)
    local j = get("jit", row.lua)
    local n = row.node and get("node", row.node)
    local r = row.raw and get("raw", row.raw)
    local ratio = row.ratio or function() return nil end
    p(("| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s |"):format(row.label,
      fmt_num(l, row.kind), fmt_num(j, row.kind), row.node and fmt_num(n, row.kind) or "-",
      row.raw and fmt_num(r, row.kind) or "-",
      cell(ratio(l, n, r)), cell(ratio(j, n, r)), row.target,
      met_of(row, l, n, r), met_of(row, j, n, r)))
  end
end
p("")
p(("Per-run values (luv-cluster %s / LuaJIT / Node / raw C):"):format(lua_name))
p("")
for _, row in ipairs(rows) do
  if not row.section then
    local parts = {}
    for _, im in ipairs({ "lua", "jit", "node", "raw" }) do
      local key = row[im == "jit" and "lua" or im]
      local t = key and results[im][key]
      if t and #t > 0 then
        local vs = {}
        for i, v in ipairs(t) do vs[i] = fmt_num(v, row.kind) end
        parts[#parts + 1] = table.concat(vs, ", ")
      else
        parts[#parts + 1] = "-"
      end
    end
    p(("- %s: %s"):format(row.label:gsub("^%s+", ""), table.concat(parts, " / ")))
  end
end
p("")
p("The plain loop: one fresh process per case and interpreter; the master")
p("sends in a for loop (no callback, the return value ignored except that a")
p("refusal is counted), then one end marker; the worker counts what arrives")
p("and answers. Timed from the first send to that answer. Sender RSS is the")
p("master's VmHWM (raw C: the sending child's). Node's loop is the same with")
p("worker.send (it never refuses; it queues). raw C one-way is one figure per")
p("size (the C sender batches frames into large write() calls, the best a")
p("sender can do); its small frames carry a 28-byte payload with the same")
p("5-byte header as luv-cluster's. raw C ping-pong is blocking write + read")
p("(the reference for the target); the 'over epoll' row is the same C")
p("ping-pong over non-blocking sockets waiting in epoll_wait.")
if #failures > 0 then
  p("")
  p("Failed runs: " .. table.concat(failures, "; "))
end
p(("Total time: %d s; load average (1, 5, 15 min) at the start %s, at the end %s"):format(
  os.time() - t_start, load_start, loadavg()))
io.stdout:write(table.concat(lines, "\n"), "\n")
