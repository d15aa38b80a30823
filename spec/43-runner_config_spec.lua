-- cluster.supervise's on_start option: called once, before the first
-- fork; an error it raises comes out of start with no worker left.
local helper = require("helper")
local cluster = require("cluster")
local supervise = require("cluster.supervise")

describe("cluster.supervise on_start", function()
  local sv

  after_each(function()
    if sv and sv.state ~= "stopped" then
      local done = false
      sv:stop({ immediate = true }, function() done = true end)
      helper.wait(function() return done end, 3000)
    end
    sv = nil
  end)

  it("is called once with the supervisor, after setup and before the first fork", function()
    local seen, calls = nil, 0
    sv = supervise.start({
      workers = 2, exec = helper.fixture("sv_server"), args = { "0" }, heartbeat = false,
      on_start = function(s)
        calls = calls + 1
        local forked = 0
        for _ in pairs(cluster.workers) do forked = forked + 1 end
        seen = { size = s:size(), serving = #s:workers(), forked = forked, spawns = 0 }
        s:on("spawn", function() seen.spawns = seen.spawns + 1 end)
      end,
    })
    assert.equal(1, calls)
    assert.same({ size = 2, serving = 0, forked = 0, spawns = 2 }, seen)
  end)

  it("an error it raises comes out of start, with no worker left running", function()
    local pid
    local ok, err = pcall(supervise.start, {
      workers = 1, exec = helper.fixture("sv_server"), args = { "0" }, heartbeat = { interval = 20, timeout = 1000 },
      on_start = function(s)
        s:on("spawn", function(ev) pid = ev.pid end)
        s:add()
        error({ reason = "no database" })
      end,
    })
    assert.is_false(ok)
    assert.same({ reason = "no database" }, err)
    assert.is_number(pid)
    assert.is_true(helper.wait(function()
      for _, w in pairs(cluster.workers) do if w.pid == pid then return false end end
      return not helper.alive(pid)
    end, 3000))
  end)

  it("must be a function", function()
    assert.has_error(function() supervise.start({ exec = "x.lua", on_start = 1 }) end,
      "cluster.supervise: 'on_start' must be a function")
  end)
end)
