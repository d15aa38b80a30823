-- The channel's send queue: sends made from a send callback still go out.
-- luacheck: ignore 122 (some specs replace io.stderr to catch what is reported there)
local helper = require("helper")
local cluster = require("cluster")
local uv = require("luv")

describe("the channel", function()
  it("writes a message sent from another message's write callback", function()
    cluster.setup({ exec = helper.fixture("send_in_callback"), args = {} })
    local w = cluster.fork()
    local got = {}
    w:on("message", function(m) got[#got + 1] = m end)
    local ok = helper.wait(function() return #got == 3 end, 5000)
    w:kill("SIGKILL")
    assert.is_true(helper.wait(function() return w:isDead() end))
    assert.is_true(ok, "only " .. #got .. " of 3 messages arrived")
    assert.equal("first", got[1])
    assert.equal("second", got[2])
    assert.same({ pid = w.pid, integer = true }, got[3])
  end)

  it("does the same from the master's side", function()
    cluster.setup({ exec = helper.fixture("echo"), args = {} })
    local w = cluster.fork()
    local got = {}
    w:on("message", function(m) got[#got + 1] = m end)
    w:send(1, function() w:send(2, function() w:send(3) end) end)
    local ok = helper.wait(function() return #got == 3 end, 5000)
    w:kill("SIGKILL")
    assert.is_true(helper.wait(function() return w:isDead() end))
    assert.is_true(ok)
    assert.same({ 1, 2, 3 }, got)
  end)

  it("reports a send callback that raises, and keeps going", function()
    cluster.setup({ exec = helper.fixture("echo"), args = {} })
    local w = cluster.fork()
    local got = {}
    w:on("message", function(m) got[#got + 1] = m end)
    local stderr, written = io.stderr, {}
    io.stderr = { write = function(_, ...) for _, s in ipairs({ ... }) do written[#written + 1] = s end end }
    local ok = pcall(function()
      w:send("a", function() error("boom in callback") end)
      w:send("b")
      assert(helper.wait(function() return #got == 2 end, 5000))
    end)
    io.stderr = stderr
    w:kill("SIGKILL")
    assert.is_true(helper.wait(function() return w:isDead() end))
    assert.is_true(ok)
    assert.same({ "a", "b" }, got)
    assert.matches("error in a send callback: .*boom in callback", table.concat(written))
  end)

  it("reports a 'message' listener that raises; the others and later messages still arrive", function()
    cluster.setup({ exec = helper.fixture("echo"), args = {} })
    local w = cluster.fork()
    local on_worker, on_cluster = {}, {}
    w:on("message", function(m) if m == "bad" then error("boom in a message listener") end end)
    w:on("message", function(m) on_worker[#on_worker + 1] = m end)
    local function cluster_listener(from, m)
      if from == w then
        on_cluster[#on_cluster + 1] = m
        if m == "bad" then error("boom in a cluster listener") end
      end
    end
    cluster:on("message", cluster_listener)
    local stderr, written = io.stderr, {}
    io.stderr = { write = function(_, ...) for _, s in ipairs({ ... }) do written[#written + 1] = s end end }
    local ok = pcall(function()
      w:send("bad")
      w:send("good")
      assert(helper.wait(function() return #on_worker == 2 and #on_cluster == 2 end, 5000))
    end)
    io.stderr = stderr
    cluster:off("message", cluster_listener)
    w:kill("SIGKILL")
    assert.is_true(helper.wait(function() return w:isDead() end))
    assert.is_true(ok)
    assert.same({ "bad", "good" }, on_worker)
    assert.same({ "bad", "good" }, on_cluster)
    local text = table.concat(written)
    assert.matches("error in a 'message' listener: .*boom in a message listener", text)
    assert.matches("error in a 'message' listener: .*boom in a cluster listener", text)
  end)

  it("in a worker, reports a raising 'message' listener and keeps dispatching", function()
    cluster.setup({ exec = helper.fixture("raising_listener"), args = {}, silent = true })
    local w = cluster.fork()
    cluster.setup({ silent = false })
    local got, err_text = {}, ""
    w:on("message", function(m) got[#got + 1] = m end)
    w.process.stderr:read_start(function(_, data) if data then err_text = err_text .. data end end)
    w:send("bad")
    w:send("good")
    local ok = helper.wait(function()
      return #got == 2 and err_text:find("boom in the worker", 1, true) ~= nil
    end, 5000)
    w:kill("SIGKILL")
    assert.is_true(helper.wait(function() return w:isDead() end))
    -- Pipes that reached EOF or were never read are closed after 'exit'.
    assert.is_true(w.process.stdout:is_closing())
    helper.close(w.process.stderr)
    assert.is_true(ok, "got " .. #got .. " messages, stderr: " .. err_text)
    assert.same({ "bad", "good" }, got)
    assert.matches("error in a 'message' listener", err_text, 1, true)
  end)

  it("dispatches what a listener's bind read ahead of its reply before what came after the reply", function()
    cluster.setup({ exec = helper.fixture("bind_in_listener"), args = {} })
    local w = cluster.fork()
    local report, online
    w:on("message", function(m) report = m end)
    w:on("online", function() online = true end)
    assert.is_true(helper.wait(function() return online end, 5000))
    -- Numbered messages go out on every loop turn, right after the poll
    -- phase in which the master answers a bind, so the reply lands among
    -- them (how many land after it in one read is up to the scheduler:
    -- 20 binds make it likely).
    local N, n = 6000, 0
    w:send("bind")
    local check, idle = uv.new_check(), uv.new_idle()
    idle:start(function() end)
    check:start(function()
      for _ = 1, 20 do
        if n == N then break end
        n = n + 1
        w:send(n)
        if n % 300 == 0 and n < N then w:send("bind") end
      end
      if n == N then
        check:close()
        idle:close()
        w:send("report")
      end
    end)
    local ok = helper.wait(function() return report ~= nil end, 10000)
    w:kill("SIGKILL")
    assert.is_true(helper.wait(function() return w:isDead() end))
    assert.is_true(ok, "no report")
    local first_wrong
    for i = 1, N do
      if report.order[i] ~= i then first_wrong = i; break end
    end
    assert.is_nil(first_wrong, first_wrong and ("message %d arrived as %s (%d messages)"):format(first_wrong,
      tostring(report.order[first_wrong]), #report.order))
  end)
end)

-- Both ends of a channel in this process, over a socketpair: what one
-- burst of sends looks like to the receiving side's dispatch (plain
-- messages come in batches, the rest one by one).
describe("a channel's receiving side", function()
  local Channel = require("cluster.channel")
  local core = require("cluster.core")
  local LIMITS = { maxMessageSize = 1024 * 1024, sendHighWaterMark = 1024 * 1024, maxQueueSize = 64 * 1024 * 1024 }

  -- Returns the sending channel and the receiving one; got is filled with
  -- { value, internal, handle } per message; hook(value, rx) runs for each.
  local function pair(got, hook)
    local fds = assert(uv.socketpair("stream", 0, { nonblock = true }, { nonblock = true }))
    local quiet = { on_message = function() end, on_error = function() end, on_dropped = function() end,
      on_drain = function() end, on_close = function() end }
    local tx = assert(Channel.open(fds[1], LIMITS, quiet))
    local rx
    rx = assert(Channel.open(fds[2], LIMITS, {
      on_message = function(value, internal, handle)
        got[#got + 1] = { value, internal, handle }
        if hook then hook(value, rx) end
      end,
      on_error = function(err) error("on_error: " .. tostring(err)) end,
      on_dropped = function(err) error("on_dropped: " .. tostring(err)) end,
      on_drain = function() end,
      on_close = function() got.closed = true end,
    }))
    return tx, rx
  end

  it("keeps the order of plain, nil, internal, fd-carrying and large messages in one burst", function()
    local got = {}
    local tx, rx = pair(got)
    local big = string.rep("x", 8192)
    local fds = assert(uv.socketpair("stream", 0, {}, {}))
    local sent = 0
    local function send(v, internal, kind, fd)
      assert(tx:send(v, internal, kind, fd) ~= nil)
      sent = sent + 1
    end
    for i = 1, 100 do send({ i = i }) end
    send(nil)
    send({ i = 101 })
    send("internal", true)
    send(false)
    send(big)
    send({ i = 102 }, false, core.FD_KIND.RAW, fds[1])
    for i = 103, 300 do send(i) end
    assert.is_true(helper.wait(function() return #got == sent end, 5000), "got " .. #got .. " of " .. sent)
    for i = 1, 100 do assert.same({ i = i }, got[i][1]) end
    assert.is_nil(got[101][1])
    assert.same({ i = 101 }, got[102][1])
    assert.same({ "internal", true }, { got[103][1], got[103][2] })
    assert.is_false(got[104][1])
    assert.equal(big, got[105][1])
    assert.same({ i = 102 }, got[106][1])
    assert.is_number(got[106][3])
    core.close(got[106][3])
    for i = 103, 300 do assert.equal(i, got[i + 4][1]) end
    for i = 1, #got do
      if i ~= 103 then assert.is_false(got[i][2]) end
    end
    tx:close()
    rx:close()
    core.close(fds[1])
    core.close(fds[2])
    helper.wait(function() return got.closed end, 1000)
  end)

  it("keeps large strings whole and in order when the socket takes only part of one", function()
    local got = {}
    local tx, rx = pair(got)
    local sent = {}
    local function send(v)
      assert(tx:send(v) ~= nil)
      sent[#sent + 1] = v
    end
    -- Bigger than the socket's buffer: the first is written in part and
    -- the rest of it queued; the others queue behind it.
    for i = 1, 6 do
      send(string.rep(string.char(64 + i), 300000 + i))
      send(i)
      send(string.rep(string.char(96 + i), 65536))
    end
    assert.is_true(helper.wait(function() return #got == #sent end, 10000), "got " .. #got .. " of " .. #sent)
    for i = 1, #sent do
      assert.equal(sent[i], got[i][1], "message " .. i)
    end
    tx:close()
    rx:close()
    helper.wait(function() return got.closed end, 1000)
  end)

  it("delivers the rest of a batch in order, and all of it, when a listener drains the channel", function()
    local got = {}
    local drained = false
    local tx = pair(got, function(value, rx)
      if value == 5 and not drained then
        drained = true
        rx:drain() -- comes back into the dispatch, then closes
      end
    end)
    for i = 1, 50 do assert(tx:send(i)) end
    tx:flush_now()
    assert.is_true(helper.wait(function() return got.closed end, 5000))
    local values = {}
    for i = 1, #got do values[i] = got[i][1] end
    local want = {}
    for i = 1, 50 do want[i] = i end
    assert.same(want, values)
    tx:close()
  end)
end)
