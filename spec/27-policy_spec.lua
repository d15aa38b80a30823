-- cluster.schedulingPolicy: checked at fork, and what the workers see.
local helper = require("helper")
local cluster = require("cluster")

describe("cluster.schedulingPolicy", function()
  local saved
  before_each(function() saved = cluster.schedulingPolicy end)
  after_each(function() cluster.schedulingPolicy = saved end)

  it("raises at fork for an unknown policy, naming it", function()
    cluster.setup({ exec = helper.fixture("report_policy"), args = {} })
    cluster.schedulingPolicy = "bogus"
    local ok, err = pcall(cluster.fork)
    assert.is_false(ok)
    assert.matches("schedulingPolicy", tostring(err), 1, true)
    assert.matches("bogus", tostring(err), 1, true)
  end)

  it("is the master's in the worker", function()
    cluster.setup({ exec = helper.fixture("report_policy"), args = {} })
    cluster.schedulingPolicy = "shared"
    local w = cluster.fork({ LUA_CLUSTER_SCHED_POLICY = "reuseport" })
    local got
    w:on("message", function(m) got = m end)
    local ok = helper.wait(function() return got ~= nil end)
    w:kill("SIGKILL")
    assert.is_true(helper.wait(function() return w:isDead() end))
    assert.is_true(ok)
    assert.equal("shared", got.policy)
  end)
end)
