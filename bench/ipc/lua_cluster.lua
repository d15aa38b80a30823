-- luv-cluster side of bench/ipc: the same modes as node_cluster.js.
--
--   lua5.4 bench/ipc/lua_cluster.lua [small_n [big_n [pingpong_n [spawn_n]]]]
-- (a count of 0 skips that mode)
--
-- Output: one line per figure, `lua <metric> key=value ...`.
-- Each mode uses a fresh worker running lua_worker.lua (mode in BENCH_MODE)
-- and ends by itself: bounded counts, and the master disconnects every worker
-- it forked. Timing: uv.hrtime, by the receiving side (the master for
-- worker->master; for master->worker, from the first send to the worker's
-- {done=n} answer, one message after its last receive).
local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
package.path = dir .. "/?.lua;" .. dir .. "/../../lua/?.lua;" .. dir
  .. "/../../lua/?/init.lua;" .. package.path
-- build/<interpreter>/ (lua5.4, luajit, ...: see the Makefile)
package.cpath = dir .. "/../../build/" .. require("cluster.compat").build_name
  .. "/?.so;" .. package.cpath

local uv = require("luv")
local cluster = require("cluster")
local common = require("bench_common")

local SMALL_N = tonumber(arg[1]) or 1000000
local BIG_N = tonumber(arg[2]) or 20000
local PP_N = tonumber(arg[3]) or 20000
local SPAWN_N = tonumber(arg[4]) or 32

io.stdout:setvbuf("line")

local function abs_path(p)
  if p:sub(1, 1) == "/" then return p end
  return uv.cwd() .. "/" .. p
end

cluster.setup({ exec = abs_path(dir .. "/lua_worker.lua"), args = {} })

local function now() return uv.hrtime() / 1e9 end
local function out(line) io.stdout:write("lua ", line, "\n") end

local forked = {}
local function fail(msg)
  io.stderr:write("lua_cluster.lua: ", msg, "\n")
  for _, w in ipairs(forked) do
    if not w:isDead() then pcall(w.kill, w, "SIGKILL") end
  end
  os.exit(1)
end

local function fork_mode(mode, n)
  local w = cluster.fork({ BENCH_MODE = mode, BENCH_N = tostring(n or 0) })
  forked[#forked + 1] = w
  w:on("error", function(err) fail("worker error: " .. tostring(err)) end)
  return w
end

-- Disconnects the workers, then next() once every one has exited.
local function finish(ws, next)
  local left = #ws
  for _, w in ipairs(ws) do
    w:once("exit", function(code, signal)
      if code ~= 0 then
        io.stderr:write("lua_cluster.lua: worker ", w.id, " exit ",
          tostring(code), " ", tostring(signal), "\n")
      end
      left = left - 1
      if left == 0 then next() end
    end)
    if w:isConnected() then w:disconnect() end
  end
end

local function f(x, d) return string.format("%." .. (d or 0) .. "f", x) end

-- worker -> master one-way: small tables or 64 KiB strings
local function w2m(mode, n, next)
  local w = fork_mode(mode, n)
  local got, t0 = 0, 0
  w:on("message", function(msg)
    if msg == "ready" then
      t0 = now()
      w:send("go")
      return
    end
    got = got + 1
    if mode == "w2m_small" then
      if type(msg) ~= "table" or msg.seq ~= got or msg.text ~= "hello world" then
        fail("out of order: " .. tostring(type(msg) == "table" and msg.seq) .. " ~= " .. got)
      end
    elseif type(msg) ~= "string" or #msg ~= 65536 then
      fail("bad 64 KiB message")
    end
    if got == n then
      local dt = now() - t0
      if mode == "w2m_small" then
        out(("oneway_small_w2m msgs=%d seconds=%s msgs_per_s=%s"):format(n, f(dt, 6), f(n / dt)))
      else
        local bytes = n * 65536
        out(("oneway_64k msgs=%d seconds=%s msgs_per_s=%s bytes_per_s=%s gb_per_s=%s")
          :format(n, f(dt, 6), f(n / dt), f(bytes / dt), f(bytes / dt / 1e9, 3)))
      end
      finish({ w }, next)
    end
  end)
end

-- master -> worker one-way: the worker answers {done=n} after the n-th
local function m2w(n, next)
  local w = fork_mode("m2w_small", n)
  local t0 = 0
  local function send(msg, cb) return w:send(msg, cb) end
  w:on("message", function(msg)
    if msg == "ready" then
      t0 = now()
      common.burst_send(send, n, common.small)
    elseif type(msg) == "table" and msg.done then
      local dt = now() - t0
      if msg.done ~= n then fail("worker got " .. tostring(msg.done)) end
      out(("oneway_small_m2w msgs=%d seconds=%s msgs_per_s=%s"):format(n, f(dt, 6), f(n / dt)))
      finish({ w }, next)
    end
  end)
end

local function pingpong(n, next)
  local w = fork_mode("echo")
  local lat = {}
  local i, t0, ts = 0, 0, 0
  local function ping()
    ts = uv.hrtime()
    w:send({ seq = i + 1, text = "hello world" })
  end
  w:on("message", function(msg)
    if msg == "ready" then
      t0 = now()
      ping()
      return
    end
    lat[i + 1] = uv.hrtime() - ts
    if type(msg) ~= "table" or msg.seq ~= i + 1 then fail("bad pong") end
    i = i + 1
    if i < n then
      ping()
      return
    end
    local dt = now() - t0
    table.sort(lat)
    local function pct(p) return lat[math.floor(p * (n - 1) + 0.5) + 1] / 1e3 end
    out(("pingpong rts=%d seconds=%s rt_per_s=%s p50_us=%s p99_us=%s")
      :format(n, f(dt, 6), f(n / dt), f(pct(0.5), 2), f(pct(0.99), 2)))
    finish({ w }, next)
  end)
end

local function spawn(n, next)
  local ws, online = {}, 0
  local t0 = now()
  for k = 1, n do
    local w = fork_mode("idle")
    ws[k] = w
    w:once("online", function()
      online = online + 1
      if online == n then
        out(("spawn workers=%d ms=%s"):format(n, f((now() - t0) * 1e3, 1)))
        finish(ws, next)
      end
    end)
  end
end

local function read_rss_kb(pid)
  local fh = io.open(("/proc/%d/status"):format(pid), "r")
  if not fh then return nil end
  local s = fh:read("a")
  fh:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

local function rss(next)
  local w = fork_mode("idle")
  w:once("online", function()
    local t = uv.new_timer()
    t:start(500, 0, function()
      t:close()
      local kb = read_rss_kb(w.pid) or fail("cannot read /proc/" .. tostring(w.pid) .. "/status")
      out(("idle_rss kb=%d mb=%s"):format(kb, f(kb / 1024, 2)))
      finish({ w }, next)
    end)
  end)
end

-- a count of 0 skips that mode
local function skip(next) next() end
local steps = {
  SMALL_N > 0 and function(next) w2m("w2m_small", SMALL_N, next) end or skip,
  SMALL_N > 0 and function(next) m2w(SMALL_N, next) end or skip,
  BIG_N > 0 and function(next) w2m("w2m_big", BIG_N, next) end or skip,
  PP_N > 0 and function(next) pingpong(PP_N, next) end or skip,
  SPAWN_N > 0 and function(next) spawn(SPAWN_N, next) end or skip,
  function(next) rss(next) end,
}

-- hard stop in case something hangs
local guard = uv.new_timer()
guard:start(120000, 0, function() fail("timeout") end)
guard:unref()

local s = 0
local function step()
  s = s + 1
  if steps[s] then
    steps[s](step)
  else
    guard:close()
    uv.stop() -- in case the module keeps a handle of its own referenced
  end
end
step()
uv.run()
os.exit(0)
