-- Draining: cluster.worker's 'draining' event, fired when the worker is
-- asked to leave, before its servers close.
local helper = require("helper")
local util = dofile(helper.fixture("lc_util"))

describe("cluster.worker 'draining'", function()
  before_each(function() util.setup({ exec = helper.fixture("drain_events"), args = {} }) end)
  after_each(util.cleanup)

  -- Forks drain_events, waits until it listens; returns the worker and
  -- the log of what the master saw: its messages and events, in order.
  local function start()
    local w = util.fork()
    local seen = {}
    w:on("message", function(m) if type(m) == "table" and m.draining then seen[#seen + 1] = m end end)
    w:on("disconnect", function() seen[#seen + 1] = "disconnect" end)
    w:on("exit", function(code) seen[#seen + 1] = "exit " .. tostring(code) end)
    assert.is_true(helper.wait(function() return w.state == "listening" end, 5000))
    return w, seen
  end

  it("fires when the master's disconnect arrives, before the servers close, without arguments", function()
    local w, seen = start()
    w:disconnect()
    assert.is_true(helper.wait(function() return w:isDead() end, 5000))
    util.settle()
    assert.equal(3, #seen)
    assert.same({ draining = 1, closing = false, connected = true, args = 0 }, seen[1])
    assert.same({ "disconnect", "exit 0" }, { seen[2], seen[3] })
  end)

  it("fires once when the worker disconnects itself (twice)", function()
    local w, seen = start()
    w:send({ cmd = "leave" })
    assert.is_true(helper.wait(function() return w:isDead() end, 5000))
    util.settle()
    assert.equal(3, #seen)
    assert.same({ draining = 1, closing = false, connected = true, args = 0 }, seen[1])
    assert.same({ "disconnect", "exit 0" }, { seen[2], seen[3] })
    assert.is_true(w.exitedAfterDisconnect)
  end)
end)
