-- luv-cluster side of bench/http: a master forks 2 workers; each worker runs
-- a plain luv TCP server on 127.0.0.1:BENCH_PORT (the bind is routed to the
-- master by the library, under cluster.schedulingPolicy, which the library
-- reads from LUA_CLUSTER_SCHED_POLICY) and answers every HTTP/1.1 request
-- with a canned 200 "hello world\n".
--
--   BENCH_PORT=8080 LUA_CLUSTER_SCHED_POLICY=rr lua5.4 bench/http/lua_server.lua [seconds]
--   (BENCH_BALANCE=leastconn: settings.balance for rr)
--
-- Protocol (bench/lib/server.lua runs it; the same as node_server.js): the
-- master prints "ready" once both workers are 'listening'. On SIGINT/SIGTERM
-- (or after `seconds`, default 300, so that a forgotten server stops by
-- itself) it asks each worker for its request count ("stats" ->
-- {requests = n}), prints one line per worker, `worker <id> requests <n>`,
-- disconnects the workers and exits.
--
-- The HTTP handling is the least wrk needs: requests may arrive partial or
-- pipelined (one write answers a batch), a request body is skipped by its
-- Content-Length, and "Connection: close" (or HTTP/1.0 without keep-alive)
-- gets its answer and then the connection is closed once written.
local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
package.path = dir .. "/../?.lua;" .. package.path
local bench = require("lib.server") -- also puts this checkout's cluster on the paths
local cluster = require("cluster")

if cluster.isMaster then
  -- BENCH_BALANCE: settings.balance under rr (bench/http's leastconn rows).
  if os.getenv("BENCH_BALANCE") then cluster.setup({ balance = os.getenv("BENCH_BALANCE") }) end
  bench.master({
    name = "lua_server.lua",
    lifetime = tonumber(arg[1]) or 300,
    ready = function(address)
      return ("ready %s:%s policy %s"):format(address.address, tostring(address.port),
        tostring(cluster.schedulingPolicy))
    end,
    report = function(id, stats)
      return ("worker %d requests %s"):format(id, stats and stats.requests and tostring(stats.requests) or "n/a")
    end,
  })
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

local function serve(client, close_client)
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

bench.worker({ name = "lua_server.lua", serve = serve, stats = function() return { requests = requests } end })
