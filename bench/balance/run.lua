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
local BUSY = 0.15
local BALANCES = { "roundrobin", "leastconn" }

local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
if dir:sub(1, 1) ~= "/" then dir = uv.cwd() .. "/" .. dir end
local lua_bin = os.getenv("LUA") or "lua5.4"
if not os.getenv("LUA") then
  local i, prog = 0, nil
  while arg[i] do prog = arg[i]; i = i - 1 end
  if prog and prog ~= "" then lua_bin = prog end
end

local function sleep(ms)
  local co = coroutine.running()
  local t = uv.new_timer()
  t:start(ms, 0, function() t:close(); assert(coroutine.resume(co)) end)
  coroutine.yield()
end

local function wait_for(cond, timeout_ms)
  local deadline = uv.now() + timeout_ms
  while not cond() do
    if uv.now() > deadline then return false end
    sleep(10)
  end
  return true
end

local function free_port()
  local s = uv.new_tcp()
  assert(s:bind("127.0.0.1", 0))
  local port = s:getsockname().port
  s:close()
  return port
end

-- The server, its stdout lines collected.
local function start_server(balance, port)
  local p = { lines = {}, exited = false, eof = false }
  local env = { "BENCH_PORT=" .. port, "BENCH_BALANCE=" .. balance, "BENCH_POLL_MS=" .. POLL_MS }
  for k, v in pairs(uv.os_environ()) do
    if not k:match("^LUA_CLUSTER_") and not k:match("^BENCH_") then env[#env + 1] = k .. "=" .. v end
  end
  local pipe = uv.new_pipe(false)
  local handle, pid = uv.spawn(lua_bin, { args = { dir .. "/server.lua", tostring(SECONDS * 4 + 60) },
    env = env, stdio = { nil, pipe, 2 } }, function(code, signal)
    p.exited, p.code, p.signal = true, code, signal
    p.handle:close()
  end)
  assert(handle, pid)
  p.handle, p.pid = handle, pid
  local buf = ""
  pipe:read_start(function(err, data)
    if err or not data then p.eof = true; pipe:close(); return end
    buf = buf .. data
    for line in buf:gmatch("([^\n]*)\n") do p.lines[#p.lines + 1] = line end
    buf = buf:match("[^\n]*$")
  end)
  return p
end

local function stop_server(p)
  if not p.exited then uv.kill(p.pid, "sigterm") end
  if not wait_for(function() return p.exited and p.eof end, 10000) then
    if not p.exited then uv.kill(p.pid, "sigkill") end
    wait_for(function() return p.exited end, 3000)
  end
end

-- Other processes' share of the CPU --------------------------------------

-- The machine's total and busy (user, nice, system, steal) clock ticks.
-- irq and softirq time is charged to no process and the run's own
-- loopback traffic makes most of it: left out.
local function machine_ticks()
  local f = io.open("/proc/stat", "r")
  if not f then return nil end
  local line = f:read("*l")
  f:close()
  local total, busy, i = 0, 0, 0
  for v in line:gmatch("%d+") do
    i = i + 1
    v = tonumber(v)
    if i <= 8 then total = total + v end
    if i == 1 or i == 2 or i == 3 or i == 8 then busy = busy + v end
  end
  return total, busy
end

-- utime + stime of a process.
local function proc_ticks(pid)
  local f = io.open(("/proc/%s/stat"):format(pid), "r")
  if not f then return 0 end
  local rest = (f:read("*l") or ""):match("%) (.*)$")
  f:close()
  if not rest then return 0 end
  local fields = {}
  for v in rest:gmatch("%S+") do fields[#fields + 1] = v end
  return (tonumber(fields[12]) or 0) + (tonumber(fields[13]) or 0)
end

local function tree_ticks(pids)
  local n = proc_ticks("self")
  for _, pid in ipairs(pids) do n = n + proc_ticks(pid) end
  return n
end

local function children_of(pid)
  local pids = { pid }
  local f = io.open(("/proc/%d/task/%d/children"):format(pid, pid), "r")
  if f then
    for c in f:read("*a"):gmatch("%d+") do pids[#pids + 1] = tonumber(c) end
    f:close()
  end
  return pids
end

-- Waits (at most max_s seconds) for a second in which the machine is less
-- than 10% busy.
local function wait_quiet(max_s)
  local deadline = uv.now() + max_s * 1000
  while uv.now() < deadline do
    local t0, b0 = machine_ticks()
    if not t0 then return end
    sleep(1000)
    local t1, b1 = machine_ticks()
    if t1 > t0 and (b1 - b0) / (t1 - t0) < 0.10 then return end
  end
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
  local port = free_port()
  local p = start_server(balance, port)
  local ready = wait_for(function()
    for _, l in ipairs(p.lines) do if l:match("^ready") then return true end end
    return p.exited
  end, 20000)
  if not ready or p.exited then
    io.stderr:write("run.lua: the server did not get ready\n")
    stop_server(p)
    os.exit(1)
  end
  local pids = children_of(p.pid)
  local m0, b0 = machine_ticks()
  local o0 = tree_ticks(pids)
  local r = load(port, rate)
  local m1, b1 = machine_ticks()
  local o1 = tree_ticks(pids)
  stop_server(p)
  local others = (m0 and m1 > m0) and math.max(0, ((b1 - b0) - (o1 - o0)) / (m1 - m0)) or nil
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
  local s
  for attempt = 0, RETRY_BUSY do
    if attempt > 0 then
      retried = retried + 1
      wait_quiet(30)
    end
    s = run_one(balance, rate)
    if not (s.others and s.others > BUSY) then break end
  end
  results[rate] = results[rate] or {}
  results[rate][balance] = results[rate][balance] or {}
  table.insert(results[rate][balance], s)
end

local function median(list, field)
  local v = {}
  for _, s in ipairs(list) do if s[field] then v[#v + 1] = s[field] end end
  table.sort(v)
  if #v == 0 then return nil end
  if #v % 2 == 1 then return v[(#v + 1) / 2] end
  return (v[#v / 2] + v[#v / 2 + 1]) / 2
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

local co = coroutine.create(function()
  local ok, err = pcall(main)
  if not ok then io.stderr:write("run.lua: ", tostring(err), "\n") os.exit(1) end
end)
assert(coroutine.resume(co))
uv.run()
