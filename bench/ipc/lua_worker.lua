-- Worker side of bench/ipc/lua_cluster.lua (its cluster.setup{exec=...}).
-- The mode comes from BENCH_MODE (and the count from BENCH_N), set by the
-- master in fork(env):
--   idle       nothing: the channel keeps it alive until the master
--              disconnects it (spawn->online time, idle RSS)
--   w2m_small  on "go", sends BENCH_N {seq=i, text="hello world"} tables
--   w2m_big    on "go", sends BENCH_N 64 KiB strings
--   m2w_small  counts BENCH_N tables (checking the order), answers {done=n}
--   echo       sends every message back (ping-pong)
local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
package.path = dir .. "/?.lua;" .. dir .. "/../../lua/?.lua;" .. dir
  .. "/../../lua/?/init.lua;" .. package.path
package.cpath = dir .. "/../../build/?.so;" .. package.cpath

local cluster = require("cluster")
local uv = require("luv")

local mode = os.getenv("BENCH_MODE") or "idle"
local n = tonumber(os.getenv("BENCH_N") or "0")
local me = cluster.worker

if mode == "w2m_small" or mode == "w2m_big" then
  local common = require("bench_common")
  local make = mode == "w2m_small" and common.small or common.big
  local function send(msg, cb) return me:send(msg, cb) end
  me:on("message", function(msg)
    if msg == "go" then
      common.burst_send(send, n, make, nil, mode == "w2m_big" and common.BIG_CHUNK or common.CHUNK)
    end
  end)
  me:send("ready")
elseif mode == "m2w_small" then
  local got = 0
  me:on("message", function(msg)
    got = got + 1
    if msg.seq ~= got or msg.text ~= "hello world" then
      io.stderr:write("lua_worker: out of order ", tostring(msg.seq), " ~= ", got, "\n")
      os.exit(1)
    end
    if got == n then me:send({ done = got }) end
  end)
  me:send("ready")
elseif mode == "echo" then
  me:on("message", function(msg) me:send(msg) end)
  me:send("ready")
end

uv.run()
