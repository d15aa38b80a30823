-- The message codec: core.encode(value[, limit]) -> string (raises on an
-- unsendable value) and core.decode(s) -> value | nil, err.
local core = require("cluster.core")
local compat = require("cluster.compat")

local encode, decode = core.encode, core.decode

-- Before 5.3 every number is a double and integers end at +-2^53.
local int = compat.tointeger
local MAXINT = math.maxinteger or 2 ^ 53
local MININT = math.mininteger or -2 ^ 53
local INT_BITS = compat.integers and 62 or 52 -- the largest shift below
-- Lua 5.1 merges the constants 0.0 and -0.0 of one function: made at run time.
local ZERO, NEG_ZERO = tonumber("0.0"), tonumber("-0.0")

local function round_trip(v)
  local bytes = encode(v)
  assert.is_string(bytes)
  local out, err = decode(bytes)
  assert.is_nil(err)
  return out
end

-- Deep equality that tells integers from floats, -0.0 from 0.0, and lets
-- nan equal nan. A table key arrives as a new table, so entries under table
-- keys are only counted.
local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then
    if compat.type(a) ~= compat.type(b) then return false end
    if a ~= a then return b ~= b end
    if a == 0 and compat.type(a) == "float" then return 1 / a == 1 / b end
    return a == b
  end
  if type(a) ~= "table" then return a == b end
  local count_a, count_b = 0, 0
  for k, v in next, a do
    count_a = count_a + 1
    if type(k) ~= "table" and not same(v, rawget(b, k)) then return false end
  end
  for _ in next, b do count_b = count_b + 1 end
  return count_a == count_b
end

local function assert_round_trips(v)
  local out = round_trip(v)
  assert.is_true(same(v, out), "value changed in the round trip")
  return out
end

-- The error core.encode raises for v, or fails the test when it does not.
local function encode_error(v, limit)
  local ok, err = pcall(encode, v, limit)
  assert.is_false(ok, "encode should have failed")
  assert.is_string(err)
  return err
end

-- Format helpers for hand-made malformed inputs (see the top of codec.c).
-- varint(n) for 0 <= n < 2^53, in arithmetic that every Lua has.
local function varint(n)
  local out = {}
  repeat
    local low = n % 128
    n = (n - low) / 128
    out[#out + 1] = string.char(n ~= 0 and low + 128 or low)
  until n == 0
  return table.concat(out)
end
local VARINT_2_63_MINUS_1 = string.rep("\255", 8) .. "\127"
local NAN_BYTES = "\0\0\0\0\0\0\248\127"
local TAG_STR, TAG_TABLE, TAG_INT, TAG_FLOAT = "\5", "\6", "\4", "\3"

local function assert_malformed(bytes)
  local ok, v, err = pcall(decode, bytes)
  assert.is_true(ok, "decode raised: " .. tostring(v))
  assert.is_nil(v)
  assert.is_string(err)
  assert.matches("^malformed message: .+ at byte %d+$", err)
  return err
end

describe("codec", function()
  describe("round trips", function()
    it("nil and booleans", function()
      assert.is_nil(round_trip(nil))
      assert.is_true(round_trip(true))
      assert.is_false(round_trip(false))
    end)

    it("integers stay integers over the whole int64 range", function()
      local values = { 0, 1, -1, 31, -32, 127, 128, -33, 255, 256, 1000, -1000,
                       MAXINT, MININT, MAXINT - 1, MININT + 1 }
      for shift = 0, INT_BITS do
        local p = int(2 ^ shift)
        for _, v in ipairs({ p, p - 1, p + 1, -p, -p - 1, -p + 1 }) do
          values[#values + 1] = v
        end
      end
      for _, v in ipairs(values) do
        local out = round_trip(v)
        assert.equals("integer", compat.type(out))
        assert.equals(v, out)
      end
    end)

    it("small integers encode short", function()
      assert.equals(1, #encode(0))
      assert.equals(1, #encode(-1))
      assert.equals(1, #encode(127))
      assert.is_true(#encode(MAXINT) <= 11)
    end)

    it("floats stay floats", function()
      for _, v in ipairs({ 1.5, -1.5, 0.1, 1e308, -1e-308, 4.9e-324,
                           2.0 ^ 63, -(2.0 ^ 63), math.pi }) do
        local out = round_trip(v)
        assert.equals("float", compat.type(out))
        assert.equals(v, out)
      end
    end)

    it("an integral float stays a float where Lua has integers", function()
      local out = round_trip(2.0)
      assert.equals(2, out)
      if compat.integers then
        assert.equals("float", compat.type(out))
        assert.equals(TAG_FLOAT, encode(2.0):sub(1, 1))
      else -- 2.0 is 2: sent as an integer, so a 5.3+ peer sees one
        assert.equals(encode(2), encode(2.0))
      end
    end)

    it("-0.0 keeps its sign", function()
      local out = round_trip(NEG_ZERO)
      assert.equals("float", compat.type(out))
      assert.equals(-math.huge, 1 / out)
      assert.equals(math.huge, 1 / round_trip(ZERO))
    end)

    it("inf, -inf and nan", function()
      assert.equals(math.huge, round_trip(math.huge))
      assert.equals(-math.huge, round_trip(-math.huge))
      local nan = round_trip(0 / 0)
      assert.equals("float", compat.type(nan))
      assert.is_true(nan ~= nan)
    end)

    it("strings, binary safe, at every length boundary", function()
      assert.equals("", round_trip(""))
      local bytes = {}
      for b = 0, 255 do bytes[#bytes + 1] = string.char(b) end
      local all = table.concat(bytes)
      assert.equals(all, round_trip(all))
      assert.equals("a\0b", round_trip("a\0b"))
      for _, n in ipairs({ 1, 30, 31, 32, 33, 127, 128, 129, 16383, 16384 }) do
        local s = string.rep("x", n)
        assert.equals(s, round_trip(s))
      end
    end)

    it("an 8 MiB string", function()
      local s = string.rep("0123456789abcdef", 512 * 1024)
      assert.equals(8 * 1024 * 1024, #s)
      local out = round_trip(s)
      assert.equals(#s, #out)
      assert.is_true(s == out)
    end)

    it("nested tables", function()
      assert_round_trips({})
      assert_round_trips({ seq = 1, text = "hello world" })
      assert_round_trips({ a = { b = { c = { d = { "e", 1, 2.5, false } } } },
                           list = { { 1 }, { 2, { 3 } }, {} } })
    end)

    it("arrays, including holes", function()
      local big = {}
      for i = 1, 10000 do big[i] = i * 3 end
      assert_round_trips(big)
      local out = assert_round_trips({ 1, nil, 3, nil, 5 })
      assert.is_nil(out[2])
      assert.equals(5, out[5])
      assert_round_trips({ nil, nil, "x" })
      local sparse = { [1] = "a", [1000] = "b", [-5] = "c", [0] = "d" }
      assert_round_trips(sparse)
    end)

    it("an array whose entries sit in the hash part, or in no order, encodes as the same array", function()
      local forward, backward = {}, {}
      for i = 1, 50 do forward[i] = i * 3 end
      for i = 50, 1, -1 do backward[i] = i * 3 end
      assert.equals(encode(forward), encode(backward))
      local expected = TAG_TABLE .. varint(50) .. varint(0)
      for i = 1, 50 do expected = expected .. encode(i * 3) end
      assert.equals(expected, encode(backward))
      -- with pairs and key 0 too: every entry arrives once
      local mixed = { [0] = "zero", k = "v" }
      for i = 20, 1, -1 do mixed[i] = i end
      mixed[1.5] = "x"
      local out = assert_round_trips(mixed)
      assert.equals(20, #out)
    end)

    it("keys of every sendable type", function()
      local key_table = { 1, 2 }
      local t = { 10, 20, 30,
                  [true] = "yes", [false] = "no",
                  [1.5] = "float", [-0.25] = "negative float",
                  [math.huge] = "inf", [-math.huge] = "-inf",
                  [-7] = "negative", [0] = "zero",
                  [MAXINT] = "max", [MININT] = "min",
                  name = "string", [""] = "empty", ["\0\255"] = "binary",
                  [key_table] = "table key" }
      local out = round_trip(t)
      for k, v in pairs(t) do
        if k ~= key_table then assert.equals(v, out[k]) end
      end
      -- The table key arrives as a new table equal to the one sent.
      local found
      for k, v in pairs(out) do
        if type(k) == "table" then
          assert.is_nil(found)
          found = k
          assert.equals("table key", v)
        end
      end
      assert.is_true(same(key_table, found))
      assert.is_true(found ~= key_table)
    end)

    it("more than 127 and more than 16383 hash keys", function()
      for _, n in ipairs({ 127, 128, 129, 16383, 16384, 20000 }) do
        local t = {}
        for i = 1, n do t["k" .. i] = i end
        local out = assert_round_trips(t)
        assert.equals(n, out["k" .. n])
      end
    end)

    it("a table reached twice arrives as two equal copies", function()
      local shared = { x = 1, list = { 1, 2, 3 } }
      local out = assert_round_trips({ a = shared, b = shared, shared, shared })
      assert.is_true(same(out.a, shared))
      assert.is_true(same(out.b, shared))
      assert.is_true(out.a ~= out.b)
      assert.is_true(out[1] ~= out[2])
    end)

    it("ignores metatables and sends raw contents", function()
      local proxy = setmetatable({ real = 1 }, {
        __index = function() return "from __index" end,
        __len = function() return 99 end,
        __pairs = function() error("__pairs must not be called") end,
      })
      local out = round_trip(proxy)
      assert.is_nil(getmetatable(out))
      assert.is_true(same({ real = 1 }, out))
      local out2 = round_trip({ proxy })
      assert.equals(1, out2[1].real)
    end)

    it("nesting exactly at the depth limit", function()
      local t = {}
      for _ = 2, 128 do t = { t } end
      local out = round_trip(t)
      local depth = 0
      while out do
        depth = depth + 1
        out = out[1]
      end
      assert.equals(128, depth)
    end)

    it("encodes equal values to the same bytes", function()
      local v = { seq = 42, text = "hello world", list = { 1, 2, 3 } }
      assert.equals(encode(v), encode(v))
      assert.equals(encode(round_trip(v)), encode(round_trip(v)))
    end)
  end)

  describe("unsendable values", function()
    it("a function, naming the key", function()
      local err = encode_error({ cb = function() end })
      assert.matches("function", err)
      assert.matches("cb", err)
      assert.matches("function", encode_error(print))
    end)

    it("gives the path of a nested bad value", function()
      local err = encode_error({ opts = { handlers = { 1, 2, print } } })
      assert.matches("function", err)
      assert.matches("opts.handlers[3]", err, 1, true)
    end)

    it("a coroutine", function()
      local err = encode_error({ co = coroutine.create(function() end) })
      assert.matches("coroutine", err)
      assert.matches("co", err)
    end)

    it("a userdata", function()
      local err = encode_error({ out = io.stdout })
      assert.matches("userdata", err)
      assert.matches("out", err)
    end)

    it("an unsendable table key", function()
      local err = encode_error({ [print] = true })
      assert.matches("function", err)
      assert.matches("key", err)
    end)

    it("a table that contains itself", function()
      local t = {}
      t.self = t
      assert.matches("cycle", encode_error(t))
      local a, b = {}, {}
      a.b = b
      b.list = { a }
      local err = encode_error(a)
      assert.matches("cycle", err)
      assert.matches("b.list[1]", err, 1, true)
    end)

    it("a table used as its own key", function()
      local t = {}
      t[t] = true
      assert.matches("cycle", encode_error(t))
    end)

    it("nesting deeper than the limit", function()
      local t = {}
      for _ = 2, 129 do t = { t } end
      assert.matches("deep", encode_error(t))
    end)

    it("a message over the limit", function()
      local err = encode_error(string.rep("x", 100), 50)
      assert.matches("^message is %d+%+ bytes, over the limit of 50$", err)
      local v = { seq = 1, text = "hello world" }
      local n = #encode(v)
      assert.equals(n, #encode(v, n))
      assert.matches("over the limit", encode_error(v, n - 1))
      assert.matches("over the limit", encode_error(nil, 0))
    end)

    it("the default limit is 64 MiB", function()
      local s = string.rep("x", 64 * 1024 * 1024)
      assert.matches("over the limit of 67108864", encode_error(s))
    end)

    it("gives up early on a huge DAG", function()
      local t = { string.rep("x", 100) }
      for _ = 1, 50 do t = { t, t } end -- 2^50 leaves
      local start = os.clock()
      assert.matches("over the limit", encode_error(t, 1024 * 1024))
      assert.matches("over the limit", encode_error(t))
      assert.is_true(os.clock() - start < 5)
    end)

    it("a failed encode leaves encode usable", function()
      encode_error({ print })
      assert.is_true(same({ 1, 2 }, round_trip({ 1, 2 })))
    end)

    it("rejects a negative limit", function()
      assert.has_error(function() encode(1, -1) end)
    end)
  end)

  describe("malformed input", function()
    local samples = compat.pack(
      nil, true, false, 0, 200, -1000, MAXINT, MININT,
      1.5, 0 / 0, "", "short", string.rep("long", 50),
      { seq = 1, text = "hello world" },
      { 1, nil, 3, { a = { b = "c" } }, [true] = 2.5 })

    it("returns nil and a message for every truncated encoding", function()
      for i = 1, samples.n do
        local bytes = encode(samples[i])
        for cut = 0, #bytes - 1 do
          assert_malformed(bytes:sub(1, cut))
        end
      end
    end)

    it("rejects trailing bytes", function()
      local err = assert_malformed(encode({ 1, 2 }) .. "x")
      assert.matches("trailing", err)
      assert.matches("at byte " .. #encode({ 1, 2 }), err, 1, true)
      assert_malformed(encode(nil) .. encode(nil))
    end)

    it("rejects unknown tags", function()
      for tag = 7, 0x3f do assert_malformed(string.char(tag)) end
    end)

    it("rejects declared lengths and counts larger than the input", function()
      assert_malformed(TAG_STR .. varint(2 ^ 40) .. "abc")
      assert_malformed(TAG_STR .. VARINT_2_63_MINUS_1 .. "abc")
      assert_malformed(TAG_STR .. varint(4) .. "abc")
      assert_malformed(TAG_TABLE .. varint(2 ^ 40) .. varint(0) .. "\0\0")
      assert_malformed(TAG_TABLE .. varint(0) .. varint(2 ^ 40) .. "\0\0")
      assert_malformed(TAG_TABLE .. varint(3) .. varint(0) .. "\0\0")
      assert_malformed(TAG_TABLE .. varint(0) .. varint(2) .. "\1\1\2")
      -- Each element owed to an outer table needs a byte of its own.
      assert_malformed(TAG_TABLE .. varint(2) .. varint(0) ..
                       TAG_TABLE .. varint(3) .. varint(0) .. "\0\0\0")
    end)

    it("rejects varints that overflow 64 bits", function()
      assert_malformed(TAG_INT .. string.rep("\255", 10) .. "\1")
      assert_malformed(TAG_INT .. string.rep("\255", 9) .. "\2")
      assert_malformed(TAG_INT .. string.rep("\128", 11) .. "\0")
    end)

    it("accepts the largest varint", function()
      -- -2^63: an integer from 5.3 on, the same value as a double before.
      assert.equals(math.mininteger or -2 ^ 63, decode(TAG_INT .. string.rep("\255", 9) .. "\1"))
    end)

    it("rejects nil and nan keys and nil hash values", function()
      local one_pair = TAG_TABLE .. varint(0) .. varint(1)
      assert.matches("nil table key", assert_malformed(one_pair .. "\0\1"))
      local nan = TAG_FLOAT .. NAN_BYTES
      assert.matches("nan table key", assert_malformed(one_pair .. nan .. "\1"))
      assert_malformed(one_pair .. "\1\0")
      -- A sane pair in the same shape decodes.
      local t = decode(one_pair .. "\2\1")
      assert.is_false(t[true])
    end)

    it("rejects nesting deeper than the limit", function()
      local head = TAG_TABLE .. varint(1) .. varint(0)
      local ok_bytes = head:rep(127) .. TAG_TABLE .. varint(0) .. varint(0)
      assert.is_table(decode(ok_bytes))
      local deep = head:rep(128) .. TAG_TABLE .. varint(0) .. varint(0)
      assert.matches("deep", assert_malformed(deep))
      assert_malformed(head:rep(100000))
    end)

    it("never raises on random bytes", function()
      math.randomseed(12345)
      local decoded = 0
      for _ = 1, 20000 do
        local n = math.random(0, 40)
        local bytes = {}
        for j = 1, n do bytes[j] = string.char(math.random(0, 255)) end
        local s = table.concat(bytes)
        local ok, v, err = pcall(decode, s)
        assert.is_true(ok, "decode raised: " .. tostring(v))
        if err ~= nil then
          assert.is_nil(v)
          assert.matches("^malformed message: ", err)
        else
          decoded = decoded + 1
          -- Whatever decodes must re-encode and decode to the same value.
          assert.is_true(same(v, round_trip(v)))
        end
      end
      assert.is_true(decoded > 0)
    end)

    it("never raises on mutated valid encodings", function()
      math.randomseed(54321)
      for i = 1, samples.n do
        local bytes = encode(samples[i])
        for _ = 1, 500 do
          local b = { bytes:byte(1, -1) }
          for _ = 1, math.random(1, 3) do
            local at = math.random(1, #b)
            b[at] = math.random(0, 255)
          end
          local ok, v, err = pcall(decode, string.char(compat.unpack(b)))
          assert.is_true(ok, "decode raised: " .. tostring(v))
          if err ~= nil then assert.is_nil(v) end
        end
      end
    end)

    it("rejects the empty string", function()
      assert_malformed("")
    end)

    it("needs a string", function()
      assert.has_error(function() decode({}) end)
    end)
  end)
  -- A master and its workers may run different Lua versions (settings.lua).
  describe("numbers across Lua versions", function()
    it("sends every integral number within 2^53 with the integer tag", function()
      assert.equals("\131", encode(3))
      assert.equals(TAG_INT, encode(int(2 ^ 53)):sub(1, 1))
      assert.equals(TAG_INT, encode(-int(2 ^ 53)):sub(1, 1))
      assert.equals(TAG_FLOAT, encode(NEG_ZERO):sub(1, 1))
      assert.equals(TAG_FLOAT, encode(0.5):sub(1, 1))
    end)

    it("sends a double beyond 2^53 as a float, integral or not", function()
      assert.equals(TAG_FLOAT, encode(2 ^ 54):sub(1, 1))
      assert.equals(2 ^ 54, round_trip(2 ^ 54))
    end)

    it("decodes integers beyond 2^53 exactly from 5.3 on, to the nearest double before", function()
      -- 2^53 + 1: zigzag 2^54 + 2, itself no double, so its varint by hand
      local out = decode(TAG_INT .. "\130" .. string.rep("\128", 6) .. "\32")
      if compat.integers then
        assert.equals(int(2 ^ 53) + 1, out)
        assert.equals("integer", compat.type(out))
      else
        assert.equals(2 ^ 53, out)
      end
      -- 2^63 - 1 (zigzag 2^64 - 2): 2^63 as a double
      local max = decode(TAG_INT .. "\254" .. string.rep("\255", 8) .. "\1")
      assert.equals(math.maxinteger or 2 ^ 63, max)
    end)
  end)
end)
