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
-- The master (bench/lib/server.lua) prints "ready" once every worker
-- listens, and on SIGTERM or SIGINT (or after `seconds`, default 120)
-- prints one line per worker, "worker <id> requests <n> busy <ms>",
-- disconnects them and exits.
local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
package.path = dir .. "/../?.lua;" .. package.path
local bench = require("lib.server") -- also puts this checkout's cluster on the paths
local uv = require("luv")
local cluster = require("cluster")

if cluster.isMaster then
  cluster.schedulingPolicy = "rr"
  cluster.setup({ balance = os.getenv("BENCH_BALANCE") or "roundrobin" })
  bench.master({
    name = "server.lua",
    lifetime = tonumber(arg[1]) or 120,
    ready = function() return "ready " .. cluster.settings.balance end,
    report = function(id, stats)
      local s = stats or {}
      return ("worker %d requests %s busy %s"):format(id, tostring(s.requests or "n/a"), tostring(s.busy_ms or "n/a"))
    end,
    -- worker 1 is the busy one
    env = function(i) return { BENCH_BUSY = i == 1 and "1" or "0" } end,
  })
end

-- Worker ------------------------------------------------------------------

local BUSY = os.getenv("BENCH_BUSY") == "1"
local BUSY_NS = (tonumber(os.getenv("BENCH_BUSY_MS") or "") or 5) * 1e6
local POLL_MS = tonumber(os.getenv("BENCH_POLL_MS") or "") or 500
local hrtime = uv.hrtime

local requests, busy_ns = 0, 0
local answer = cluster.worker.id .. "\n"

local function serve(client, close)
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

bench.worker({ name = "server.lua", serve = serve,
  stats = function() return { requests = requests, busy_ms = math.floor(busy_ns / 1e6) } end })
