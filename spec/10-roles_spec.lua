-- Roles: master and worker (Node's test-cluster-basic, -worker-isconnected,
-- -worker-constructor, -fork-env).
local helper = require("helper")
local cluster = require("cluster")
local compat = require("cluster.compat")
local util = dofile(helper.fixture("lc_util"))

describe("roles", function()
  after_each(util.cleanup)

  describe("in the busted process", function()
    it("isMaster and isPrimary are true", function()
      assert.is_true(cluster.isMaster)
      assert.is_true(cluster.isPrimary)
    end)

    it("isWorker is false", function()
      assert.is_false(cluster.isWorker)
    end)

    it("cluster.worker is nil", function()
      assert.is_nil(cluster.worker)
    end)
  end)

  describe("in a worker", function()
    local ARGS = { "one", "two words", "" }

    -- Forks lc_roles, returns the worker and its report, and ends it.
    local function report()
      util.setup({ exec = helper.fixture("lc_roles"), args = ARGS })
      local w = util.fork()
      local got
      w:on("message", function(m) got = m end)
      assert.is_true(helper.wait(function() return got ~= nil end, 5000), "no report from the worker")
      w:send("bye")
      assert.is_true(util.dead(w), "the worker did not exit")
      return w, got
    end

    it("isWorker is true, isMaster and isPrimary false", function()
      local _, r = report()
      assert.is_true(r.isWorker)
      assert.is_false(r.isMaster)
      assert.is_false(r.isPrimary)
    end)

    it("cluster.worker.id equals the master's worker.id", function()
      local w, r = report()
      assert.is_number(r.id)
      assert.equal("integer", compat.type(r.id))
      assert.equal(w.id, r.id)
    end)

    it("LUA_CLUSTER_WORKER_ID and LUA_CLUSTER_FD are gone from its environment", function()
      local _, r = report()
      assert.is_false(r.env_id)
      assert.is_false(r.env_fd)
    end)

    it("a process the worker starts is not a worker", function()
      local _, r = report()
      assert.equal("false true nil nil", r.child)
    end)

    it("arg[0] is the exec file and arg[1..n] the args", function()
      local _, r = report()
      assert.equal(helper.fixture("lc_roles"), r.arg0)
      assert.same(ARGS, r.args)
    end)
  end)
end)
