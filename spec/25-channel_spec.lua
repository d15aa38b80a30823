-- The channel's send queue: sends made from a send callback still go out.
-- luacheck: ignore 122 (some specs replace io.stderr to catch what is reported there)
local helper = require("helper")
local cluster = require("cluster")

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
end)
