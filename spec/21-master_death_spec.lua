-- A worker does not outlive its master, whether it is waiting in its loop
-- (it sees the channel close) or stuck in Lua (PR_SET_PDEATHSIG).
local helper = require("helper")

local uv = require("luv")

local function workers_die_with_master(kind)
  local pids = {}
  -- If this spec fails, do not leave its workers spinning.
  finally(function()
    for _, pid in ipairs(pids) do
      if helper.alive(pid) then uv.kill(pid, "sigkill") end
    end
  end)
  local master = helper.spawn_lua(helper.fixture("master_of_two"), { kind }, function(line)
    local pid = line:match("^worker (%d+)$")
    if pid then pids[#pids + 1] = tonumber(pid) end
  end)
  assert.is_true(helper.wait(function() return #pids == 2 end, 10000), "workers never came online")
  assert.is_true(helper.alive(pids[1]) and helper.alive(pids[2]))
  assert(uv.kill(master.pid, "sigkill") == 0)
  -- Its exit and the end of its output: both of its handles are closed.
  assert.is_true(helper.wait(function() return master.exited and master.eof end))
  assert.is_true(helper.wait(function()
    return not helper.alive(pids[1]) and not helper.alive(pids[2])
  end, 5000), "a worker outlived its master")
end

describe("when the master dies", function()
  it("idle workers exit", function() workers_die_with_master("idle") end)
  it("CPU-busy workers exit", function() workers_die_with_master("busy") end)
end)
