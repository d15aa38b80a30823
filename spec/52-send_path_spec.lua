-- The send path (API.md, Worker object: send's return values, 'drain',
-- sendHighWaterMark, maxQueueSize; README "The send path"): a peer that
-- stops reading costs its sender at most maxQueueSize (plus a message),
-- send says so by its return values and never raises, and everything
-- queued arrives once the peer reads again. A sparse table costs what its
-- entries cost, not its border.
local uv = require("luv")
local helper = require("helper")
local cluster = require("cluster")
local util = dofile(helper.fixture("sh_util"))

local MiB = 1024 * 1024
local MSG = string.rep("m", 64 * 1024)

local function rss_kb()
  local f = assert(io.open("/proc/self/status"))
  local kb = tonumber(f:read("*a"):match("VmRSS:%s*(%d+)"))
  f:close()
  return kb
end

local proc_state = helper.proc_state

local function stopped(pid)
  return proc_state(pid) == "T"
end

describe("a worker that stops reading", function()
  local stopped_pid
  after_each(function()
    if stopped_pid then uv.kill(stopped_pid, "sigcont") end
    stopped_pid = nil
    util.cleanup()
  end)

  it("gets false above sendHighWaterMark, ENOBUFS at maxQueueSize, then every queued message", function()
    util.setup({ exec = helper.fixture("hard_worker"), args = {}, maxQueueSize = 8 * MiB,
      sendHighWaterMark = 1 * MiB })
    local w = util.fork()
    assert.equal("up", (util.request(w, { cmd = "echo", value = "up" }) or {}).value)
    local drains, cluster_drains = 0, 0
    w:on("drain", function() drains = drains + 1 end)
    util.on("drain", function(worker) if worker == w then cluster_drains = cluster_drains + 1 end end)

    assert(uv.kill(w.pid, "sigstop"))
    stopped_pid = w.pid
    assert.is_true(helper.wait(function() return stopped(w.pid) end), "the worker did not stop")

    collectgarbage()
    local rss0 = rss_kb()
    local queued, first_false, refused = 0, nil, nil
    for i = 1, 100000 do -- 6 GiB of sends if nothing refused them
      local ok, err = w:send(MSG)
      assert.is_boolean(ok)
      if ok == false and err ~= nil then
        refused = err
        break
      end
      queued = queued + 1
      if not ok and not first_false then first_false = i end
    end
    local grown = rss_kb() - rss0
    assert.is_truthy(refused, "send never refused a message")
    assert.matches("^ENOBUFS: ", refused)
    assert.is_truthy(first_false, "send never returned false")
    assert.is_true(first_false < queued, "false came only with the last queued message")
    -- false from the mark on: the messages before it fit under 1 MiB plus
    -- what the socket took.
    assert.is_true((first_false - 1) * #MSG >= MiB - #MSG, "false came at message " .. first_false)
    -- The queue filled to maxQueueSize (the socket holds some more).
    assert.is_true(queued * #MSG >= 8 * MiB - #MSG, queued .. " messages queued")
    -- A peer that stops reading costs at most maxQueueSize (+ slack).
    assert.is_true(grown <= (8 + 32) * 1024, "RSS grew by " .. grown .. " kB")
    -- Refused again, and the callback gets the same error; no 'drain' yet.
    local cb_err
    local ok, err = w:send(MSG, function(e) cb_err = e end)
    assert.is_false(ok)
    assert.matches("^ENOBUFS: ", err)
    assert.is_true(helper.wait(function() return cb_err ~= nil end))
    assert.equal(err, cb_err)
    assert.equal(0, drains)

    assert(uv.kill(w.pid, "sigcont"))
    stopped_pid = nil
    assert.is_true(helper.wait(function() return drains > 0 and cluster_drains > 0 end, 10000),
      "'drain': " .. drains .. " on the Worker, " .. cluster_drains .. " on cluster")
    assert.equal(1, drains)
    assert.equal(1, cluster_drains)
    local count = util.request(w, { cmd = "count" }, nil, 10000)
    assert.is_truthy(count, "no count from the worker")
    assert.equal(queued, count.n)
    -- Sends are taken again.
    assert.is_true(w:send("one more"))
  end)
end)

describe("a master that stops reading", function()
  local state
  after_each(function()
    if state and not state.exited then
      uv.kill(state.pid, "sigcont")
      uv.kill(state.pid, "sigkill")
      helper.wait(function() return state.exited end, 5000)
    end
    state = nil
  end)

  -- The master here is a process of its own (spec/fixtures/hard_backlog),
  -- so that the spec can stop it while its worker sends.
  it("gets false, then ENOBUFS from the worker's send, then every queued message", function()
    local worker_pid
    state = helper.spawn_lua(helper.fixture("hard_backlog"), {}, function(line)
      worker_pid = worker_pid or tonumber(line:match("^worker (%d+)$"))
    end)
    assert.is_true(helper.wait(function() return worker_pid ~= nil or state.exited end, 10000),
      "the worker did not start")
    assert.is_truthy(worker_pid)
    assert(uv.kill(state.pid, "sigstop"))
    assert.is_true(helper.wait(function() return stopped(state.pid) end), "the master did not stop")
    assert(uv.kill(worker_pid, "sigusr1"))
    local sent
    assert.is_true(helper.wait(function()
      for _, l in ipairs(state.lines) do if l:match("^sent ") then sent = l return true end end
      return false
    end, 10000), "the worker did not report its sends")
    local queued, first_false, err, grown = sent:match("^sent (%d+) (%d+) (%S+) (%-?%d+)$")
    queued, first_false, grown = tonumber(queued), tonumber(first_false), tonumber(grown)
    assert.is_truthy(queued, sent)
    assert.matches("^ENOBUFS:", err)
    assert.is_true(first_false > 1 and first_false < queued, sent)
    assert.is_true(queued * #MSG >= 8 * MiB - #MSG, sent)
    assert.is_true(grown <= (8 + 32) * 1024, "the worker's RSS grew by " .. grown .. " kB")
    for _, l in ipairs(state.lines) do assert.is_not_equal("drain", l) end

    assert(uv.kill(state.pid, "sigcont"))
    assert.is_true(helper.wait(function() return state.exited end, 15000), "the master did not end")
    assert.equal(0, state.code)
    local lines = table.concat(state.lines, "\n")
    assert.matches("\ndrain\n", lines .. "\n")
    assert.matches("\nreceived " .. queued .. "\n", lines .. "\n")
  end)
end)

describe("a sparse table", function()
  after_each(util.cleanup)

  it("with 43 entries and a border at 2^40 goes both ways intact, at the cost of its entries", function()
    util.setup({ exec = helper.fixture("hard_worker"), args = {} })
    local w = util.fork()
    local t = {}
    for i = 1, 42 do t[i] = i * 10 end
    t[2 ^ 40] = "far"
    local expected = {}
    for k, v in pairs(t) do expected[k] = v end
    local shapes = { t, { 1, 2, [2 ^ 40] = 3 }, { [2 ^ 40] = true, [2 ^ 40 - 1] = false },
      { nested = { [1] = "a", [2 ^ 40] = { [2 ^ 52] = "b" } } } }
    local before = util.request(w, { cmd = "rss" })
    assert.is_truthy(before)
    collectgarbage()
    local rss0 = rss_kb()
    for i, shape in ipairs(shapes) do
      local reply = util.request(w, { cmd = "echo", value = shape })
      assert.is_truthy(reply, "shape " .. i .. ": no echo")
      assert.same(shape, reply.value, "shape " .. i)
    end
    assert.same(expected, t) -- sending does not touch the table
    assert.equal(43, (function() local n = 0 for _ in pairs(t) do n = n + 1 end return n end)())
    local after = util.request(w, { cmd = "rss" })
    assert.is_truthy(after)
    assert.is_true(rss_kb() - rss0 <= 32 * 1024, "master RSS grew by " .. (rss_kb() - rss0) .. " kB")
    assert.is_true(after.kb - before.kb <= 32 * 1024, "worker RSS grew by " .. (after.kb - before.kb) .. " kB")
    -- Still the same worker, still talking.
    assert.is_true(w:isConnected())
    assert.is_truthy(cluster.workers[w.id])
  end)
end)
