-- luv-cluster side of bench/http: a master forks 2 workers; each worker runs
-- a plain luv TCP server on 127.0.0.1:BENCH_PORT (the bind is routed to the
-- master by the library, under cluster.schedulingPolicy, which the library
-- reads from LUA_CLUSTER_SCHED_POLICY) and answers every HTTP/1.1 request
-- with a canned 200 "hello world\n".
--
--   BENCH_PORT=8080 LUA_CLUSTER_SCHED_POLICY=rr lua5.4 bench/http/lua_server.lua [seconds]
--   (BENCH_BALANCE=leastconn: settings.balance for rr)
--
-- Protocol (the same as node_server.js): the master prints "ready" once both
-- workers are 'listening'. On SIGINT/SIGTERM (or after `seconds`, default
-- 300, so that a forgotten server stops by itself) it asks each worker for
-- its request count ("stats" -> {requests = n}), prints one line per worker,
-- `worker <id> requests <n>`, disconnects the workers and exits.
--
-- The HTTP handling is the least wrk needs: requests may arrive partial or
-- pipelined (one write answers a batch), a request body is skipped by its
-- Content-Length, and "Connection: close" (or HTTP/1.0 without keep-alive)
-- gets its answer and then the connection is closed once written.
local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
package.path = dir .. "/../../lua/?.lua;" .. dir .. "/../../lua/?/init.lua;" .. package.path
-- build/<interpreter>/ (lua5.4, luajit, ...: see the Makefile)
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
    io.stderr:write("lua_server.lua: set BENCH_PORT\n")
    os.exit(2)
  end
  local lifetime = tonumber(arg[1]) or 300
  -- BENCH_BALANCE: settings.balance under rr (bench/http's leastconn rows).
  if os.getenv("BENCH_BALANCE") then cluster.setup({ balance = os.getenv("BENCH_BALANCE") }) end

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
    local counts, left = {}, 0
    local hard = uv.new_timer()
    -- Whatever happens below, the master is gone within 5 seconds.
    hard:start(5000, 0, function()
      io.stderr:write("lua_server.lua: workers did not finish, killing them\n")
      kill_all_and_exit(1)
    end)
    local function finish()
      for _, w in ipairs(workers) do
        print(("worker %d requests %s"):format(w.id, counts[w.id] and tostring(counts[w.id]) or "n/a"))
      end
      cluster.disconnect(function()
        hard:close()
        for _, h in ipairs({ sigint, sigterm, life }) do
          if not h:is_closing() then h:close() end
        end
      end)
    end
    local wait = uv.new_timer()
    for _, w in ipairs(workers) do
      if w:isConnected() then
        left = left + 1
        w:once("message", function(msg)
          if type(msg) == "table" and msg.requests then counts[w.id] = msg.requests end
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
    if listening == WORKERS then
      print(("ready %s:%s policy %s"):format(address.address, tostring(address.port),
        tostring(cluster.schedulingPolicy)))
    end
  end)
  cluster:on("exit", function(w, code, signal)
    if not stopping then
      io.stderr:write(("lua_server.lua: worker %d exited (%s) before the end\n"):format(w.id,
        signal or ("code " .. tostring(code))))
      stopping = true
      kill_all_and_exit(1)
    end
  end)

  for _ = 1, WORKERS do
    workers[#workers + 1] = cluster.fork({ BENCH_PORT = tostring(port) })
  end
  sigint:start("sigint", stop)
  sigterm:start("sigterm", stop)
  life:start(lifetime * 1000, 0, stop)
  uv.run()
  os.exit(0)
end

-- Worker ------------------------------------------------------------------

local find, sub, rep, byte, tonumber_ = string.find, string.sub, string.rep, string.byte, tonumber

local BODY = "hello world\n"
local KEEP = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " .. #BODY
  .. "\r\n\r\n" .. BODY
local CLOSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " .. #BODY
  .. "\r\nConnection: close\r\n\r\n" .. BODY
local MAX_HEADER = 64 * 1024

local requests = 0
local clients = {} -- open connections, closed on 'disconnect'

-- Does the header block h (request line and headers) end the connection?
local function wants_close(h)
  if find(h, "onnection", 1, true) then
    if find(h, "\n[Cc][Oo][Nn][Nn][Ee][Cc][Tt][Ii][Oo][Nn]:[ \t]*[Cc][Ll][Oo][Ss][Ee]") then
      return true
    end
    if find(h, "\n[Cc][Oo][Nn][Nn][Ee][Cc][Tt][Ii][Oo][Nn]:[ \t]*[Kk][Ee][Ee][Pp]%-") then
      return false
    end
  end
  -- HTTP/1.0 without keep-alive: the request line ends in "1.0"
  local eol = find(h, "\r\n", 1, true)
  return eol ~= nil and byte(h, eol - 1) == 48 and byte(h, eol - 3) == 49
end

local function body_length(h)
  if not find(h, "ength", 1, true) then return 0 end
  local n = h:match("\n[Cc][Oo][Nn][Tt][Ee][Nn][Tt]%-[Ll][Ee][Nn][Gg][Tt][Hh]:[ \t]*(%d+)")
  return n and tonumber_(n) or 0
end

local function close_client(client)
  clients[client] = nil
  if not client:is_closing() then client:close() end
end

local function serve(client)
  clients[client] = true
  local pending = nil
  client:read_start(function(err, data)
    if err or not data then
      close_client(client)
      return
    end
    local buf = pending and (pending .. data) or data
    pending = nil
    local pos, len, answered, close = 1, #buf, 0, false
    while pos <= len do
      local e = find(buf, "\r\n\r\n", pos, true)
      if not e then break end
      local h = (pos == 1 and e + 3 == len) and buf or sub(buf, pos, e + 1)
      local stop = e + 4 + body_length(h)
      if stop - 1 > len then break end -- body not all here yet
      answered = answered + 1
      pos = stop
      if wants_close(h) then
        close = true
        break
      end
    end
    if answered > 0 then requests = requests + answered end
    if close then
      client:read_stop()
      local out = answered == 1 and CLOSE or (rep(KEEP, answered - 1) .. CLOSE)
      client:write(out, function() close_client(client) end)
      return
    end
    if answered == 1 then
      client:write(KEEP)
    elseif answered > 1 then
      client:write(rep(KEEP, answered))
    end
    if pos <= len then
      pending = sub(buf, pos)
      if #pending > MAX_HEADER then close_client(client) end
    end
  end)
end

local port = tonumber(os.getenv("BENCH_PORT") or "")
local server = uv.new_tcp()
local ok, err = server:bind(HOST, port)
if ok then
  ok, err = server:listen(1024, function(lerr)
    if lerr then
      io.stderr:write("lua_server.lua: worker ", cluster.worker.id, " listen: ", lerr, "\n")
      return
    end
    local client = uv.new_tcp()
    if server:accept(client) then
      serve(client)
    else
      client:close()
    end
  end)
end
if not ok then
  io.stderr:write(("lua_server.lua: worker %d cannot listen on %s:%s: %s\n"):format(
    cluster.worker.id, HOST, tostring(port), tostring(err)))
  os.exit(1)
end

cluster.worker:on("message", function(msg)
  if msg == "stats" then cluster.worker:send({ requests = requests }) end
end)

-- Ctrl-C reaches the whole process group: the master collects the counts.
local sigint = uv.new_signal()
sigint:start("sigint", function() end)
cluster.worker:on("disconnect", function()
  if not server:is_closing() then server:close() end
  for c in pairs(clients) do close_client(c) end
  sigint:close()
end)
uv.run()
