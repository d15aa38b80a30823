-- The channel's send queue: sends made from a send callback still go out.
local helper = require("helper")
local cluster = require("cluster")

describe("the channel", function()
  it("writes a message sent from another message's write callback", function()
    cluster.setup({ exec = helper.fixture("send_in_callback"), args = {} })
    local w = cluster.fork()
    local got = {}
    w:on("message", function(m) got[#got + 1] = m end)
    local ok = helper.wait(function() return #got == 3 end, 5000)
    w:kill("SIGKILL")
    assert.is_true(helper.wait(function() return w:isDead() end))
    assert.is_true(ok, "only " .. #got .. " of 3 messages arrived")
    assert.equal("first", got[1])
    assert.equal("second", got[2])
    assert.same({ pid = w.pid, integer = true }, got[3])
  end)

  it("does the same from the master's side", function()
    cluster.setup({ exec = helper.fixture("echo"), args = {} })
    local w = cluster.fork()
    local got = {}
    w:on("message", function(m) got[#got + 1] = m end)
    w:send(1, function() w:send(2, function() w:send(3) end) end)
    local ok = helper.wait(function() return #got == 3 end, 5000)
    w:kill("SIGKILL")
    assert.is_true(helper.wait(function() return w:isDead() end))
    assert.is_true(ok)
    assert.same({ 1, 2, 3 }, got)
  end)

  it("reports a send callback that raises, and keeps going", function()
    cluster.setup({ exec = helper.fixture("echo"), args = {} })
    local w = cluster.fork()
    local got = {}
    w:on("message", function(m) got[#got + 1] = m end)
    local stderr, written = io.stderr, {}
    io.stderr = { write = function(_, ...) for _, s in ipairs({ ... }) do written[#written + 1] = s end end }
    local ok = pcall(function()
      w:send("a", function() error("boom in callback") end)
      w:send("b")
      assert(helper.wait(function() return #got == 2 end, 5000))
    end)
    io.stderr = stderr
    w:kill("SIGKILL")
    assert.is_true(helper.wait(function() return w:isDead() end))
    assert.is_true(ok)
    assert.same({ "a", "b" }, got)
    assert.matches("error in a send callback: .*boom in callback", table.concat(written))
  end)
end)
