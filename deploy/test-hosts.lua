-- The scenario of deploy/test-hosts.sh (which makes the network namespaces
-- and starts HAProxy, and removes both on every path): a luv-cluster runner
-- with 2 workers of examples/health_app.lua in each "host" (namespace),
-- a client load through HAProxy on keep-alive connections, and during it
--   1. a rolling reload: SIGHUP to each host in turn, the next once the
--      runner says the reload is done;
--   2. a rolling restart: SIGTERM to each host in turn, wait for the runner
--      to exit, start it again, the next once HAProxy sees it up;
--   3. one host's runner SIGKILLed (its workers die with it), kept down
--      until HAProxy's checks mark it DOWN, then started again.
-- Every request the client sends has one outcome: ok (200 from a host),
-- an HTTP status, the connection closed or failed before the answer, or a
-- timeout. Outcomes are counted per phase (by when they happen) and ok
-- answers per host. Exit 0 when phases 1 and 2 lost nothing, every
-- graceful stop exited 0 well before --stop-timeout, and phase 3 lost at
-- most the requests that were in flight on the killed host.
--
-- Environment (set by test-hosts.sh): TH_HOSTS ("name=netns=address,..."),
-- TH_FRONT (HAProxy's host:port), HAPROXY_ADMIN_SOCKET, TH_LOGDIR,
-- TH_LUA (the runners' interpreter), TH_CLIENTS (connections, default 32),
-- TH_APP (another app to run, for comparisons).
local uv = require("luv")

local ROOT = uv.cwd()
local BIN = ROOT .. "/bin/luv-cluster"
local APP = os.getenv("TH_APP") or ROOT .. "/examples/health_app.lua"
local LUA = assert(os.getenv("TH_LUA"), "TH_LUA")
local ADMIN = assert(os.getenv("HAPROXY_ADMIN_SOCKET"), "HAPROXY_ADMIN_SOCKET")
local LOGDIR = assert(os.getenv("TH_LOGDIR"), "TH_LOGDIR")
local FRONT_HOST, FRONT_PORT = assert(os.getenv("TH_FRONT"), "TH_FRONT"):match("^(.*):(%d+)$")
FRONT_PORT = tonumber(FRONT_PORT)
local CLIENTS = tonumber(os.getenv("TH_CLIENTS") or "") or 32
local WORKERS = 2
local STOP_TIMEOUT_MS = 10000   -- the runners' --stop-timeout
local PROMPT_STOP_MS = 3000     -- a graceful stop must end well before it
local REQUEST_TIMEOUT_MS = 10000
local SCENARIO_MS = 180000      -- the whole run, at most

local hosts = {}
for name, ns, address in (os.getenv("TH_HOSTS") or ""):gmatch("([%w_]+)=([%w_%-]+)=([%d.]+)") do
  hosts[#hosts + 1] = { name = name, ns = ns, address = address, lines = {}, starts = 0 }
end
assert(#hosts >= 2, "TH_HOSTS names fewer than two hosts")

local t_start = uv.now()
local function now_s() return (uv.now() - t_start) / 1000 end
local function say(fmt, ...)
  io.stdout:write(("[%6.2fs] "):format(now_s()), fmt:format(...), "\n")
  io.stdout:flush()
end

-- Run the loop until cond() holds or timeout_ms passes; returns cond().
local function wait(cond, timeout_ms)
  if cond() then return true end
  uv.update_time()
  local deadline = uv.now() + timeout_ms
  local timer, prepare = uv.new_timer(), uv.new_prepare()
  timer:start(10, 10, function() if uv.now() >= deadline then uv.stop() end end)
  prepare:start(function() if cond() then uv.stop() end end)
  uv.run("default")
  timer:close()
  prepare:close()
  uv.run("nowait")
  return cond() and true or false
end
-- Let the load run for ms (no condition: a span of traffic).
local function hold(ms)
  local t = uv.now() + ms
  wait(function() return uv.now() >= t end, ms + 1000)
end

local failures = {} -- what went wrong in the scenario itself
local function check(ok, what)
  if not ok then
    failures[#failures + 1] = what
    say("FAILED: %s", what)
  end
  return ok
end

-- Runners -------------------------------------------------------------------

local function count_lines(h, pattern, from)
  local n = 0
  for i = from or 1, #h.lines do if h.lines[i]:find(pattern) then n = n + 1 end end
  return n
end

local function start_host(h)
  h.starts = h.starts + 1
  h.lines, h.exited, h.code, h.signal, h.worker_pids = {}, false, nil, nil, {}
  local log = assert(io.open(("%s/%s.log"):format(LOGDIR, h.name), "a"))
  log:write(("--- start %d at %.2fs\n"):format(h.starts, now_s()))
  local out, err_out = uv.new_pipe(false), uv.new_pipe(false)
  local env = { "PORT=8080", "BIND=0.0.0.0", "APP_HOST_NAME=" .. h.name }
  for k, v in pairs(uv.os_environ()) do
    if k ~= "PORT" and k ~= "BIND" and k ~= "APP_HOST_NAME" then env[#env + 1] = k .. "=" .. v end
  end
  local handle, pid
  handle, pid = uv.spawn("ip", {
    args = { "netns", "exec", h.ns, LUA, BIN, "-w", tostring(WORKERS), "--stop-timeout",
      STOP_TIMEOUT_MS .. "ms", APP },
    env = env, cwd = ROOT, stdio = { nil, out, err_out },
  }, function(code, signal)
    h.exited, h.code, h.signal, h.exit_at = true, code, signal ~= 0 and signal or nil, uv.now()
    handle:close()
  end)
  assert(handle, pid)
  h.pid = pid
  -- stdout and stderr lines, both to the log and h.lines.
  local open = 2
  local function reader(pipe)
    local buf = ""
    pipe:read_start(function(_, data)
      if not data then
        pipe:close()
        open = open - 1
        if open == 0 then log:close() end
        return
      end
      buf = buf .. data
      for line in buf:gmatch("([^\n]*)\n") do
        log:write(line, "\n")
        h.lines[#h.lines + 1] = line
        local wpid = line:match("^luv%-cluster: worker %d+ %(pid (%d+)%) started")
        if wpid then h.worker_pids[#h.worker_pids + 1] = tonumber(wpid) end
      end
      buf = buf:match("[^\n]*$")
    end)
  end
  reader(out)
  reader(err_out)
end

local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read("*a")
  f:close()
  return stat:match("%) (%a) ") ~= "Z"
end

local function workers_gone(h)
  for _, pid in ipairs(h.worker_pids) do if alive(pid) then return false end end
  return true
end

-- HAProxy's view, from its admin socket ---------------------------------------

local stat = { servers = {}, backend = {} } -- servers[name] = status; backend = counters of the backend row
local function poll_stats()
  local pipe = uv.new_pipe(false)
  local buf = ""
  pipe:connect(ADMIN, function(err)
    if err then pipe:close() return end
    pipe:write("show stat\n")
    pipe:read_start(function(rerr, data)
      if data then buf = buf .. data return end
      pipe:close()
      if rerr then return end
      local cols
      for line in buf:gmatch("[^\n]+") do
        local fields = {}
        for f in (line .. ","):gmatch("([^,]*),") do fields[#fields + 1] = f end
        if line:sub(1, 2) == "# " then
          cols = {}
          fields[1] = fields[1]:sub(3)
          for i, name in ipairs(fields) do cols[name] = i end
        elseif cols and fields[cols.pxname] == "app" then
          local sv = fields[cols.svname]
          if sv == "BACKEND" then
            for _, k in ipairs({ "wretr", "wredis", "econ", "eresp", "connect", "reuse" }) do
              stat.backend[k] = tonumber(fields[cols[k]]) or 0
            end
          else
            stat.servers[sv] = fields[cols.status]
          end
        end
      end
      stat.at = uv.now()
    end)
  end)
end
local stat_timer = uv.new_timer()
stat_timer:start(0, 100, poll_stats)

-- A fresh reading of HAProxy's counters (one taken after this call).
local function fresh_stats()
  local t = uv.now()
  wait(function() return stat.at and stat.at > t end, 2000)
  local copy = {}
  for k, v in pairs(stat.backend) do copy[k] = v end
  return copy
end

local function all_up()
  for _, h in ipairs(hosts) do if stat.servers[h.name] ~= "UP" then return false end end
  return true
end

-- The client load -----------------------------------------------------------

local phase -- the phase outcomes go to
local phases = {}
local function new_phase(name)
  if phase then phase.ended = phase.ended or uv.now() end
  phase = { name = name, counts = {}, hosts = {}, workers = {}, first = {}, started = uv.now() }
  phases[#phases + 1] = phase
  return phase
end
local function outcome(kind, detail)
  phase.counts[kind] = (phase.counts[kind] or 0) + 1
  if kind ~= "ok" and #phase.first < 10 then
    phase.first[#phase.first + 1] = ("%.2fs %s%s"):format(now_s(), kind, detail and (" " .. detail) or "")
  end
end

local REQUEST = "GET /load HTTP/1.1\r\nHost: lb.test\r\n\r\n"
local stopping = false
local conns = {}
local inflight = 0

local function open_conn(slot)
  if stopping then return end
  local c = { tcp = uv.new_tcp(), buf = "", slot = slot }
  conns[slot] = c
  local function gone(kind, detail)
    -- The connection ended: an outstanding request failed with it.
    if c.dead then return end
    c.dead = true
    if c.sent_at then
      inflight = inflight - 1
      c.sent_at = nil
      outcome(kind, detail)
    end
    if not c.tcp:is_closing() then c.tcp:close() end
    if conns[slot] == c then conns[slot] = nil end
    -- Reconnect on a later turn: a refused connect does not spin.
    local t = uv.new_timer()
    t:start(10, 0, function() t:close() open_conn(slot) end)
  end
  local function send()
    if stopping then
      c.dead = true
      c.tcp:close()
      conns[slot] = nil
      return
    end
    c.sent_at = uv.now()
    inflight = inflight + 1
    c.tcp:write(REQUEST, function(err) if err then gone("write error", err) end end)
  end
  c.gone = gone
  c.tcp:connect(FRONT_HOST, FRONT_PORT, function(err)
    if err then
      -- No request was sent yet, but one was due: count it.
      inflight = inflight + 1
      c.sent_at = uv.now()
      return gone("connect error", err)
    end
    c.tcp:read_start(function(rerr, data)
      if rerr then return gone("connection error", rerr) end
      if not data then return gone("closed before the answer") end
      c.buf = c.buf .. data
      while c.sent_at do
        local head_end = c.buf:find("\r\n\r\n", 1, true)
        if not head_end then return end
        local head = c.buf:sub(1, head_end + 1)
        local len = tonumber(head:match("\r\n[Cc]ontent%-[Ll]ength: *(%d+)") or "0")
        if #c.buf < head_end + 3 + len then return end
        local body = c.buf:sub(head_end + 4, head_end + 3 + len)
        c.buf = c.buf:sub(head_end + 4 + len)
        local status = head:match("^HTTP/1%.%d (%d+)")
        inflight = inflight - 1
        c.sent_at = nil
        local host, who = body:match("^host (%S+) (worker %S+ pid %d+)")
        if status == "200" and host then
          outcome("ok")
          phase.hosts[host] = (phase.hosts[host] or 0) + 1
          phase.workers[host .. " " .. who] = true
        else
          outcome("HTTP " .. tostring(status))
        end
        if head:lower():find("\r\nconnection: close", 1, true) then return gone() end
        send()
      end
    end)
    send()
  end)
end

local sweep = uv.new_timer()
sweep:start(250, 250, function()
  local t = uv.now()
  for _, c in pairs(conns) do
    if c.sent_at and t - c.sent_at > REQUEST_TIMEOUT_MS then c.gone("timeout") end
  end
end)

-- The scenario -----------------------------------------------------------------

local function summary(p)
  local total, failed, kinds = 0, 0, {}
  for k, n in pairs(p.counts) do
    total = total + n
    if k ~= "ok" then
      failed = failed + n
      kinds[#kinds + 1] = ("%s: %d"):format(k, n)
    end
  end
  table.sort(kinds)
  return total, failed, table.concat(kinds, ", ")
end

local function run_phase(name, fn)
  local before = fresh_stats()
  local p = new_phase(name)
  say("phase: %s", name)
  fn(p)
  p.ended = uv.now()
  local after = fresh_stats()
  p.retries = (after.wretr or 0) - (before.wretr or 0)
  p.redispatches = (after.wredis or 0) - (before.wredis or 0)
  p.connects = (after.connect or 0) - (before.connect or 0)
  p.reuses = (after.reuse or 0) - (before.reuse or 0)
  local total, failed, kinds = summary(p)
  say("phase done: %s: %d requests, %d failed%s", name, total, failed, kinds ~= "" and (" (" .. kinds .. ")") or "")
end

local notes = {}
local function note(fmt, ...)
  local line = fmt:format(...)
  notes[#notes + 1] = line
  say("%s", line)
end

local function scenario()
  for _, h in ipairs(hosts) do start_host(h) end
  for _, h in ipairs(hosts) do
    assert(wait(function() return count_lines(h, "ready after") >= WORKERS or h.exited end, 10000)
      and not h.exited, h.name .. " did not get ready:\n" .. table.concat(h.lines, "\n"))
  end
  assert(wait(all_up, 15000), "HAProxy does not see every host UP")
  say("%d hosts ready, HAProxy sees them UP; %d client connections", #hosts, CLIENTS)

  new_phase("warm-up")
  for slot = 1, CLIENTS do open_conn(slot) end

  run_phase("steady load", function() hold(2000) end)

  run_phase("1. rolling reload (SIGHUP each host in turn)", function()
    for _, h in ipairs(hosts) do
      local done, exits = count_lines(h, "reload done"), count_lines(h, "exited with code")
      local t0 = uv.now()
      uv.kill(h.pid, "sighup")
      local reloaded = wait(function() return count_lines(h, "reload done") > done end, 15000)
      if check(reloaded, h.name .. ": reload not done") then
        -- The old workers drain and exit on their own, well before --stop-timeout.
        check(wait(function() return count_lines(h, "exited with code") >= exits + WORKERS end, PROMPT_STOP_MS),
          h.name .. ": the old workers did not exit promptly")
        note("%s: reload done and old workers gone %d ms after SIGHUP (%d exited with code 0, %d killed)", h.name,
          uv.now() - t0, count_lines(h, "exited with code 0 after %d+ ms, reload$"), count_lines(h, "SIGKILL"))
        check(count_lines(h, "SIGKILL") == 0, h.name .. ": a worker was killed during the reload")
      end
      hold(500)
    end
  end)

  run_phase("2. rolling restart (SIGTERM, wait for exit, start; each host in turn)", function()
    for _, h in ipairs(hosts) do
      local t0 = uv.now()
      uv.kill(h.pid, "sigterm")
      if check(wait(function() return h.exited end, STOP_TIMEOUT_MS + 5000), h.name .. ": runner did not exit") then
        local took = h.exit_at - t0
        note("%s: graceful stop took %d ms, runner exit code %s%s", h.name, took, tostring(h.code),
          h.signal and (" signal " .. h.signal) or "")
        check(h.code == 0, h.name .. ": runner exit code " .. tostring(h.code))
        check(took < PROMPT_STOP_MS, ("%s: stop took %d ms"):format(h.name, took))
      end
      wait(function() return workers_gone(h) end, 3000)
      start_host(h)
      check(wait(function() return count_lines(h, "ready after") >= WORKERS end, 10000), h.name .. ": not ready")
      check(wait(all_up, 10000), h.name .. ": HAProxy does not see it UP")
      note("%s: back and UP in HAProxy %d ms after the SIGTERM", h.name, uv.now() - t0)
      hold(500)
    end
  end)

  run_phase("3. one host's runner SIGKILLed, restarted once HAProxy marks it DOWN", function()
    local h = hosts[2]
    local t0 = uv.now()
    uv.kill(h.pid, "sigkill")
    check(wait(function() return h.exited and workers_gone(h) end, 5000), h.name .. ": not dead")
    note("%s: runner and workers dead %d ms after SIGKILL", h.name, uv.now() - t0)
    check(wait(function() return stat.servers[h.name] == "DOWN" end, 15000),
      h.name .. ": HAProxy never marked it DOWN")
    note("%s: HAProxy marked it DOWN %d ms after the SIGKILL", h.name, uv.now() - t0)
    start_host(h)
    check(wait(function() return count_lines(h, "ready after") >= WORKERS end, 10000), h.name .. ": not ready")
    check(wait(all_up, 15000), h.name .. ": HAProxy does not see it UP again")
    note("%s: UP again %d ms after the SIGKILL", h.name, uv.now() - t0)
    hold(1000)
  end)

  -- Stop the load: every outstanding request gets its outcome.
  new_phase("wind-down")
  stopping = true
  check(wait(function() return inflight == 0 end, REQUEST_TIMEOUT_MS + 2000), "requests still outstanding")
  for _, c in pairs(conns) do if not c.tcp:is_closing() then c.tcp:close() end end

  -- The runners stop gracefully with nothing to drain.
  for _, h in ipairs(hosts) do uv.kill(h.pid, "sigterm") end
  for _, h in ipairs(hosts) do
    check(wait(function() return h.exited end, STOP_TIMEOUT_MS + 5000) and h.code == 0,
      h.name .. ": final stop exit " .. tostring(h.code))
  end
end

local overall = uv.new_timer()
overall:start(SCENARIO_MS, 0, function()
  io.stderr:write("test-hosts: the scenario overran ", SCENARIO_MS, " ms\n")
  os.exit(1)
end)
overall:unref()

local ok, err = xpcall(scenario, debug.traceback)
if not ok then check(false, tostring(err)) end
stat_timer:close()
sweep:close()
overall:close()

-- Figures ---------------------------------------------------------------------

io.stdout:write("\n| phase | requests | ok | failed | failures | HAProxy retries / redispatches |"
  .. " server conns new / reused |")
for _, h in ipairs(hosts) do io.stdout:write(" ", h.name, " |") end
io.stdout:write(" seconds |\n|---|---:|---:|---:|---|---:|---:|")
for _ = 1, #hosts do io.stdout:write("---:|") end
io.stdout:write("---:|\n")
for _, p in ipairs(phases) do
  local total, failed, kinds = summary(p)
  io.stdout:write(("| %s | %d | %d | %d | %s | %s |"):format(p.name, total, p.counts.ok or 0, failed,
    kinds ~= "" and kinds or "-", p.retries and (p.retries .. " / " .. p.redispatches) or "-"))
  io.stdout:write(p.connects and (" %d / %d |"):format(p.connects, p.reuses) or " - |")
  for _, h in ipairs(hosts) do io.stdout:write(" ", p.hosts[h.name] or 0, " |") end
  io.stdout:write((" %.1f |\n"):format(((p.ended or uv.now()) - p.started) / 1000))
end
for _, p in ipairs(phases) do
  if #p.first > 0 then
    io.stdout:write("\nfirst failures in '", p.name, "':\n  ", table.concat(p.first, "\n  "), "\n")
  end
end
io.stdout:write("\n", table.concat(notes, "\n"), "\n")

for _, p in ipairs(phases) do
  local _, failed = summary(p)
  if p.name:match("^[12]%.") then
    check(failed == 0, ("%d requests failed in '%s'"):format(failed, p.name))
  elseif p.name:match("^3%.") then
    -- At most what was in flight on the killed host: one request per
    -- client connection.
    check(failed <= CLIENTS, ("%d requests failed in '%s'"):format(failed, p.name))
  else
    check(failed == 0, ("%d requests failed in '%s'"):format(failed, p.name))
  end
end

if #failures > 0 then
  io.stdout:write("\ntest-hosts: FAILED\n  ", table.concat(failures, "\n  "), "\n")
  os.exit(1)
end
io.stdout:write(("\ntest-hosts: ok (%.1f s)\n"):format(now_s()))
os.exit(0)
