-- Ending a worker from either side: disconnect and kill (Node's
-- test-cluster-disconnect*, -worker-disconnect, -worker-kill,
-- -worker-isdead, -worker-isconnected, -kill-disconnect).
local helper = require("helper")
local cluster = require("cluster")
local util = dofile(helper.fixture("lc_util"))

local WORKER = helper.fixture("lc_worker")

-- Records the worker's 'disconnect' and 'exit' in order, with exit's
-- arguments and exitedAfterDisconnect as seen in the exit listener.
local function watch(w)
  local rec = { events = {} }
  w:on("disconnect", function() rec.events[#rec.events + 1] = "disconnect" end)
  w:on("exit", function(code, signal)
    rec.events[#rec.events + 1] = "exit"
    rec.exited, rec.code, rec.signal = true, code, signal
    rec.after = w.exitedAfterDisconnect
  end)
  return rec
end

local function wait_exit(rec)
  local ok = helper.wait(function() return rec.exited end, 5000)
  if ok then util.settle() end
  return ok
end

describe("ending a worker", function()
  before_each(function()
    util.setup({ exec = WORKER, args = {} })
  end)
  after_each(util.cleanup)

  describe("from the master", function()
    it("worker:disconnect() ends it gracefully: disconnect, then exit with code 0", function()
      local w = util.fork()
      local rec = watch(w)
      assert.is_true(util.online(w))
      w:disconnect()
      assert.is_true(wait_exit(rec))
      assert.same({ "disconnect", "exit" }, rec.events)
      assert.equal(0, rec.code)
      assert.is_nil(rec.signal)
      assert.is_true(rec.after)
    end)

    it("worker:disconnect() delivers messages sent before it", function()
      local w = util.fork()
      local rec = watch(w)
      local count
      w:on("message", function(m) if type(m) == "table" and m.re == "seq_report" then count = m.count end end)
      for i = 1, 100 do w:send({ seq = i }) end
      w:send({ cmd = "seq_report" })
      w:disconnect()
      assert.is_true(wait_exit(rec))
      assert.equal(0, rec.code)
      assert.equal(100, count)
    end)

    it("worker:kill() sends SIGTERM by default, exitedAfterDisconnect true", function()
      local w = util.fork()
      local rec = watch(w)
      assert.is_true(util.online(w))
      w:kill()
      assert.is_true(wait_exit(rec))
      assert.equal("SIGTERM", rec.signal)
      assert.is_nil(rec.code)
      assert.is_true(rec.after)
      assert.same({ "disconnect", "exit" }, rec.events)
    end)

    it("worker:kill('SIGKILL') ends it by SIGKILL", function()
      local w = util.fork()
      local rec = watch(w)
      assert.is_true(util.online(w))
      w:kill("SIGKILL")
      assert.is_true(wait_exit(rec))
      assert.equal("SIGKILL", rec.signal)
      assert.is_nil(rec.code)
      assert.is_true(rec.after)
    end)

    it("worker:kill() with a bad signal name raises an error naming 'signal'", function()
      local w = util.fork()
      assert.is_true(util.online(w))
      local ok, err = pcall(w.kill, w, "NOT_A_SIGNAL")
      assert.is_false(ok)
      assert.matches("signal", tostring(err), 1, true)
      -- and nothing happened to the worker
      assert.is_true(w:isConnected())
      assert.is_false(w.exitedAfterDisconnect)
      local r = util.request(w, { cmd = "seq_report" })
      assert.is_table(r, "the worker no longer answers")
    end)
  end)

  describe("from the worker", function()
    it("cluster.worker:disconnect(): the master sees exitedAfterDisconnect and code 0", function()
      local w = util.fork()
      local rec = watch(w)
      assert.is_true(util.online(w))
      w:send({ cmd = "disconnect" })
      assert.is_true(wait_exit(rec))
      assert.same({ "disconnect", "exit" }, rec.events)
      assert.equal(0, rec.code)
      assert.is_nil(rec.signal)
      assert.is_true(rec.after)
    end)

    it("cluster.worker:kill(): exit code 0, exitedAfterDisconnect true", function()
      local w = util.fork()
      local rec = watch(w)
      assert.is_true(util.online(w))
      w:send({ cmd = "kill" })
      assert.is_true(wait_exit(rec))
      assert.equal(0, rec.code)
      assert.is_nil(rec.signal)
      assert.is_true(rec.after)
      assert.same({ "disconnect", "exit" }, rec.events)
    end)
  end)

  describe("cluster.disconnect(cb)", function()
    it("disconnects every worker and calls cb once, after all have disconnected", function()
      local ws = { util.fork(), util.fork(), util.fork() }
      local disconnected, calls, connected_at_cb = 0, 0, nil
      for _, w in ipairs(ws) do
        w:on("disconnect", function() disconnected = disconnected + 1 end)
        assert.is_true(util.online(w))
      end
      cluster.disconnect(function()
        calls = calls + 1
        connected_at_cb = 0
        for _, w in ipairs(ws) do
          if w:isConnected() then connected_at_cb = connected_at_cb + 1 end
        end
        connected_at_cb = { connected_at_cb, disconnected }
      end)
      assert.equal(0, calls)
      assert.is_true(helper.wait(function() return util.all_dead(ws) and calls > 0 end, 5000))
      util.settle()
      assert.equal(1, calls)
      assert.same({ 0, 3 }, connected_at_cb)
      for _, w in ipairs(ws) do
        assert.is_true(w.exitedAfterDisconnect)
        assert.is_nil(cluster.workers[w.id])
      end
    end)

    it("calls cb on a later loop turn when there is no worker", function()
      local calls = 0
      cluster.disconnect(function() calls = calls + 1 end)
      assert.equal(0, calls)
      assert.is_true(helper.wait(function() return calls > 0 end, 5000))
      util.settle()
      assert.equal(1, calls)
    end)
  end)

  describe("isConnected() and isDead()", function()
    it("follow the worker from fork to disconnect to exit", function()
      local w = util.fork()
      local seen = { fork = { w:isConnected(), w:isDead() } }
      w:on("online", function() seen.online = { w:isConnected(), w:isDead() } end)
      w:on("disconnect", function() seen.disconnect = { w:isConnected(), w:isDead() } end)
      w:on("exit", function() seen.exit = { w:isConnected(), w:isDead() } end)
      assert.is_true(util.online(w))
      w:disconnect()
      assert.is_true(util.dead(w))
      util.settle()
      assert.same({
        fork = { true, false },
        online = { true, false },
        disconnect = { false, false },
        exit = { false, true },
      }, seen)
    end)

    it("after a kill from the master: not connected at once, dead after exit", function()
      local w = util.fork()
      assert.is_true(util.online(w))
      w:kill()
      assert.is_false(w:isConnected())
      assert.is_true(util.dead(w))
      assert.is_true(w:isDead())
      assert.is_false(w:isConnected())
    end)
  end)
end)
