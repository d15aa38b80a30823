-- Messages between the master and a worker: direction, order, every value
-- kind, big strings, send callbacks, unsendable values and fds (Node's
-- test-cluster-message, -send-deadlock, -worker-disconnect-on-error,
-- -send-handle-*).
local uv = require("luv")
local helper = require("helper")
require("cluster")
local compat = require("cluster.compat")
local util = dofile(helper.fixture("lc_util"))

-- Before 5.3 every number is a double and integers end at +-2^53.
local MAXINT = math.maxinteger or 2 ^ 53
local MININT = math.mininteger or -2 ^ 53
local int = compat.tointeger
-- Lua 5.1 merges the constants 0.0 and -0.0 of one function: made at run time.
local ZERO, NEG_ZERO = tonumber("0.0"), tonumber("-0.0")

local WORKER = helper.fixture("lc_worker")
local ECHO = helper.fixture("echo")

-- Sends each of values[1..values.n] to an echo worker and returns what came
-- back, packed the same way.
local function round_trip(w, values)
  local got = { n = 0 }
  local function on_message(m)
    got.n = got.n + 1
    got[got.n] = m
  end
  w:on("message", on_message)
  for i = 1, values.n do w:send(values[i]) end
  helper.wait(function() return got.n >= values.n end, 5000)
  w:off("message", on_message)
  return got
end

local function one(w, value)
  local got = round_trip(w, compat.pack(value))
  assert.equal(1, got.n, "no echo")
  return got[1]
end

describe("messages", function()
  after_each(util.cleanup)

  describe("direction and order", function()
    before_each(function()
      util.setup({ exec = WORKER, args = {} })
    end)

    it("go from the master to the worker", function()
      local w = util.fork()
      w:send({ seq = 1 })
      local r = util.request(w, { cmd = "seq_report" })
      assert.is_table(r, "no reply from the worker")
      assert.same({ re = "seq_report", count = 1, ok = true }, r)
    end)

    it("go from the worker to the master, on the worker and on cluster", function()
      local w = util.fork()
      local on_worker, on_cluster
      w:on("message", function(m, handle)
        if type(m) == "table" and m.seq then on_worker = { m, handle } end
      end)
      util.on("message", function(x, m, handle)
        if x == w and type(m) == "table" and m.seq then on_cluster = { x, m, handle } end
      end)
      w:send({ cmd = "burst", n = 1 })
      assert.is_true(helper.wait(function() return on_worker and on_cluster end, 5000))
      assert.same({ { seq = 1 } }, on_worker)
      assert.equal(w, on_cluster[1])
      assert.same({ seq = 1 }, on_cluster[2])
      assert.is_nil(on_cluster[3])
    end)

    it("keep their order over 10,000 messages from the master", function()
      local w = util.fork()
      for i = 1, 10000 do w:send({ seq = i }) end
      local r = util.request(w, { cmd = "seq_report" })
      assert.is_table(r, "no reply from the worker")
      assert.equal(10000, r.count)
      assert.is_true(r.ok)
    end)

    it("keep their order over 10,000 messages from the worker", function()
      local w = util.fork()
      local count, in_order = 0, true
      w:on("message", function(m)
        if type(m) == "table" and m.seq then
          count = count + 1
          if m.seq ~= count then in_order = false end
        end
      end)
      w:send({ cmd = "burst", n = 10000 })
      assert.is_true(helper.wait(function() return count >= 10000 end, 5000))
      assert.equal(10000, count)
      assert.is_true(in_order)
    end)
  end)

  describe("values", function()
    local w
    before_each(function()
      util.setup({ exec = ECHO, args = {} })
      w = util.fork()
    end)

    it("nil and booleans round trip", function()
      local got = round_trip(w, compat.pack(nil, true, false, nil))
      assert.same({ n = 4, nil, true, false, nil }, got)
    end)

    it("integers round trip and stay integers", function()
      local values = compat.pack(0, 1, -1, 255, 256, 65536, int(2 ^ 31), -int(2 ^ 31) - 1,
        int(2 ^ 53), -int(2 ^ 53), MAXINT, MININT)
      if compat.integers then -- integers beyond 2^53 exist from 5.3 on
        values[values.n + 1], values.n = int(2 ^ 53) + 1, values.n + 1
      end
      local got = round_trip(w, values)
      assert.equal(values.n, got.n)
      for i = 1, values.n do
        assert.equal("integer", compat.type(got[i]), "not an integer: " .. tostring(got[i]))
        assert.equal(values[i], got[i])
      end
    end)

    it("floats round trip and stay floats, including inf and -inf", function()
      local values = compat.pack(0.5, -2.25, 1e308, -1e-308, 5e-324, math.pi, 2.0 ^ 63,
        math.huge, -math.huge, 0.1)
      local got = round_trip(w, values)
      assert.equal(values.n, got.n)
      for i = 1, values.n do
        assert.equal("float", compat.type(got[i]), "not a float: " .. tostring(got[i]))
        assert.equal(values[i], got[i])
      end
    end)

    it("a float with an integral value stays a float where Lua has integers", function()
      local v = one(w, 3.0)
      assert.equal(3, v)
      -- Before 5.3, 3.0 and 3 are the same number.
      assert.equal(compat.integers and "float" or "integer", compat.type(v))
    end)

    it("nan round trips as nan", function()
      local v = one(w, 0 / 0)
      assert.equal("float", compat.type(v))
      assert.is_true(v ~= v)
    end)

    it("-0.0 keeps its sign and 0.0 stays positive", function()
      local got = round_trip(w, compat.pack(NEG_ZERO, ZERO))
      assert.equal("float", compat.type(got[1]))
      assert.equal(-math.huge, 1 / got[1])
      assert.equal(compat.integers and "float" or "integer", compat.type(got[2]))
      assert.equal(math.huge, 1 / got[2])
    end)

    it("strings with all 256 byte values round trip", function()
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local all = table.concat(bytes)
      local values = compat.pack("", "\0", all, all:reverse() .. all, "a\0b\0")
      local got = round_trip(w, values)
      assert.same(values, got)
      assert.equal(256, #got[3])
    end)

    it("nested tables with mixed key types round trip", function()
      local value = {
        1, "two", { 3, { 4, { 5 } } },
        [true] = "t", [false] = "f",
        [1.5] = "float key", [-7] = "negative", [0] = "zero",
        [MAXINT] = "max", [MININT] = "min",
        [-0.5] = { [2.5] = { [false] = true } },
        name = { deeper = { deepest = "x" } },
        [""] = "empty key", ["\0\255"] = "binary key",
        empty = {},
      }
      local got = one(w, value)
      assert.same(value, got)
      assert.equal("float key", got[1.5])
      assert.equal("f", got[false])
      assert.is_true(got[-0.5][2.5][false])
    end)

    it("integer keys stay integers and float keys floats", function()
      local got = one(w, { [1] = "a", [2 ^ 53] = "big float", [-3] = "b", [0.25] = "c" })
      local kinds = {}
      for k in pairs(got) do kinds[tostring(k)] = compat.type(k) end
      assert.same({ ["1"] = "integer", [tostring(int(2 ^ 53))] = "integer", ["-3"] = "integer",
        ["0.25"] = "float" }, kinds)
    end)

    it("arrays with holes round trip", function()
      local value = { 1, nil, 3, nil, 5, [10] = 10, [1000] = "far" }
      local got = one(w, value)
      assert.same(value, got)
      assert.is_nil(got[2])
      assert.equal(10, got[10])
      local keys = 0
      for _ in pairs(got) do keys = keys + 1 end
      assert.equal(5, keys)
    end)

    it("nan and -0.0 inside tables round trip", function()
      local got = one(w, { x = 0 / 0, y = NEG_ZERO, list = { 0 / 0 } })
      assert.is_true(got.x ~= got.x)
      assert.equal(-math.huge, 1 / got.y)
      assert.is_true(got.list[1] ~= got.list[1])
    end)

    it("a table reached twice arrives as two equal copies", function()
      local shared = { 1, { 2 } }
      local got = one(w, { a = shared, b = shared })
      assert.same(shared, got.a)
      assert.same(shared, got.b)
    end)

    it("an 8 MiB string goes both ways intact", function()
      local parts = {}
      for i = 1, 8 * 1024 * 1024 / 16 do parts[i] = ("%15d\n"):format(i) end
      local big = table.concat(parts)
      assert.equal(8 * 1024 * 1024, #big)
      local got = one(w, big)
      assert.equal(#big, #got)
      assert.is_true(big == got, "the string came back changed")
    end)
  end)

  describe("send", function()
    before_each(function()
      util.setup({ exec = ECHO, args = {} })
    end)

    it("returns true and calls cb(nil) once the message is written, not during send", function()
      local w = util.fork()
      local calls = {}
      local ok = w:send({ x = 1 }, function(...) calls[#calls + 1] = compat.pack(...) end)
      assert.is_true(ok)
      assert.equal(0, #calls)
      assert.is_true(helper.wait(function() return #calls > 0 end, 5000))
      util.settle()
      assert.equal(1, #calls)
      assert.is_nil(calls[1][1])
    end)

    it("on a dead worker returns false, and cb gets an error string", function()
      local w = util.fork()
      assert.is_true(util.online(w))
      w:kill("SIGKILL")
      assert.is_true(util.dead(w))
      local err, called = nil, 0
      local ok, ret = pcall(w.send, w, "too late", function(e) called, err = called + 1, e end)
      assert.is_true(ok, "send raised: " .. tostring(ret))
      assert.is_false(ret)
      assert.is_true(helper.wait(function() return called > 0 end, 5000))
      util.settle()
      assert.equal(1, called)
      assert.is_string(err)
    end)

    it("on a worker whose channel is closed returns false, and cb gets an error string", function()
      local w = util.fork()
      w:kill()
      local err, called = nil, 0
      local ok, ret = pcall(w.send, w, "too late", function(e) called, err = called + 1, e end)
      assert.is_true(ok, "send raised: " .. tostring(ret))
      assert.is_false(ret)
      assert.is_true(helper.wait(function() return called > 0 end, 5000))
      assert.is_string(err)
      assert.is_true(util.dead(w))
    end)
  end)

  describe("an unsendable value", function()
    local cases = {
      { "a function", function() return print end, "function" },
      { "a coroutine", function() return coroutine.create(function() end) end, "coroutine" },
      { "a userdata (io.stdout)", function() return io.stdout end, "userdata" },
      { "a function inside a table", function() return { ok = 1, deep = { f = print } } end, "function" },
      { "a table that contains itself", function()
        local t = { 1 }
        t.self = t
        return t
      end, "itself" },
    }
    for _, case in ipairs(cases) do
      it(case[1] .. " raises at send and the channel keeps working", function()
        util.setup({ exec = ECHO, args = {} })
        local w = util.fork()
        local got, errors = {}, {}
        w:on("message", function(m) got[#got + 1] = m end)
        w:on("error", function(e) errors[#errors + 1] = e end)
        local ok, err = pcall(w.send, w, case[2]())
        assert.is_false(ok)
        assert.matches(case[3], tostring(err), 1, true)
        assert.is_true(w:send("after"))
        assert.is_true(helper.wait(function() return #got > 0 end, 5000))
        util.settle()
        assert.same({ "after" }, got)
        assert.same({}, errors)
        assert.is_true(w:isConnected())
      end)
    end

    it("a message over maxMessageSize raises at send and the channel keeps working", function()
      util.setup({ exec = ECHO, args = {}, maxMessageSize = 1024 })
      local w = util.fork()
      local got = {}
      w:on("message", function(m) got[#got + 1] = m end)
      local ok, err = pcall(w.send, w, { pad = string.rep("x", 2048) })
      assert.is_false(ok)
      assert.matches("limit", tostring(err), 1, true)
      assert.is_true(w:send("after"))
      assert.is_true(helper.wait(function() return #got > 0 end, 5000))
      util.settle()
      assert.same({ "after" }, got)
    end)
  end)

  describe("with a handle", function()
    it("an integer fd arrives as an integer fd the worker can read", function()
      util.setup({ exec = WORKER, args = {} })
      local path = os.tmpname()
      finally(function() os.remove(path) end)
      local f = assert(io.open(path, "wb"))
      f:write("lc fd contents\n")
      f:close()
      local w = util.fork()
      local fd = assert(uv.fs_open(path, "r", 0))
      local got
      w:on("message", function(m) if type(m) == "table" and m.re == "readfd" then got = m end end)
      assert.is_true(w:send({ cmd = "readfd" }, fd))
      -- The message holds its own copy: the sender may close at once.
      uv.fs_close(fd)
      assert.is_true(helper.wait(function() return got ~= nil end, 5000))
      assert.equal("integer", got.kind)
      assert.equal("lc fd contents\n", got.content)
    end)
  end)
end)
