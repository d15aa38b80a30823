-- bench/balance/source.lua: how many clients balance = "source" moves when
-- a worker comes or goes. BENCH_CLIENTS (2000) client addresses
-- (127.1.x.y, each connection bound to one) connect to BENCH_SOURCE_WORKERS
-- (4) workers, which answer with their id; then one worker is added, then
-- the first workers' busiest one is removed (disconnected). Prints, for each
-- change, the share of clients that moved against the ideal one (1/(N+1)
-- when adding to N; the removed worker's share when removing) and whether
-- every move was to the added worker / from the removed one. Every process
-- is this script: the master is also the client.
--
--   lua5.4 bench/balance/source.lua      (from the repository root, after make)
local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
package.path = dir .. "/../../lua/?.lua;" .. dir .. "/../../lua/?/init.lua;" .. package.path
package.cpath = dir .. "/../../build/" .. (rawget(_G, "jit") and "luajit" or "lua" .. _VERSION:match("%d+%.%d+"))
  .. "/?.so;" .. package.cpath

local uv = require("luv")
local cluster = require("cluster")

if cluster.isWorker then
  local server = uv.new_tcp()
  assert(server:bind("127.0.0.1", 0))
  assert(server:listen(1024, function(err)
    if err then return end
    local c = uv.new_tcp()
    if not server:accept(c) then return c:close() end
    c:write(cluster.worker.id .. "\n", function() c:close() end)
  end))
  uv.run()
  return
end

local CLIENTS = tonumber(os.getenv("BENCH_CLIENTS") or "") or 2000
local WORKERS = tonumber(os.getenv("BENCH_SOURCE_WORKERS") or "") or 4
local PARALLEL = 32

cluster.schedulingPolicy = "rr"
cluster.setup({ balance = "source" })

local function addr(i) return ("127.1.%d.%d"):format(math.floor(i / 250), 1 + i % 250) end

local port
local function fork()
  local w = cluster.fork()
  w.listening = false
  w:on("listening", function(a) port = a.port; w.listening = true end)
  return w
end

local function wait(cond, ms)
  local deadline = uv.now() + ms
  local t = uv.new_timer()
  t:start(1, 1, function() if cond() or uv.now() > deadline then t:stop() uv.stop() end end)
  if not cond() then uv.run() end
  t:close()
  return cond()
end

-- client address -> worker id, one connection per address
local function placement()
  local on, started, done, failed = {}, 0, 0, 0
  local function next_one()
    if started >= CLIENTS then return end
    started = started + 1
    local i = started
    local c = uv.new_tcp()
    assert(c:bind(addr(i), 0))
    c:connect("127.0.0.1", port, function(err)
      if err then failed = failed + 1; done = done + 1; c:close(); return next_one() end
      local buf = ""
      c:read_start(function(rerr, data)
        if data then buf = buf .. data return end
        if rerr or not buf:match("^%d+\n") then failed = failed + 1 else on[addr(i)] = tonumber(buf:match("^%d+")) end
        c:close()
        done = done + 1
        next_one()
      end)
    end)
  end
  for _ = 1, PARALLEL do next_one() end
  assert(wait(function() return done == CLIENTS end, 60000), "clients did not finish")
  assert(failed == 0, failed .. " connections failed")
  return on
end

local function count(on)
  local n = {}
  for _, id in pairs(on) do n[id] = (n[id] or 0) + 1 end
  return n
end

local workers = {}
for i = 1, WORKERS do workers[i] = fork() end
assert(wait(function()
  for _, w in ipairs(workers) do if not w.listening then return false end end
  return true
end, 10000), "workers did not listen")

local before = placement()
local added = fork()
assert(wait(function() return added.listening end, 10000))
local after_add = placement()
local moved, wrong = 0, 0
for a, id in pairs(after_add) do
  if id ~= before[a] then
    moved = moved + 1
    if id ~= added.id then wrong = wrong + 1 end
  end
end
print(("### bench/balance/source.lua: %d client addresses, balance \"source\""):format(CLIENTS))
print("")
print("| change | clients moved | ideal | moved elsewhere than the added / from other than the removed worker |")
print("|---|---:|---:|---:|")
print(("| %d -> %d workers (one added) | %.1f%% | %.1f%% | %d |"):format(WORKERS, WORKERS + 1,
  100 * moved / CLIENTS, 100 / (WORKERS + 1), wrong))

local n = count(after_add)
local gone = workers[1]
for _, w in ipairs(workers) do if n[w.id] > n[gone.id] then gone = w end end
local disconnected = false
gone:on("disconnect", function() disconnected = true end)
gone:disconnect()
assert(wait(function() return disconnected end, 10000))
local after_remove = placement()
moved, wrong = 0, 0
for a, id in pairs(after_remove) do
  if id ~= after_add[a] then
    moved = moved + 1
    if after_add[a] ~= gone.id then wrong = wrong + 1 end
  end
end
print(("| %d -> %d workers (an old one removed) | %.1f%% | %.1f%% (its share) | %d |"):format(WORKERS + 1, WORKERS,
  100 * moved / CLIENTS, 100 * n[gone.id] / CLIENTS, wrong))
local shares = {}
for id, k in pairs(count(after_remove)) do shares[#shares + 1] = ("%d: %.1f%%"):format(id, 100 * k / CLIENTS) end
table.sort(shares)
print("")
print("Shares per worker at the end: " .. table.concat(shares, ", ") .. ".")

cluster.disconnect()
uv.run()
