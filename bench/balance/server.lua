-- Server side of bench/balance: a master forks BENCH_WORKERS (2) workers
-- under "rr" with settings.balance = BENCH_BALANCE (roundrobin or
-- leastconn); each worker runs a plain luv TCP line server on
-- 127.0.0.1:BENCH_PORT:
--
--   "R\n"  a request: answered at once with "<worker id>\n"
--   "P\n"  a long poll: answered with "<worker id>\n" after BENCH_POLL_MS
--
-- A connection may carry any number of them (keep-alive). Worker 1 is the
-- busy one: every 10th request it answers first busy-waits BENCH_BUSY_MS
-- (5) ms, which blocks its whole loop, as a handler doing synchronous work
-- would.
--
--   BENCH_PORT=8080 BENCH_BALANCE=leastconn lua5.4 bench/balance/server.lua [seconds]
--
-- The master prints "ready" once every worker listens, and on SIGTERM or
-- SIGINT (or after `seconds`, default 120) prints one line per worker,
-- "worker <id> requests <n> busy <ms>", disconnects them and exits.
local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
package.path = dir .. "/../../lua/?.lua;" .. dir .. "/../../lua/?/init.lua;" .. package.path
package.cpath = dir .. "/../../build/" .. (rawget(_G, "jit") and "luajit" or "lua" .. _VERSION:match("%d+%.%d+"))
  .. "/?.so;" .. package.cpath

local uv = require("luv")
local cluster = require("cluster")

local WORKERS = tonumber(os.getenv("BENCH_WORKERS") or "") or 2
local HOST = "127.0.0.1"

io.stdout:setvbuf("line")

if cluster.isMaster then
  local port = tonumber(os.getenv("BENCH_PORT") or "")
  if not port then
    io.stderr:write("server.lua: set BENCH_PORT\n")
    os.exit(2)
  end
  cluster.schedulingPolicy = "rr"
  cluster.setup({ balance = os.getenv("BENCH_BALANCE") or "roundrobin" })
  local lifetime = tonumber(arg[1]) or 120
  local workers, listening, stopping = {}, 0, false
  local sigint, sigterm, life = uv.new_signal(), uv.new_signal(), uv.new_timer()

  local function stop()
    if stopping then return end
    stopping = true
    local stats, left = {}, 0
    local hard = uv.new_timer()
    hard:start(5000, 0, function()
      for _, w in ipairs(workers) do if not w:isDead() then pcall(w.kill, w, "SIGKILL") end end
      os.exit(1)
    end)
    local function finish()
      for _, w in ipairs(workers) do
        local s = stats[w.id] or {}
        print(("worker %d requests %s busy %s"):format(w.id, tostring(s.requests or "n/a"),
          tostring(s.busy_ms or "n/a")))
      end
      cluster.disconnect(function()
        hard:close()
        for _, h in ipairs({ sigint, sigterm, life }) do if not h:is_closing() then h:close() end end
      end)
    end
    for _, w in ipairs(workers) do
      if w:isConnected() then
        left = left + 1
        w:once("message", function(msg)
          if type(msg) == "table" then stats[w.id] = msg end
          left = left - 1
          if left == 0 then finish() end
        end)
        w:send("stats")
      end
    end
    if left == 0 then finish() end
  end

  cluster:on("listening", function()
    listening = listening + 1
    if listening == WORKERS then print("ready " .. cluster.settings.balance) end
  end)
  cluster:on("exit", function(w, code, signal)
    if not stopping then
      io.stderr:write(("server.lua: worker %d exited (%s)\n"):format(w.id, signal or ("code " .. tostring(code))))
      os.exit(1)
    end
  end)
  for i = 1, WORKERS do
    workers[i] = cluster.fork({ BENCH_PORT = tostring(port), BENCH_BUSY = i == 1 and "1" or "0" })
  end
  sigint:start("sigint", stop)
  sigterm:start("sigterm", stop)
  life:start(lifetime * 1000, 0, stop)
  uv.run()
  os.exit(0)
end

-- Worker ------------------------------------------------------------------

local me = cluster.worker
local port = assert(tonumber(os.getenv("BENCH_PORT")))
local BUSY = os.getenv("BENCH_BUSY") == "1"
local BUSY_NS = (tonumber(os.getenv("BENCH_BUSY_MS") or "") or 5) * 1e6
local POLL_MS = tonumber(os.getenv("BENCH_POLL_MS") or "") or 500
local hrtime = uv.hrtime

local requests, busy_ns = 0, 0
local answer = me.id .. "\n"
local clients = {}

local function close(client)
  clients[client] = nil
  if not client:is_closing() then client:close() end
end

local function serve(client)
  clients[client] = true
  local buf = ""
  client:read_start(function(err, data)
    if err or not data then return close(client) end
    buf = buf .. data
    while true do
      local c = buf:sub(1, 1)
      if #buf < 2 then break end
      buf = buf:sub(3)
      if c == "R" then
        requests = requests + 1
        if BUSY and requests % 10 == 0 then
          local t0 = hrtime()
          while hrtime() - t0 < BUSY_NS do end
          busy_ns = busy_ns + (hrtime() - t0)
        end
        client:write(answer)
      elseif c == "P" then
        local t = uv.new_timer()
        t:start(POLL_MS, 0, function()
          t:close()
          if not client:is_closing() then client:write(answer) end
        end)
      end
    end
  end)
end

local server = uv.new_tcp()
assert(server:bind(HOST, port))
assert(server:listen(1024, function(err)
  if err then return end
  local client = uv.new_tcp()
  if server:accept(client) then serve(client) else client:close() end
end))

me:on("message", function(msg)
  if msg == "stats" then me:send({ requests = requests, busy_ms = math.floor(busy_ns / 1e6) }) end
end)
me:on("disconnect", function()
  for c in pairs(clients) do close(c) end
end)
uv.run()
