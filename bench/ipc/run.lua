-- bench/ipc runner (`make bench`): builds the raw C baseline, runs the
-- luv-cluster, Node cluster and raw socketpair benchmarks BENCH_RUNS times
-- (default 3, interleaved so that a noisy moment hits all of them), and
-- prints one markdown table of the medians against the targets.
--
--   lua5.4 bench/ipc/run.lua            (from the repository root, after make)
--   BENCH_RUNS=1 lua5.4 bench/ipc/run.lua
--
-- Counts per run (each run ends by itself within seconds):
local COUNTS = {
  raw = { small = 20000000, big = 40000, pingpong = 20000, pingpong_epoll = 20000 },
  node = { small = 200000, big = 2000, pingpong = 20000, spawn = 32 },
  lua = { small = 1000000, big = 20000, pingpong = 20000, spawn = 32 },
}
local RUNS = tonumber(os.getenv("BENCH_RUNS") or "") or 3
local TIMEOUT = 150 -- seconds, per implementation run

local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
local root = dir .. "/../.."
local lua_bin = os.getenv("LUA") or "lua5.4"
do -- the interpreter running this script, when it can be found
  local i, prog = 0, nil
  while arg[i] do prog = arg[i]; i = i - 1 end
  if prog and prog ~= "" then lua_bin = prog end
end

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function capture(cmd)
  local p = io.popen(cmd, "r")
  local outp = p:read("a")
  local ok, how, code = p:close()
  return outp, ok, how, code
end

local function have(cmd)
  local o = capture("command -v " .. cmd .. " 2>/dev/null")
  return o ~= ""
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

local impls = {}
if raw_bin then
  impls[#impls + 1] = { name = "raw", cmd = ("%s %d %d %d %d"):format(sh_quote(raw_bin),
    COUNTS.raw.small, COUNTS.raw.big, COUNTS.raw.pingpong, COUNTS.raw.pingpong_epoll) }
end
if have("node") then
  local c = COUNTS.node
  impls[#impls + 1] = { name = "node", cmd = ("node %s %d %d %d %d"):format(
    sh_quote(dir .. "/node_cluster.js"), c.small, c.big, c.pingpong, c.spawn) }
else
  io.stderr:write("run.lua: node not found, skipping Node cluster\n")
end
do
  local c = COUNTS.lua
  impls[#impls + 1] = { name = "lua", cmd = ("%s %s %d %d %d %d"):format(
    sh_quote(lua_bin), sh_quote(dir .. "/lua_cluster.lua"), c.small, c.big, c.pingpong, c.spawn) }
end

-- results[impl][metric.key] = { values... }
local results = { raw = {}, node = {}, lua = {} }
local failures = {}

local function parse(impl, text)
  for line in text:gmatch("[^\n]+") do
    local who, metric, rest = line:match("^(%w+) ([%w_]+) (.*)$")
    if who == impl and metric then
      for k, v in rest:gmatch("([%w_]+)=([%d%.eE+-]+)") do
        local key = metric .. "." .. k
        local t = results[impl][key] or {}
        results[impl][key] = t
        t[#t + 1] = tonumber(v)
      end
    end
  end
end

local t_start = os.time()
for r = 1, RUNS do
  for _, im in ipairs(impls) do
    io.stderr:write(("run %d/%d: %s ...\n"):format(r, RUNS, im.name))
    local o, ok, how, code = capture(timeout_prefix .. im.cmd)
    io.stderr:write(o)
    if not ok then
      failures[#failures + 1] = ("%s run %d: %s %s"):format(im.name, r, tostring(how), tostring(code))
      io.stderr:write("run.lua: ", failures[#failures], "\n")
    end
    parse(im.name, o)
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
  end
  return tostring(v)
end

local rows = {
  { label = "one-way small, worker->master (msg/s)", kind = "rate",
    lua = "oneway_small_w2m.msgs_per_s", node = "oneway_small_w2m.msgs_per_s",
    raw = "oneway_small.msgs_per_s", target = ">= 10x Node and >= 1.5M",
    check = function(l, n) return l and n and l >= 10 * n and l >= 1.5e6 end,
    ratio = function(l, n) return l and n and ("%.1fx Node"):format(l / n) end },
  { label = "one-way small, master->worker (msg/s)", kind = "rate",
    lua = "oneway_small_m2w.msgs_per_s", node = "oneway_small_m2w.msgs_per_s",
    raw = "oneway_small.msgs_per_s", target = ">= 10x Node and >= 1.5M",
    check = function(l, n) return l and n and l >= 10 * n and l >= 1.5e6 end,
    ratio = function(l, n) return l and n and ("%.1fx Node"):format(l / n) end },
  { label = "one-way 64 KiB strings (GB/s)", kind = "gb",
    lua = "oneway_64k.gb_per_s", node = "oneway_64k.gb_per_s", raw = "oneway_64k.gb_per_s",
    target = ">= 1.5 GB/s",
    check = function(l) return l and l >= 1.5 end,
    ratio = function(l, _, r)
      if not l then return nil end
      local s = ("%.2fx target"):format(l / 1.5)
      if r then s = s .. (" (%.0f%% of raw C)"):format(100 * l / r) end
      return s
    end },
  { label = "ping-pong (round trips/s)", kind = "rate",
    lua = "pingpong.rt_per_s", node = "pingpong.rt_per_s", raw = "pingpong.rt_per_s",
    target = ">= 80% of raw C",
    check = function(l, _, r) return l and r and l >= 0.8 * r end,
    ratio = function(l, _, r) return l and r and ("%.0f%% of raw C"):format(100 * l / r) end },
  { label = "ping-pong (rt/s), raw C column over epoll instead (info)", kind = "rate",
    lua = "pingpong.rt_per_s", node = "pingpong.rt_per_s", raw = "pingpong_epoll.rt_per_s",
    target = "-",
    ratio = function(l, _, r) return l and r and ("%.0f%% of raw C epoll"):format(100 * l / r) end },
  { label = "ping-pong p50 (µs)", kind = "us",
    lua = "pingpong.p50_us", node = "pingpong.p50_us", raw = "pingpong.p50_us",
    target = "-",
    ratio = function(l, _, r) return l and r and ("%.2fx raw C"):format(l / r) end },
  { label = "ping-pong p99 (µs)", kind = "us",
    lua = "pingpong.p99_us", node = "pingpong.p99_us", raw = "pingpong.p99_us",
    target = "-",
    ratio = function(l, _, r) return l and r and ("%.2fx raw C"):format(l / r) end },
  { label = "32 workers fork->'online' (ms)", kind = "ms",
    lua = "spawn.ms", node = "spawn.ms", target = "<= 250 ms",
    check = function(l) return l and l <= 250 end,
    ratio = function(l, n)
      if not l then return nil end
      local s = ("%.2fx target"):format(l / 250)
      if n then s = s .. (" (Node %.1fx slower)"):format(n / l) end
      return s
    end },
  { label = "idle worker RSS (MB)", kind = "mb",
    lua = "idle_rss.mb", node = "idle_rss.mb", target = "<= 3.5 MB",
    check = function(l) return l and l <= 3.5 end,
    ratio = function(l, n)
      if not l then return nil end
      local s = ("%.2fx target"):format(l / 3.5)
      if n then s = s .. (" (Node %.1fx larger)"):format(n / l) end
      return s
    end },
}

local function cell(s) return s or "n/a" end

local lines = {}
local function p(s) lines[#lines + 1] = s end
p("")
p(("### bench/ipc: medians of %d runs (%s cores, Node %s, %s)"):format(RUNS,
  (capture("nproc 2>/dev/null"):gsub("%s+$", "")),
  (capture("node --version 2>/dev/null"):gsub("%s+$", "")),
  (capture(sh_quote(lua_bin) .. " -v 2>&1"):match("Lua [%d%.]+") or "Lua")))
p("")
p("| metric | luv-cluster | Node cluster | raw C | luv-cluster vs reference | target | met |")
p("|---|---:|---:|---:|---|---|:---:|")
for _, row in ipairs(rows) do
  local l = get("lua", row.lua)
  local n = row.node and get("node", row.node)
  local r = row.raw and get("raw", row.raw)
  local met = "-"
  if row.check then
    if l == nil then met = "n/a" else met = row.check(l, n, r) and "yes" or "**no**" end
  end
  p(("| %s | %s | %s | %s | %s | %s | %s |"):format(row.label, fmt_num(l, row.kind),
    fmt_num(n, row.kind), row.raw and fmt_num(r, row.kind) or "-",
    cell(row.ratio(l, n, r)), row.target, met))
end
p("")
p("Per-run values (luv-cluster / Node / raw C):")
p("")
for _, row in ipairs(rows) do
  local parts = {}
  for _, im in ipairs({ "lua", "node", "raw" }) do
    local key = row[im]
    local t = key and results[im][key]
    if t and #t > 0 then
      local vs = {}
      for i, v in ipairs(t) do vs[i] = fmt_num(v, row.kind) end
      parts[#parts + 1] = table.concat(vs, ", ")
    else
      parts[#parts + 1] = "-"
    end
  end
  p(("- %s: %s"):format(row.label, table.concat(parts, " / ")))
end
p("")
p("raw C one-way small is one figure (the C baseline is symmetric); its frames")
p("carry a 28-byte payload with the same 5-byte header as luv-cluster's. raw C")
p("ping-pong is blocking write + read (the reference for the target); the")
p("'over epoll' row is the same C ping-pong over non-blocking sockets waiting")
p("in epoll_wait, i.e. what an event loop costs before any Lua runs.")
if #failures > 0 then
  p("")
  p("Failed runs: " .. table.concat(failures, "; "))
end
p(("Total time: %d s"):format(os.time() - t_start))
io.stdout:write(table.concat(lines, "\n"), "\n")
