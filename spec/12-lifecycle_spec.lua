-- A worker's life as the master sees it: events and their order, state,
-- pid and id, cluster.workers, exit codes and signals (Node's
-- test-cluster-basic, -worker-events, -worker-death, -worker-exit,
-- -worker-kill, -worker-no-exit).
-- luacheck: ignore 122 (some specs replace io.stderr to catch what is reported there)
local uv = require("luv")
local helper = require("helper")
local cluster = require("cluster")
local compat = require("cluster.compat")
local util = dofile(helper.fixture("lc_util"))

local WORKER = helper.fixture("lc_worker")

describe("a worker's lifecycle", function()
  before_each(function()
    util.setup({ exec = WORKER, args = {} })
  end)
  after_each(util.cleanup)

  it("emits fork, online, disconnect, exit on cluster, in that order", function()
    local w
    local events = {}
    for _, name in ipairs({ "fork", "online", "disconnect", "exit" }) do
      util.on(name, function(x) if x == w then events[#events + 1] = name end end)
    end
    w = util.fork()
    assert.is_true(util.online(w))
    w:disconnect()
    assert.is_true(util.dead(w))
    util.settle()
    assert.same({ "fork", "online", "disconnect", "exit" }, events)
  end)

  it("emits online, disconnect, exit on the worker, in that order", function()
    local w = util.fork()
    local events = {}
    for _, name in ipairs({ "online", "disconnect", "exit" }) do
      w:on(name, function() events[#events + 1] = name end)
    end
    assert.is_true(util.online(w))
    w:disconnect()
    assert.is_true(util.dead(w))
    util.settle()
    assert.same({ "online", "disconnect", "exit" }, events)
  end)

  it("passes the worker to cluster 'fork' and 'online' listeners", function()
    local forked, online
    local w
    util.on("fork", function(x) if x == w then forked = x end end)
    util.on("online", function(x) if x == w then online = x end end)
    w = util.fork()
    assert.is_true(helper.wait(function() return forked and online end, 5000))
    assert.equal(w, forked)
    assert.equal(w, online)
  end)

  it("emits 'death' with the same arguments as 'exit'", function()
    local w
    local exit_args, death_args
    util.on("exit", function(...) if (...) == w then exit_args = compat.pack(...) end end)
    util.on("death", function(...) if (...) == w then death_args = compat.pack(...) end end)
    w = util.fork()
    assert.is_true(util.online(w))
    w:send({ cmd = "exit", code = 7 })
    assert.is_true(helper.wait(function() return exit_args and death_args end, 5000))
    assert.same({ n = 3, w, 7, nil }, exit_args)
    assert.same(exit_args, death_args)
    assert.equal(w, death_args[1])
  end)

  it("goes through the states none, online, disconnected, dead", function()
    local w = util.fork()
    local states = { w.state }
    w:on("online", function() states[#states + 1] = w.state end)
    w:on("disconnect", function() states[#states + 1] = w.state end)
    w:on("exit", function() states[#states + 1] = w.state end)
    assert.is_true(util.online(w))
    w:disconnect()
    assert.is_true(util.dead(w))
    util.settle()
    assert.same({ "none", "online", "disconnected", "dead" }, states)
  end)

  it("has pid and process.pid set when fork returns", function()
    local w = util.fork()
    assert.equal("integer", compat.type(w.pid))
    assert.is_true(w.pid > 0)
    assert.equal(w.pid, w.process.pid)
    assert.is_true(helper.alive(w.pid))
    assert.are_not.equal(uv.os_getpid(), w.pid)
  end)

  it("gives unique, increasing integer ids", function()
    local ws = { util.fork(), util.fork(), util.fork() }
    for i, w in ipairs(ws) do
      assert.equal("integer", compat.type(w.id))
      assert.is_true(w.id >= 1)
      if i > 1 then assert.is_true(w.id > ws[i - 1].id) end
    end
    local later = util.fork()
    assert.is_true(later.id > ws[3].id)
  end)

  it("keeps live workers in cluster.workers", function()
    local a, b = util.fork(), util.fork()
    assert.equal(a, cluster.workers[a.id])
    assert.equal(b, cluster.workers[b.id])
    assert.is_true(util.online(a) and util.online(b))
    assert.equal(a, cluster.workers[a.id])
  end)

  it("drops a worker from cluster.workers before the later of its exit/disconnect listeners", function()
    local w = util.fork()
    local order, present = {}, {}
    local function record(name)
      return function(x)
        if x ~= w then return end
        order[#order + 1] = name
        present[name] = cluster.workers[w.id] == w
      end
    end
    util.on("disconnect", record("disconnect"))
    util.on("exit", record("exit"))
    assert.is_true(util.online(w))
    w:disconnect()
    assert.is_true(util.dead(w))
    util.settle()
    assert.equal(2, #order)
    assert.is_false(present[order[2]], "still in cluster.workers in the later '" .. order[2] .. "' listener")
    assert.is_true(present[order[1]], "already gone in the earlier '" .. order[1] .. "' listener")
    assert.is_nil(cluster.workers[w.id])
  end)

  it("reports exit code 3, no signal, exitedAfterDisconnect false for os.exit(3)", function()
    local w = util.fork()
    local code, signal, after
    w:on("exit", function(c, s) code, signal, after = c, s, w.exitedAfterDisconnect end)
    assert.is_true(util.online(w))
    w:send({ cmd = "exit", code = 3 })
    assert.is_true(helper.wait(function() return code ~= nil end, 5000))
    assert.equal(3, code)
    assert.equal("integer", compat.type(code))
    assert.is_nil(signal)
    assert.is_false(after)
  end)

  it("reports signal SIGKILL, code nil, exitedAfterDisconnect false when killed from outside", function()
    local w = util.fork()
    local exited, code, signal
    local events = {}
    w:on("disconnect", function() events[#events + 1] = "disconnect" end)
    w:on("exit", function(c, s)
      events[#events + 1] = "exit"
      exited, code, signal = true, c, s
    end)
    assert.is_true(util.online(w))
    assert.equal(0, uv.kill(w.pid, "sigkill"))
    assert.is_true(helper.wait(function() return exited end, 5000))
    util.settle()
    assert.is_nil(code)
    assert.equal("SIGKILL", signal)
    assert.is_false(w.exitedAfterDisconnect)
    assert.same({ "disconnect", "exit" }, events)
    assert.is_nil(cluster.workers[w.id])
  end)

  it("emits no 'error' when a worker killed from outside left messages unread", function()
    local w = util.fork()
    local errors = {}
    w:on("error", function(e) errors[#errors + 1] = tostring(e) end)
    assert.is_true(util.online(w))
    uv.kill(w.pid, "sigstop")
    for i = 1, 100 do w:send({ unread = i }) end
    util.settle()
    uv.kill(w.pid, "sigkill")
    assert.is_true(util.dead(w))
    util.settle()
    assert.same({}, errors)
  end)

  describe("an error raised in a listener", function()
    local real_stderr
    local written
    before_each(function()
      written = {}
      real_stderr = io.stderr
      -- The report goes to io.stderr: catch it.
      io.stderr = setmetatable({}, { __index = function(_, k)
        if k == "write" then
          return function(self, ...)
            for _, s in ipairs({ ... }) do written[#written + 1] = tostring(s) end
            return self
          end
        end
        local v = real_stderr[k]
        if type(v) == "function" then return function(_, ...) return v(real_stderr, ...) end end
        return v
      end })
    end)
    after_each(function()
      io.stderr = real_stderr
    end)

    it("is reported and does not stop the other listeners", function()
      local w = util.fork()
      local second, cluster_saw = false, false
      w:on("online", function() error("lc boom in a listener") end)
      w:on("online", function() second = true end)
      util.on("online", function(x) if x == w then cluster_saw = true end end)
      assert.is_true(helper.wait(function() return second and cluster_saw end, 5000))
      assert.matches("lc boom in a listener", table.concat(written), 1, true)
    end)

    it("does not break later events", function()
      local w = util.fork()
      local events = {}
      w:on("online", function() error("lc boom online") end)
      util.on("disconnect", function(x) if x == w then error("lc boom disconnect") end end)
      w:on("disconnect", function() events[#events + 1] = "disconnect" end)
      w:on("exit", function(code) events[#events + 1] = "exit " .. tostring(code) end)
      assert.is_true(util.online(w))
      assert.equal("online", w.state)
      w:disconnect()
      assert.is_true(util.dead(w))
      util.settle()
      assert.same({ "disconnect", "exit 0" }, events)
      assert.is_nil(cluster.workers[w.id])
      local text = table.concat(written)
      assert.matches("lc boom online", text, 1, true)
      assert.matches("lc boom disconnect", text, 1, true)
    end)
  end)
end)
