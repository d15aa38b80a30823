-- A master and a worker under different Lua versions (settings.lua): a
-- 5.3+ interpreter against LuaJIT, whichever side busted runs. Numbers
-- cross as README's "Choices" says: integers keep their values (beyond
-- 2^53 the nearest double where every number is one), an integral double
-- within 2^53 arrives as an integer, a 5.3+ float stays a float.
local uv = require("luv")
local helper = require("helper")
local compat = require("cluster.compat")
local util = dofile(helper.fixture("lc_util"))

-- The peer: LuaJIT for a 5.3+ master, Lua 5.4 otherwise. Its core comes
-- from its own build directory (`make test` builds it).
local PEER = compat.integers and "luajit" or "lua5.4"
local PEER_CPATH_VAR = PEER == "luajit" and "LUA_CPATH" or "LUA_CPATH_5_4"
local PEER_CORE = uv.cwd() .. "/build/" .. PEER .. "/?.so"

local function find_in_path(name)
  for dir in (os.getenv("PATH") or "/usr/bin"):gmatch("[^:]+") do
    local path = dir .. "/" .. name
    if uv.fs_access(path, "X") then return path end
  end
end

local NEG_ZERO = tonumber("-0.0")

describe("a worker under another Lua version", function()
  after_each(util.cleanup)

  local reply
  before_each(function()
    local lua = find_in_path(PEER)
    assert.is_string(lua, PEER .. " is not installed")
    assert.is_truthy(uv.fs_stat((PEER_CORE:gsub("%?", "cluster/core"))),
      "the core is not built for " .. PEER .. ": make build LUA=" .. PEER)
    util.setup({ exec = helper.fixture("mixed_echo"), args = {}, lua = lua,
      env = { [PEER_CPATH_VAR] = PEER_CORE .. ";;" } })
    local w = util.fork()
    reply = nil
    w:on("message", function(m) reply = m end)
    w:send({ int = 3, float = 2.5, integral = 4.0, neg_zero = NEG_ZERO,
      big = compat.integers and math.maxinteger or 2 ^ 63 })
    assert.is_true(helper.wait(function() return reply ~= nil end, 5000), "no reply")
  end)

  it("runs that interpreter", function()
    assert.equal(PEER == "luajit" and "luajit" or "Lua 5.4", reply.lua)
  end)

  it("gets the master's numbers with their values", function()
    local got = reply.got
    assert.equal(3, got.int)
    assert.equal("integer", reply.kinds.int)
    assert.equal(2.5, got.float)
    assert.equal(4, got.integral)
    assert.equal(-math.huge, 1 / got.neg_zero)
    assert.equal("float", reply.kinds.neg_zero)
    -- 2^63 - 1 from a 5.3+ master is 2^63 in LuaJIT; 2^63 from LuaJIT is
    -- a float in 5.4.
    assert.equal(2 ^ 63, got.big + 0.0)
    assert.equal("float", reply.kinds.big)
    -- 4.0: from a 5.3+ master a float, which LuaJIT has only as the
    -- number 4; from LuaJIT a double within 2^53, sent as an integer.
    assert.equal("integer", reply.kinds.integral)
  end)

  it("sends numbers the master reads back by its own rules", function()
    local own = reply.own
    assert.equal(5, own.int)
    assert.equal("integer", compat.type(own.int))
    assert.equal(0.5, own.half)
    assert.equal(5, own.float)
    if PEER == "luajit" then
      -- LuaJIT's 5.0 is 5: within 2^53 it is sent, and arrives, as an integer.
      assert.equal("integer", compat.type(own.float))
      assert.equal(2 ^ 63, own.max)
      assert.equal("float", compat.type(own.max))
    else
      -- Lua 5.4's 5.0 is a float; this LuaJIT master sees the number 5.
      assert.equal(2 ^ 63, own.max) -- math.maxinteger, the nearest double
    end
  end)
end)
