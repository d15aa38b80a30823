-- The cluster side shared by bench/http/lua_server.lua and
-- bench/balance/server.lua: the master and the plumbing of a worker; what a
-- worker answers is the server's own. Runs under every interpreter the
-- benches use (Lua 5.1 to 5.4, LuaJIT).
--
-- The protocol the runners (bench/lib/runner.lua) rely on: the master
-- prints a line starting "ready" once every worker listens. On SIGINT or
-- SIGTERM, or at the end of its lifetime (so that a forgotten server stops
-- by itself), it asks each worker for its figures ("stats"), prints one
-- line per worker, disconnects them and exits.
local M = {}

-- This checkout's library and the core built for the running interpreter
-- (build/<name>/, see the Makefile) come first: a server runs the code of
-- the checkout it is in. The checkout is found from this file's own path.
local root = debug.getinfo(1, "S").source:match("^@(.*)/lib/[^/]*$") .. "/.."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua" .. _VERSION:match("%d+%.%d+"))
  .. "/?.so;" .. package.cpath

local uv = require("luv")
local cluster = require("cluster")

M.HOST = "127.0.0.1"
M.WORKERS = tonumber(os.getenv("BENCH_WORKERS") or "") or 2

-- Runs the master and exits. o.name prefixes its messages; o.lifetime is
-- in seconds; o.ready(address) is the "ready ..." line; o.report(id, stats)
-- is worker id's line (stats nil when it did not answer in time);
-- o.env(i), if given, adds to worker i's environment. Workers listen on
-- BENCH_PORT, which the runner picked. The caller sets the cluster up
-- (policy, balance) first.
function M.master(o)
  io.stdout:setvbuf("line")
  local port = tonumber(os.getenv("BENCH_PORT") or "")
  if not port then
    io.stderr:write(o.name, ": set BENCH_PORT\n")
    os.exit(2)
  end
  local workers, listening, stopping = {}, 0, false
  local sigint, sigterm, life = uv.new_signal(), uv.new_signal(), uv.new_timer()

  local function kill_all_and_exit(code)
    for _, w in ipairs(workers) do
      if not w:isDead() then pcall(w.kill, w, "SIGKILL") end
    end
    os.exit(code)
  end

  local function stop()
    if stopping then return end
    stopping = true
    local stats, left = {}, 0
    local hard = uv.new_timer()
    -- Whatever happens below, the master is gone within 5 seconds.
    hard:start(5000, 0, function()
      io.stderr:write(o.name, ": workers did not finish, killing them\n")
      kill_all_and_exit(1)
    end)
    local function finish()
      for _, w in ipairs(workers) do print(o.report(w.id, stats[w.id])) end
      cluster.disconnect(function()
        hard:close()
        for _, h in ipairs({ sigint, sigterm, life }) do
          if not h:is_closing() then h:close() end
        end
      end)
    end
    -- A worker that does not answer within 2 s is reported without figures.
    local wait = uv.new_timer()
    for _, w in ipairs(workers) do
      if w:isConnected() then
        left = left + 1
        w:once("message", function(msg)
          if type(msg) == "table" then stats[w.id] = msg end
          left = left - 1
          if left == 0 and not wait:is_closing() then
            wait:close()
            finish()
          end
        end)
        w:send("stats")
      end
    end
    if left == 0 then
      wait:close()
      finish()
    else
      wait:start(2000, 0, function()
        wait:close()
        finish()
      end)
    end
  end

  cluster:on("listening", function(_, address)
    listening = listening + 1
    if listening == M.WORKERS then print(o.ready(address)) end
  end)
  -- A worker lost during the run spoils its figures: end the run.
  cluster:on("exit", function(w, code, signal)
    if not stopping then
      io.stderr:write(("%s: worker %d exited (%s) before the end\n"):format(o.name, w.id,
        signal or ("code " .. tostring(code))))
      stopping = true
      kill_all_and_exit(1)
    end
  end)

  for i = 1, M.WORKERS do
    local env = { BENCH_PORT = tostring(port) }
    for k, v in pairs(o.env and o.env(i) or {}) do env[k] = v end
    workers[i] = cluster.fork(env)
  end
  sigint:start("sigint", stop)
  sigterm:start("sigterm", stop)
  life:start(o.lifetime * 1000, 0, stop)
  uv.run()
  os.exit(0)
end

-- Runs a worker: listens on HOST:BENCH_PORT (the bind goes through the
-- master, under cluster.schedulingPolicy) and hands each connection to
-- o.serve(client, close), where close(client) ends it; every connection
-- still open is closed when the master disconnects the worker. o.stats()
-- is the table sent back for "stats". o.name prefixes its messages.
function M.worker(o)
  local me = cluster.worker
  local port = tonumber(os.getenv("BENCH_PORT") or "")
  local clients = {} -- open connections

  local function close(client)
    clients[client] = nil
    if not client:is_closing() then client:close() end
  end

  local server = uv.new_tcp()
  local ok, err = server:bind(M.HOST, port)
  if ok then
    ok, err = server:listen(1024, function(lerr)
      if lerr then
        io.stderr:write(o.name, ": worker ", me.id, " listen: ", lerr, "\n")
        return
      end
      local client = uv.new_tcp()
      if server:accept(client) then
        clients[client] = true
        o.serve(client, close)
      else
        client:close()
      end
    end)
  end
  if not ok then
    io.stderr:write(("%s: worker %d cannot listen on %s:%s: %s\n"):format(o.name, me.id, M.HOST,
      tostring(port), tostring(err)))
    os.exit(1)
  end

  me:on("message", function(msg)
    if msg == "stats" then me:send(o.stats()) end
  end)
  -- Ctrl-C reaches the whole process group: the master collects the figures.
  local sigint = uv.new_signal()
  sigint:start("sigint", function() end)
  me:on("disconnect", function()
    if not server:is_closing() then server:close() end
    for c in pairs(clients) do close(c) end
    sigint:close()
  end)
  uv.run()
end

return M
