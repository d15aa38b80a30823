-- Reaping workers by pid leaves libuv's own children alone: a uv.spawn
-- child in the same process still gets its exit callback.
local uv = require("luv")
local helper = require("helper")
local cluster = require("cluster")

describe("uv.spawn next to cluster.fork", function()
  it("both get their exits", function()
    cluster.setup({ exec = helper.fixture("exit_code"), args = { "3" } })
    local spawned, worker_exits = {}, {}
    for i = 1, 3 do
      local handle
      handle = uv.spawn("/bin/sh", { args = { "-c", "exit " .. (10 + i) } }, function(code)
        spawned[#spawned + 1] = code
        handle:close()
      end)
      assert.truthy(handle)
      local w = cluster.fork()
      w:on("exit", function(code) worker_exits[#worker_exits + 1] = code end)
    end
    assert.is_true(helper.wait(function() return #spawned == 3 and #worker_exits == 3 end))
    table.sort(spawned)
    assert.same({ 11, 12, 13 }, spawned)
    assert.same({ 3, 3, 3 }, worker_exits)
  end)

  it("never lets SIGPIPE kill the master writing to a dead worker", function()
    cluster.setup({ exec = helper.fixture("exit_code"), args = { "0" } })
    local w = cluster.fork()
    local sends = 0
    -- Keep writing until the worker is gone and its channel closed.
    local timer = uv.new_timer()
    timer:start(0, 1, function()
      if w:send(string.rep("x", 65536)) then sends = sends + 1 end
    end)
    assert.is_true(helper.wait(function() return w:isDead() end))
    helper.close(timer)
    assert.is_false(w:send("after death"))
    assert.is_true(sends > 0)
  end)
end)
