-- A worker that sends a malformed frame is disconnected with an 'error'
-- event; the master runs on.
local helper = require("helper")
local cluster = require("cluster")

describe("a malformed frame from a worker", function()
  for _, damage in ipairs({ "oversized", "badflags", "badpayload", "trailing" }) do
    it("(" .. damage .. ") disconnects that worker only", function()
      cluster.setup({ exec = helper.fixture("bad_frame"), args = { damage } })
      local bad = cluster.fork()
      local errors, events = {}, {}
      bad:on("error", function(err) errors[#errors + 1] = err end)
      bad:on("disconnect", function() events[#events + 1] = "disconnect" end)
      bad:on("exit", function() events[#events + 1] = "exit" end)
      assert.is_true(helper.wait(function() return bad:isDead() end))
      assert.equal(1, #errors)
      assert.matches("malformed", errors[1])
      assert.same({ "disconnect", "exit" }, events)

      -- The master's channels to other workers still work.
      cluster.setup({ exec = helper.fixture("echo"), args = {} })
      local good = cluster.fork()
      local reply
      good:on("message", function(m) reply = m end)
      good:send({ still = "alive" })
      assert.is_true(helper.wait(function() return reply ~= nil end))
      assert.same({ still = "alive" }, reply)
      good:kill()
      assert.is_true(helper.wait(function() return good:isDead() end))
    end)
  end
end)
