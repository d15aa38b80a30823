-- Every worker is reaped and every fd given back, cycle after cycle.
local helper = require("helper")
local cluster = require("cluster")

describe("reaping", function()
  it("leaves no zombie and no fd after 200 fork/exit cycles", function()
    cluster.setup({ exec = helper.fixture("exit_code"), args = { "7" } })
    -- One cycle first: whatever libuv opens once (and what earlier specs
    -- still had closing) is settled before counting.
    local warm = cluster.fork()
    assert.is_true(helper.wait(function() return warm:isDead() end))
    local before = helper.fd_count()
    local exits, bad = 0, 0
    local function on_exit(_, code, signal)
      exits = exits + 1
      if code ~= 7 or signal ~= nil then bad = bad + 1 end
    end
    cluster:on("exit", on_exit)
    -- Ten at a time: concurrency without flooding a 2-core machine.
    for round = 1, 20 do
      for _ = 1, 10 do cluster.fork() end
      assert.is_true(helper.wait(function() return exits == round * 10 end, 10000),
        "round " .. round .. ": only " .. exits .. " exits")
    end
    cluster:off("exit", on_exit)
    assert.equal(0, bad)
    assert.equal(200, exits)
    assert.same({}, helper.zombies())
    assert.is_nil(next(cluster.workers))
    assert.equal(before, helper.fd_count())
  end)
end)
