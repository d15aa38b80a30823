-- Writes the fuzz seed corpora: valid encodings of representative values
-- into fuzz/seeds/decode, and framed versions into fuzz/seeds/frame.
-- Run from the repo root with cluster.core on the cpath, e.g.
--   LUA_CPATH='build/?.so' lua5.4 fuzz/make_seeds.lua
local core = require("cluster.core")

local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

local function deep(n)
  local t = { leaf = true }
  for i = 1, n do t = { t, depth = i } end
  return t
end

local wide = {}
for i = 1, 150 do wide["k" .. i] = i end -- over 127 pairs: a 2-byte count

local all_bytes = {}
for b = 0, 255 do all_bytes[#all_bytes + 1] = string.char(b) end

local values = {
  nil_ = nil,
  ["true"] = true,
  ["false"] = false,
  small_ints = { 0, 1, -1, 127, -32, 128, -33 },
  big_ints = { math.maxinteger, math.mininteger, 1 << 40, -(1 << 40) },
  floats = { 1.5, -0.0, math.huge, -math.huge, 0 / 0, 1e-300 },
  short_string = "hello world",
  long_string = string.rep("abcdefgh", 40),
  binary_string = table.concat(all_bytes),
  hello = { seq = 1, text = "hello world" },
  holes = { 1, nil, 3, nil, 5 },
  mixed_keys = { 10, 20, [true] = "t", [1.5] = "f", [-7] = "neg", name = "x",
                 [{ 1 }] = "table key" },
  nested = { a = { b = { c = { "d" } } }, list = { { 1 }, { 2 } } },
  deep = deep(20),
  wide = wide,
}

local order = {}
for name in pairs(values) do order[#order + 1] = name end
order[#order + 1] = "nil_"
table.sort(order)

local encoded = {}
for _, name in ipairs(order) do
  local bytes = core.encode(values[name])
  encoded[#encoded + 1] = bytes
  write("fuzz/seeds/decode/" .. name, bytes)
  write("fuzz/seeds/frame/" .. name, string.pack("<I4B", #bytes, 0) .. bytes)
end

-- A stream of several frames: user, internal and fd-carrying flags.
local stream = {}
for i, bytes in ipairs(encoded) do
  if #bytes <= 1024 then
    local flags = (i % 2) | ((i % 5) << 1) -- fd kinds 0..4
    stream[#stream + 1] = string.pack("<I4B", #bytes, flags) .. bytes
  end
end
write("fuzz/seeds/frame/stream", table.concat(stream))
-- A stream that stops halfway through its last frame.
local hello = core.encode(values.hello)
write("fuzz/seeds/frame/truncated",
      string.pack("<I4B", #hello, 0) .. hello .. string.pack("<I4B", #hello, 1) ..
      hello:sub(1, 7))
