-- The plain loop of sends, the way a user writes it: the master calls
-- worker:send(msg) n times in a row, no chunking, no callback, the return
-- value ignored (as a Node user ignores process.send's), except that a
-- refusal (`false, "ENOBUFS: ..."`, the queue at maxQueueSize) is counted.
-- The worker (lua_worker.lua, BENCH_MODE=count) counts what arrives and
-- answers {done = count} when the master's end marker {fin = queued} comes
-- (send order is kept, so the marker is behind every message).
--
--   lua5.4 bench/ipc/lua_loop.lua small|big n
--
-- One case per process: the sender's peak RSS (VmHWM of this process, the
-- master) is the case's own. Output, one line:
--   lua loop_<kind> msgs=n seconds=.. msgs_per_s=.. [gb_per_s=..]
--       refused=.. false_returns=.. hwm_kb=.. hwm_mb=.. base_hwm_mb=..
-- Timing: uv.hrtime, from just before the first send to the worker's
-- {done} answer arriving; loop_seconds is the time spent in the loop
-- itself (the sender's own part).
local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
package.path = dir .. "/?.lua;" .. dir .. "/../../lua/?.lua;" .. dir
  .. "/../../lua/?/init.lua;" .. package.path
-- build/<interpreter>/ (lua5.4, luajit, ...: see the Makefile)
package.cpath = dir .. "/../../build/" .. require("cluster.compat").build_name
  .. "/?.so;" .. package.cpath

local uv = require("luv")
local cluster = require("cluster")
local common = require("bench_common")

local KIND = arg[1] or "small"
local N = tonumber(arg[2]) or (KIND == "small" and 200000 or 20000)
if KIND ~= "small" and KIND ~= "big" then
  io.stderr:write("usage: lua_loop.lua small|big n\n")
  os.exit(2)
end

local function abs_path(p)
  if p:sub(1, 1) == "/" then return p end
  return uv.cwd() .. "/" .. p
end

local function vm_hwm_kb()
  local fh = assert(io.open("/proc/self/status", "r"))
  local s = fh:read("*a")
  fh:close()
  return tonumber(s:match("VmHWM:%s*(%d+)"))
end

local function fail(msg, w)
  io.stderr:write("lua_loop.lua: ", msg, "\n")
  if w and not w:isDead() then pcall(w.kill, w, "SIGKILL") end
  os.exit(1)
end

cluster.setup({ exec = abs_path(dir .. "/lua_worker.lua"), args = {} })
local w = cluster.fork({ BENCH_MODE = "count", BENCH_KIND = KIND })
w:on("error", function(err) fail("worker error: " .. tostring(err), w) end)

-- The messages: the same small table as the other modes ({seq = i, text =
-- "hello world"}, made per send as a program would), or one 64 KiB string.
local SMALL_TEXT, BIG = common.SMALL_TEXT, common.BIG

local t0, t_loop, refused, false_returns, base_hwm = 0, 0, 0, 0, 0
w:on("message", function(msg)
  if msg == "ready" then
    collectgarbage()
    base_hwm = vm_hwm_kb()
    t0 = uv.hrtime()
    -- the loop itself
    if KIND == "small" then
      for i = 1, N do
        local ok, err = w:send({ seq = i, text = SMALL_TEXT })
        if not ok then
          if err then refused = refused + 1 else false_returns = false_returns + 1 end
        end
      end
    else
      for _ = 1, N do
        local ok, err = w:send(BIG)
        if not ok then
          if err then refused = refused + 1 else false_returns = false_returns + 1 end
        end
      end
    end
    t_loop = uv.hrtime()
    -- the end marker; a refused one waits for 'drain' (not part of the
    -- user's loop: only so that the count can end)
    local fin = { fin = N - refused }
    local ok, err = w:send(fin)
    if not ok and err then
      local function again()
        local ok2, err2 = w:send(fin)
        if not ok2 and err2 then w:once("drain", again) end
      end
      w:once("drain", again)
    end
  elseif type(msg) == "table" and msg.done then
    local dt = (uv.hrtime() - t0) / 1e9
    if msg.done ~= N - refused then
      fail(("worker counted %s, %d were queued"):format(tostring(msg.done), N - refused), w)
    end
    local hwm = vm_hwm_kb()
    local line = ("lua loop_%s msgs=%d seconds=%.6f msgs_per_s=%.0f loop_seconds=%.6f")
      :format(KIND, N, dt, N / dt, (t_loop - t0) / 1e9)
    if KIND == "big" then
      line = line .. (" gb_per_s=%.3f"):format(N * 65536 / dt / 1e9)
    end
    line = line .. (" refused=%d false_returns=%d hwm_kb=%d hwm_mb=%.2f base_hwm_mb=%.2f")
      :format(refused, false_returns, hwm, hwm / 1024, base_hwm / 1024)
    io.stdout:write(line, "\n")
    io.stdout:flush()
    w:once("exit", function() uv.stop() end)
    w:disconnect()
  end
end)

local guard = uv.new_timer()
guard:start(120000, 0, function() fail("timeout", w) end)
guard:unref()

uv.run()
os.exit(0)
