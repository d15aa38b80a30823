-- bench/balance runner (`make bench-balance`): p99 latency under "rr" with
-- settings.balance = roundrobin vs leastconn, when one of two workers
-- blocks its loop for 5 ms on every 10th request it answers (see
-- server.lua), under a mix of
--
--   BENCH_RATE (1000,3000) requests per second (a list: two table rows
--                        per rate), each on a new connection
--                        ("R"), so every one goes through the master's
--                        dispatch; open loop: started on schedule (every
--                        millisecond, those due), whether or not earlier
--                        ones were answered. Their latency, from connect
--                        to answer, is the figure
--   BENCH_KEEPALIVE (4)  clients sending a request every
--                        BENCH_KEEPALIVE_MS (10) on one connection each
--                        (pinned to the worker they got)
--   BENCH_LONGPOLL (16)  long polls: a connection waits BENCH_POLL_MS (500)
--                        for its answer, then a new one is opened
--
-- The clients are this process (Lua on luv). BENCH_RUNS (3) runs of
-- BENCH_SECONDS (5) per balance and rate, interleaved (roundrobin,
-- leastconn, then the other way round); the first 0.5 s of each is not
-- measured. Medians of the runs, one markdown table. At 1000/s the busy
-- worker is blocked about a third of the time under roundrobin; at 3000/s
-- round robin gives it more than it can answer.
--
--   lua5.4 bench/balance/run.lua       (from the repository root, after make)
--
-- The clients and the server share the machine's cores, so the figures
-- compare the two balances with each other, not with anything else. A run
-- during which other processes took more than 15% of the machine's CPU is
-- done again (after waiting up to 30 s for a quiet second), up to
-- BENCH_RETRY_BUSY (2) times; the table says how busy the machine was.
local uv = require("luv")
local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
package.path = dir .. "/../?.lua;" .. package.path
local lib = require("lib.runner")

local RUNS = tonumber(os.getenv("BENCH_RUNS") or "") or 3
local SECONDS = tonumber(os.getenv("BENCH_SECONDS") or "") or 5
local RATES = {}
for r in (os.getenv("BENCH_RATE") or "1000,3000"):gmatch("%d+") do RATES[#RATES + 1] = tonumber(r) end
local KEEPALIVE = tonumber(os.getenv("BENCH_KEEPALIVE") or "") or 4
local KEEPALIVE_MS = tonumber(os.getenv("BENCH_KEEPALIVE_MS") or "") or 10
local LONGPOLL = tonumber(os.getenv("BENCH_LONGPOLL") or "") or 16
local POLL_MS = tonumber(os.getenv("BENCH_POLL_MS") or "") or 500
local WARMUP_MS = 500
local RETRY_BUSY = tonumber(os.getenv("BENCH_RETRY_BUSY") or "") or 2
local BUSY = lib.BUSY
local BALANCES = { "roundrobin", "leastconn" }

if dir:sub(1, 1) ~= "/" then dir = uv.cwd() .. "/" .. dir end
local lua_bin = lib.lua_bin()
local sleep = lib.sleep

-- The server, its stdout lines collected; BENCH_* of ours stay out of its
-- environment (it reads BENCH_BUSY_MS, BENCH_WORKERS, ... from there).
local function start_server(balance, port)
  local env = lib.env_list({ BENCH_PORT = tostring(port), BENCH_BALANCE = balance,
    BENCH_POLL_MS = tostring(POLL_MS) }, { "^LUA_CLUSTER_", "^BENCH_" })
  return assert(lib.start(lua_bin, { dir .. "/server.lua", tostring(SECONDS * 4 + 60) }, env))
end

-- Load ---------------------------------------------------------------------

local function percentile(sorted, q)
  if #sorted == 0 then return nil end
  return sorted[math.max(1, math.ceil(#sorted * q))]
end

-- One run against the server on port: latencies (ms) and counts.
local function load(port, rate)
  local r = { newconn = {}, keepalive = {}, by_worker = {}, errors = 0, polls = 0, polls_busy = 0 }
  local t_start = uv.hrtime()
  local measuring, running = false, true
  local open = {} -- every client handle, closed at the end

  local function new_tcp()
    local c = uv.new_tcp()
    open[c] = true
    return c
  end
  local function close(c)
    open[c] = nil
    if not c:is_closing() then c:close() end
  end

  -- One request on a new connection.
  local function newconn_request()
    local c, t0, buf, counted = new_tcp(), uv.hrtime(), "", measuring
    c:connect("127.0.0.1", port, function(err)
      if err then
        r.errors = r.errors + 1
        return close(c)
      end
      c:read_start(function(rerr, data)
        if rerr or not data then
          r.errors = r.errors + 1
          return close(c)
        end
        buf = buf .. data
        local id = buf:match("^(%d+)\n")
        if not id then return end
        if counted then
          r.newconn[#r.newconn + 1] = (uv.hrtime() - t0) / 1e6
          r.by_worker[id] = (r.by_worker[id] or 0) + 1
        end
        close(c)
      end)
      c:write("R\n")
    end)
  end

  -- Every millisecond, the requests due by now at `rate` per second.
  local ticker, started = uv.new_timer(), 0
  ticker:start(1, 1, function()
    local due = math.floor((uv.hrtime() - t_start) / 1e9 * rate)
    while started < due do
      started = started + 1
      newconn_request()
    end
  end)

  local function keepalive_client()
    local c, buf, t0 = new_tcp(), "", 0
    local pause = uv.new_timer()
    local function ask()
      if not running then return pause:close() end
      t0 = uv.hrtime()
      c:write("R\n")
    end
    c:connect("127.0.0.1", port, function(err)
      if err then r.errors = r.errors + 1; pause:close(); return close(c) end
      c:read_start(function(rerr, data)
        if rerr or not data then r.errors = r.errors + 1; return close(c) end
        buf = buf .. data
        while buf:find("\n", 1, true) do
          buf = buf:gsub("^[^\n]*\n", "", 1)
          if measuring then r.keepalive[#r.keepalive + 1] = (uv.hrtime() - t0) / 1e6 end
          pause:start(KEEPALIVE_MS, 0, ask)
        end
      end)
      ask()
    end)
  end

  local function longpoll_client()
    if not running then return end
    local c = new_tcp()
    c:connect("127.0.0.1", port, function(err)
      if err then r.errors = r.errors + 1; close(c); return longpoll_client() end
      c:read_start(function(rerr, data)
        close(c)
        if rerr or not data then
          r.errors = r.errors + 1
        elseif measuring then
          r.polls = r.polls + 1
          if data:match("^1\n") then r.polls_busy = r.polls_busy + 1 end
        end
        longpoll_client()
      end)
      c:write("P\n")
    end)
  end

  for _ = 1, LONGPOLL do longpoll_client() end
  for _ = 1, KEEPALIVE do keepalive_client() end
  sleep(WARMUP_MS)
  measuring = true
  local t_measure = uv.hrtime()
  sleep(SECONDS * 1000)
  measuring = false
  r.seconds = (uv.hrtime() - t_measure) / 1e9
  running = false
  ticker:close()
  -- Requests still in flight get a moment to be answered (and counted).
  sleep(100)
  for c in pairs(open) do close(c) end
  sleep(50)
  r.total_s = (uv.hrtime() - t_start) / 1e9
  table.sort(r.newconn)
  table.sort(r.keepalive)
  return r
end

-- Runs ---------------------------------------------------------------------

local results = {} -- rate -> balance -> list of run summaries

local function run_one(balance, rate)
  local port = lib.free_port()
  local p = start_server(balance, port)
  if not lib.wait_ready(p, 20000) then
    io.stderr:write("run.lua: the server did not get ready\n")
    lib.stop(p)
    os.exit(1)
  end
  local cpu = lib.cpu_window(lib.server_pids(p.pid))
  local r = load(port, rate)
  local others = cpu()
  lib.stop(p)
  local busy_ms
  for _, l in ipairs(p.lines) do
    local id, b = l:match("^worker (%d+) requests %d+ busy (%d+)")
    if id == "1" then busy_ms = tonumber(b) end
  end
  local n = #r.newconn
  local on_busy = r.by_worker["1"] or 0
  local slow = 0 -- answered after 2 ms or more: most met a blocked loop
  for i = n, 1, -1 do
    if r.newconn[i] < 2 then break end
    slow = slow + 1
  end
  local s = {
    others = others,
    slow = n > 0 and slow / n or nil,
    p999 = percentile(r.newconn, 0.999),
    rps = n / r.seconds,
    p50 = percentile(r.newconn, 0.50), p90 = percentile(r.newconn, 0.90),
    p99 = percentile(r.newconn, 0.99), max = r.newconn[n],
    ka_p99 = percentile(r.keepalive, 0.99), ka_rps = #r.keepalive / r.seconds,
    busy_share = n > 0 and on_busy / n or nil, busy_ms = busy_ms, errors = r.errors, polls = r.polls,
    polls_busy = r.polls > 0 and r.polls_busy / r.polls or nil,
  }
  io.stderr:write(("run.lua: %d/s %-10s others %s,"):format(rate, balance,
    others and ("%.0f%%"):format(100 * others) or "?"))
  io.stderr:write((" new-conn %6.0f req/s p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f max %.1f ms,"
    .. " %.1f%% >= 2 ms, %.0f%% on the busy worker (busy %s ms), keep-alive p99 %.2f ms, %d polls"
    .. " (%.0f%% on the busy worker), %d errors\n"):format(s.rps, s.p50 or 0, s.p90 or 0, s.p99 or 0,
    s.p999 or 0, s.max or 0, 100 * (s.slow or 0), 100 * (s.busy_share or 0), tostring(busy_ms),
    s.ka_p99 or 0, s.polls, 100 * (s.polls_busy or 0), s.errors))
  return s
end

-- One run, done again while other processes were busy during it.
local retried = 0
local function run_counted(balance, rate)
  local s, _, again = lib.run_quiet(RETRY_BUSY, function() return run_one(balance, rate) end,
    function(run) return run.others end)
  retried = retried + again
  results[rate] = results[rate] or {}
  results[rate][balance] = results[rate][balance] or {}
  table.insert(results[rate][balance], s)
end

-- The median of one figure over a list of run summaries.
local function median(list, field)
  local v = {}
  for _, s in ipairs(list) do if s[field] then v[#v + 1] = s[field] end end
  return lib.median(v)
end

local function main()
  for run = 1, RUNS do
    local order = run % 2 == 1 and { 1, 2 } or { 2, 1 }
    for _, rate in ipairs(RATES) do
      for _, i in ipairs(order) do run_counted(BALANCES[i], rate) end
    end
  end
  local function f(v, fmt) return v and fmt:format(v) or "n/a" end
  print(("### bench/balance: medians of %d runs of %d s; new-connection requests at %s per second, %d keep-alive"
    .. " clients (one request per %d ms), %d long polls (%d ms); 2 workers, worker 1 busy-waits 5 ms every 10th"
    .. " request; %s, %s cores"):format(RUNS, SECONDS, table.concat(RATES, " and "), KEEPALIVE, KEEPALIVE_MS,
    LONGPOLL, POLL_MS, lua_bin, io.popen("nproc"):read("*l") or "?"))
  print("")
  print("| rate/s | balance | new-conn req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | answered in >= 2 ms"
    .. " | share on the busy worker | busy worker's ms blocked | long polls on the busy worker"
    .. " | keep-alive req/s | keep-alive p99 ms | errors |")
  print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for _, rate in ipairs(RATES) do for _, b in ipairs(BALANCES) do
    local list = results[rate][b]
    local errors = 0
    for _, s in ipairs(list) do errors = errors + s.errors end
    print(("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |"):format(rate, b,
      f(median(list, "rps"), "%.0f"), f(median(list, "p50"), "%.2f"), f(median(list, "p90"), "%.2f"),
      f(median(list, "p99"), "%.2f"), f(median(list, "p999"), "%.2f"), f(median(list, "max"), "%.1f"),
      f(median(list, "slow") and 100 * median(list, "slow"), "%.1f%%"),
      f(median(list, "busy_share") and 100 * median(list, "busy_share"), "%.0f%%"),
      f(median(list, "busy_ms"), "%.0f"),
      f(median(list, "polls_busy") and 100 * median(list, "polls_busy"), "%.0f%%"), f(median(list, "ka_rps"), "%.0f"),
      f(median(list, "ka_p99"), "%.2f"), errors))
  end end
  local worst, suspect, all = 0, 0, 0
  for _, rate in ipairs(RATES) do
    for _, b in ipairs(BALANCES) do
      for _, s in ipairs(results[rate][b]) do
        all = all + 1
        if s.others and s.others > worst then worst = s.others end
        if s.others and s.others > BUSY then suspect = suspect + 1 end
      end
    end
  end
  print("")
  print(("Other processes' CPU use during a run: at most %.0f%% of the machine; %d of %d runs above %d%%%s%s.")
    :format(100 * worst, suspect, all, 100 * BUSY,
      suspect > 0 and " (their figures are suspect: rerun on a quiet machine)" or "",
      retried > 0 and ("; %d runs done again for that"):format(retried) or ""))
end

-- No pcall around main: Lua 5.1 cannot yield across it. An error after
-- main's first wait surfaces from the resume in bench/lib/runner.lua, which
-- luv reports before it ends the process.
local ok, err = coroutine.resume(coroutine.create(main))
if not ok then io.stderr:write("run.lua: ", tostring(err), "\n") os.exit(1) end
uv.run()
