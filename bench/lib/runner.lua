-- The driver side shared by bench/http/run.lua, bench/balance/run.lua and
-- bench/upgrade/run.lua: starting and stopping the processes a run needs,
-- waiting on the loop, and telling how much of the machine's CPU other
-- processes took during a run (this machine is shared; such a run is
-- suspect and may be done again). Plain luv, no cluster; Lua 5.1 to 5.4 and
-- LuaJIT, since `make bench-balance` and `make bench-upgrade` run their
-- drivers under $(LUA).
--
-- sleep, wait_for, stop, wait_ready, wait_quiet and run_quiet yield: call
-- them from the coroutine the runner does its work in, with uv.run() going.
local uv = require("luv")

local M = {}

-- A run during which other processes took more than this share of the
-- machine's CPU is marked suspect (and may be done again).
M.BUSY = 0.15
local STOP_MS = 10000 -- a process must end within this after SIGTERM

-- The interpreter running this script (the first of arg[-1], arg[-2], ...),
-- else lua5.4: what a driver runs itself again under.
function M.self_bin()
  local i, prog = 0, nil
  while arg[i] do prog = arg[i]; i = i - 1 end
  return (prog and prog ~= "") and prog or "lua5.4"
end

-- The interpreter the servers run under: LUA, else self_bin().
function M.lua_bin()
  local bin = os.getenv("LUA")
  return (bin and bin ~= "") and bin or M.self_bin()
end

-- Whether a command of that name is on PATH.
function M.have(name)
  local r = os.execute("command -v " .. name .. " >/dev/null 2>&1")
  return r == true or r == 0 -- 5.2+ say true, 5.1 and LuaJIT 0
end

-- The name of an interpreter's build directory (build/<name>/, see
-- Makefile): lua5.1 .. lua5.4 or luajit.
function M.build_name(bin)
  local p = io.popen("'" .. bin:gsub("'", "'\\''") .. "'"
    .. [[ -e 'io.write(jit and "luajit" or "lua" .. _VERSION:match("%d+%.%d+"))' 2>/dev/null]], "r")
  local name = p:read("*a")
  p:close()
  return name
end

-- The cluster core that interpreter loads from the checkout at root, and
-- whether it is built.
function M.core_of(root, bin)
  local path = root .. "/build/" .. M.build_name(bin) .. "/cluster/core.so"
  local f = io.open(path, "rb")
  if f then f:close() end
  return path, f ~= nil
end

-- Files -----------------------------------------------------------------------

-- The whole of a file, or nil when it cannot be read.
function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function M.write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  assert(f:close())
end

-- Time and waiting -----------------------------------------------------------

function M.sleep(ms)
  local co = coroutine.running()
  local t = uv.new_timer()
  t:start(ms, 0, function()
    t:close()
    assert(coroutine.resume(co))
  end)
  coroutine.yield()
end

-- Polls pred() every step ms (default 20) until it holds or timeout_ms passed.
function M.wait_for(pred, timeout_ms, step)
  local deadline = uv.now() + timeout_ms
  while not pred() do
    if uv.now() >= deadline then return false end
    M.sleep(step or 20)
  end
  return true
end

-- A port nobody listens on now (the kernel's pick), for the next server.
function M.free_port()
  local s = uv.new_tcp()
  assert(s:bind("127.0.0.1", 0))
  local port = s:getsockname().port
  s:close()
  return port
end

-- Processes -----------------------------------------------------------------

-- This process's environment for a child, as uv.spawn takes it: without
-- the variables whose names match a pattern of drop (the runner's own
-- settings, which must not reach a server that reads the same names),
-- then extra's.
function M.env_list(extra, drop)
  local e = {}
  for k, v in pairs(uv.os_environ()) do
    local keep = extra[k] == nil
    for _, pat in ipairs(drop) do
      if k:match(pat) then keep = false end
    end
    if keep then e[#e + 1] = k .. "=" .. v end
  end
  for k, v in pairs(extra) do e[#e + 1] = k .. "=" .. v end
  return e
end

-- Starts file with args and env (a list from env_list); its stdout is
-- collected whole (p.out) and as complete lines (p.lines), each also
-- handed to p.on_line(line) if the caller set it. Its stderr is ours, or
-- with keep_stderr collected as lines too (p.err_lines), for a process that
-- talks a lot or whose complaints the caller reports itself. p.eof: all of
-- its output has ended. Returns p, or nil and why.
function M.start(file, args, env, keep_stderr)
  local p = { out = "", lines = {}, err_lines = {}, exited = false, eof = false, file = file }
  local out = uv.new_pipe(false)
  local err = keep_stderr and uv.new_pipe(false) or nil
  local handle, pid = uv.spawn(file, { args = args, env = env, stdio = { nil, out, err or 2 } },
    function(code, signal)
      p.exited, p.code, p.signal = true, code, signal
      p.handle:close()
    end)
  if not handle then
    out:close()
    if err then err:close() end
    return nil, pid
  end
  p.handle, p.pid, p.pipes = handle, pid, { out, err }
  local open = err and 2 or 1
  -- Collects pipe's lines into lines (a line not ended yet waits for the
  -- next read); stdout's also into p.out and to p.on_line.
  local function read_lines(pipe, lines, stdout)
    local partial = ""
    pipe:read_start(function(rerr, data)
      if rerr or not data then
        if partial ~= "" then lines[#lines + 1] = partial end
        pipe:close()
        open = open - 1
        p.eof = open == 0
        return
      end
      if stdout then p.out = p.out .. data end
      partial = partial .. data
      for line in partial:gmatch("([^\n]*)\n") do
        if line ~= "" then
          lines[#lines + 1] = line
          if stdout and p.on_line then p.on_line(line) end
        end
      end
      partial = partial:match("[^\n]*$")
    end)
  end
  read_lines(out, p.lines, true)
  if err then read_lines(err, p.err_lines, false) end
  return p
end

-- True while the process runs (a zombie does not count); any process, not
-- only our children: a server's workers, the runners an upgrade starts.
function M.alive(pid)
  local stat = M.read_file("/proc/" .. pid .. "/stat")
  local state = stat and stat:match("%) (%a) ")
  return state ~= nil and state ~= "Z"
end

-- Stops p by its pid: SIGTERM, then SIGKILL (p and extra_pids, e.g. the
-- workers of a server whose master did not end them) after STOP_MS; waits
-- for its exit and for the end of its output, which its workers hold open
-- too. False when it had to be killed.
function M.stop(p, extra_pids)
  local function gone() return p.exited and p.eof end
  if not p.exited then uv.kill(p.pid, "sigterm") end
  if M.wait_for(gone, STOP_MS) then return true end
  io.stderr:write(("run.lua: %s (pid %d) did not stop, SIGKILL\n"):format(p.file, p.pid))
  if not p.exited then uv.kill(p.pid, "sigkill") end
  for _, pid in ipairs(extra_pids or {}) do uv.kill(pid, "sigkill") end
  if not M.wait_for(gone, 3000) and not p.eof then
    p.eof = true
    for _, pipe in ipairs(p.pipes) do
      if not pipe:is_closing() then pipe:close() end
    end
  end
  return false
end

-- Waits for a server's "ready" line (the protocol of bench/lib/server.lua
-- and node_server.js); false when it exited first or timeout_ms passed.
function M.wait_ready(p, timeout_ms)
  return M.wait_for(function()
    if p.exited then return true end
    for _, l in ipairs(p.lines) do
      if l:match("^ready") then return true end
    end
    return false
  end, timeout_ms) and not p.exited
end

-- CPU time, in clock ticks ----------------------------------------------------

-- The machine's total and busy (user, nice, system, steal) ticks since boot
-- (/proc/stat; nil without it). irq and softirq time is charged to no
-- process and the run's own loopback traffic makes most of it: left out of
-- busy, so that it does not count as other processes' use.
local function machine_ticks()
  local f = io.open("/proc/stat", "r")
  if not f then return nil end
  local line = f:read("*l")
  f:close()
  -- user nice system idle iowait irq softirq steal (guest is inside user)
  local total, busy, i = 0, 0, 0
  for v in line:gmatch("%d+") do
    i = i + 1
    v = tonumber(v)
    if i <= 8 then total = total + v end
    if i == 1 or i == 2 or i == 3 or i == 8 then busy = busy + v end
  end
  return total, busy
end

-- utime + stime of one process, + cutime + cstime (its reaped children's,
-- e.g. wrk's for the runner) when with_children.
local function proc_ticks(pid, with_children)
  local f = io.open(("/proc/%s/stat"):format(pid), "r")
  if not f then return 0 end
  local rest = (f:read("*l") or ""):match("%) (.*)$") -- after the command name
  f:close()
  if not rest then return 0 end
  local fields = {}
  for v in rest:gmatch("%S+") do fields[#fields + 1] = v end
  -- rest starts at field 3 (state); utime is field 14
  local n = (tonumber(fields[12]) or 0) + (tonumber(fields[13]) or 0)
  if with_children then n = n + (tonumber(fields[14]) or 0) + (tonumber(fields[15]) or 0) end
  return n
end

-- pid and its children now: a server's master and its workers.
function M.server_pids(pid)
  local pids = { pid }
  local f = io.open(("/proc/%d/task/%d/children"):format(pid, pid), "r")
  if f then
    for c in f:read("*a"):gmatch("%d+") do pids[#pids + 1] = tonumber(c) end
    f:close()
  end
  return pids
end

local function pids_ticks(pids)
  local n = 0
  for _, pid in ipairs(pids) do n = n + proc_ticks(pid, false) end
  return n
end

-- Starts measuring; the function it returns ends the measurement and
-- returns the share of the machine's CPU that other processes took
-- meanwhile (its busy time less the server's (pids), the runner's and its
-- reaped children's; nil without /proc/stat) and the ticks the server's
-- processes used.
function M.cpu_window(pids)
  local m0, b0 = machine_ticks()
  local s0 = pids_ticks(pids)
  local o0 = proc_ticks("self", true) + s0
  return function()
    local m1, b1 = machine_ticks()
    local s1 = pids_ticks(pids)
    local o1 = proc_ticks("self", true) + s1
    local others
    if m0 and m1 > m0 then others = math.max(0, ((b1 - b0) - (o1 - o0)) / (m1 - m0)) end
    return others, s1 - s0
  end
end

-- Waits (at most max_s seconds) for a second in which the machine is less
-- than 10% busy; nothing of the runner's runs meanwhile.
function M.wait_quiet(max_s)
  local deadline = uv.now() + max_s * 1000
  while uv.now() < deadline do
    local t0, b0 = machine_ticks()
    if not t0 then return end
    M.sleep(1000)
    local t1, b1 = machine_ticks()
    if t1 > t0 and (b1 - b0) / (t1 - t0) < 0.10 then return end
  end
end

-- Calls run(attempt) (attempt 0, 1, ...) until busy_of(its first result),
-- other processes' share during it, is not above BUSY, at most 1 + retries
-- times, after a quiet second (up to 30 s of waiting) each time again: the
-- last attempt counts. Returns run's two results and how many runs were
-- done again.
function M.run_quiet(retries, run, busy_of)
  local again, a, b = 0, nil, nil
  for attempt = 0, retries do
    if attempt > 0 then
      again = again + 1
      M.wait_quiet(30)
    end
    a, b = run(attempt)
    local busy = a and busy_of(a)
    if not (busy and busy > M.BUSY) then break end
  end
  return a, b, again
end

-- Figures ---------------------------------------------------------------------

-- The median of a list of numbers (NaNs left out); nil when there are none.
function M.median(values)
  local s = {}
  for _, v in ipairs(values) do
    if v == v then s[#s + 1] = v end
  end
  local n = #s
  if n == 0 then return nil end
  table.sort(s)
  if n % 2 == 1 then return s[(n + 1) / 2] end
  return (s[n / 2] + s[n / 2 + 1]) / 2
end

return M
