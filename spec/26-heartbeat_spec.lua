-- The hooks a supervisor stands on: a worker's loop answers pings, and a
-- worker that does not listen can say it is ready.
local helper = require("helper")
local cluster = require("cluster")

describe("heartbeat and readiness", function()
  it("a running loop answers ping with 'heartbeat', a stuck one does not", function()
    cluster.setup({ exec = helper.fixture("ready"), args = {} })
    local idle = cluster.fork()
    cluster.setup({ exec = helper.fixture("busy"), args = {} })
    local stuck = cluster.fork()
    local beats = { [idle] = {}, [stuck] = {} }
    for w, list in pairs(beats) do w:on("heartbeat", function(seq) list[#list + 1] = seq end) end
    assert.is_true(helper.wait(function() return idle.state == "online" and stuck.state == "online" end))
    idle:ping(7)
    stuck:ping(8)
    local ok = helper.wait(function() return #beats[idle] == 1 end, 5000)
    -- The busy worker had as long as the idle one took, and more.
    local more = helper.wait(function() return #beats[stuck] > 0 end, 300)
    idle:kill("SIGKILL")
    stuck:kill("SIGKILL")
    assert.is_true(helper.wait(function() return idle:isDead() and stuck:isDead() end))
    assert.is_true(ok)
    assert.same({ 7 }, beats[idle])
    assert.is_false(more)
    assert.is_number(idle.lastHeartbeat)
  end)

  it("cluster.ready() in a worker fires 'ready' on the worker and the cluster", function()
    cluster.setup({ exec = helper.fixture("ready"), args = {} })
    local w = cluster.fork()
    local on_worker, on_cluster = false, nil
    w:on("ready", function() on_worker = true end)
    local function listener(worker) on_cluster = worker end
    cluster:on("ready", listener)
    local ok = helper.wait(function() return on_worker and on_cluster == w end)
    cluster:off("ready", listener)
    w:kill("SIGKILL")
    assert.is_true(helper.wait(function() return w:isDead() end))
    assert.is_true(ok)
  end)
end)
