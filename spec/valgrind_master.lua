-- Run under valgrind by `make valgrind` (not a busted spec): the codec and
-- a master's side of a cluster round trip, fd passing included. Exits
-- non-zero when anything comes back wrong; valgrind adds its own verdict.
local uv = require("luv")
local core = require("cluster.core")
local cluster = require("cluster")
local compat = require("cluster.compat")

local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b or (a ~= a and b ~= b) end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local values = {
  nil, true, 0, -1, math.maxinteger or 2 ^ 53, math.mininteger or -2 ^ 53, 1.5, -0.0, 1 / 0, 0 / 0,
  "", string.rep("\0\255", 1000), { 1, 2, nil, 4, x = { y = { z = "deep" } }, [true] = false, [2.5] = 1 },
}
for i = 1, #values do
  assert(same(values[i], core.decode(core.encode(values[i]))), "codec round trip " .. i)
end
for _, bad in ipairs({ "\6\255", "\5\10abc", "\7", "\4", "\1\1" }) do
  assert(core.decode(bad) == nil, "malformed input accepted")
end

-- Process titles: /proc/self/stat is read and parsed; under valgrind the
-- argv area the kernel names is valgrind's own, not this client's argv,
-- and is refused (EINVAL) rather than written.
do
  local kept, err, ename = core.set_proctitle("luv-cluster valgrind")
  assert(compat.is_integer(kept) or ename == "EINVAL", "set_proctitle: " .. tostring(err))
  assert(core.set_comm("luv-cluster"))
end

local dir = arg[0]:match("^(.*)/[^/]*$")
cluster.setup({ exec = dir .. "/fixtures/echo.lua", args = {} })
local worker = cluster.fork()
local tmp = os.tmpname()
local f = assert(io.open(tmp, "w")); f:write("fd payload"); f:close()
local fd = assert(uv.fs_open(tmp, "r", 0))

local expected, received = {}, 0
for i = 1, 1000 do
  expected[i] = { seq = i, text = "hello world", blob = i % 100 == 0 and string.rep("b", 70000) or nil }
end
worker:on("message", function(msg, handle)
  if msg == "fd" then
    assert(compat.type(handle) == "integer", "fd did not come back")
    assert(uv.fs_read(handle, 100, 0) == "fd payload")
    uv.fs_close(handle)
    worker:disconnect()
    return
  end
  received = received + 1
  assert(same(msg, expected[received]), "message " .. received)
  if received == #expected then worker:send("fd", fd) uv.fs_close(fd) end
end)
for i = 1, #expected do worker:send(expected[i]) end
local code
worker:on("exit", function(c) code = c end)
uv.run()
os.remove(tmp)
assert(code == 0 and received == #expected, "worker did not finish cleanly")
print("valgrind round trip ok")
