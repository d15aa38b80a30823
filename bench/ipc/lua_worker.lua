-- Worker side of bench/ipc/lua_cluster.lua (its cluster.setup{exec=...}).
-- The mode comes from BENCH_MODE (and the count from BENCH_N), set by the
-- master in fork(env):
--   idle       nothing: the channel keeps it alive until the master
--              disconnects it (spawn->online time, idle RSS)
--   w2m_small  on "go", sends BENCH_N {seq=i, text="hello world"} tables
--   w2m_big    on "go", sends BENCH_N 64 KiB strings
--   m2w_small  counts BENCH_N tables (checking the order), answers {done=n}
--   echo       sends every message back (ping-pong)
--   count      counts what arrives (BENCH_KIND small: {seq=i} tables in
--              increasing order; big: 64 KiB strings) until the master's
--              {fin=k}, then answers {done=count} (lua_loop.lua)
local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
package.path = dir .. "/?.lua;" .. dir .. "/../../lua/?.lua;" .. dir
  .. "/../../lua/?/init.lua;" .. package.path
-- build/<interpreter>/ (lua5.4, luajit, ...: see the Makefile)
package.cpath = dir .. "/../../build/" .. require("cluster.compat").build_name
  .. "/?.so;" .. package.cpath

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
elseif mode == "count" then
  local big = os.getenv("BENCH_KIND") == "big"
  local got, last = 0, 0
  me:on("message", function(msg)
    if big then
      if type(msg) == "string" and #msg == 65536 then
        got = got + 1
        return
      end
    elseif type(msg) == "table" and msg.seq then
      if msg.seq <= last or msg.text ~= "hello world" then
        io.stderr:write("lua_worker: out of order ", tostring(msg.seq), " after ", last, "\n")
        os.exit(1)
      end
      last = msg.seq
      got = got + 1
      return
    end
    if type(msg) == "table" and msg.fin then
      me:send({ done = got })
    else
      io.stderr:write("lua_worker: unexpected message\n")
      os.exit(1)
    end
  end)
  me:send("ready")
elseif mode == "echo" then
  me:on("message", function(msg) me:send(msg) end)
  me:send("ready")
end

uv.run()
