-- Draining: cluster.worker's 'draining' event (fired when the worker is
-- asked to leave, before its servers close), and a keep-alive app that
-- uses it (examples/health_app.lua) under the runner: its keep-alive
-- connections no longer keep a stopping worker alive until the stop
-- timeout, and a client mid-request gets its answer with
-- `Connection: close`, then a clean end of stream.
local helper = require("helper")
local uv = require("luv")
local compat = require("cluster.compat")
local util = dofile(helper.fixture("lc_util"))
local runner = dofile(helper.fixture("runner_util"))

local APP = uv.cwd() .. "/examples/health_app.lua"

describe("cluster.worker 'draining'", function()
  before_each(function() util.setup({ exec = helper.fixture("drain_events"), args = {} }) end)
  after_each(util.cleanup)

  -- Forks drain_events, waits until it listens; returns the worker and
  -- the log of what the master saw: its messages and events, in order.
  local function start()
    local w = util.fork()
    local seen = {}
    w:on("message", function(m) if type(m) == "table" and m.draining then seen[#seen + 1] = m end end)
    w:on("disconnect", function() seen[#seen + 1] = "disconnect" end)
    w:on("exit", function(code) seen[#seen + 1] = "exit " .. tostring(code) end)
    assert.is_true(helper.wait(function() return w.state == "listening" end, 5000))
    return w, seen
  end

  it("fires when the master's disconnect arrives, before the servers close, without arguments", function()
    local w, seen = start()
    w:disconnect()
    assert.is_true(helper.wait(function() return w:isDead() end, 5000))
    util.settle()
    assert.equal(3, #seen)
    assert.same({ draining = 1, closing = false, connected = true, args = 0 }, seen[1])
    assert.same({ "disconnect", "exit 0" }, { seen[2], seen[3] })
  end)

  it("fires once when the worker disconnects itself (twice)", function()
    local w, seen = start()
    w:send({ cmd = "leave" })
    assert.is_true(helper.wait(function() return w:isDead() end, 5000))
    util.settle()
    assert.equal(3, #seen)
    assert.same({ draining = 1, closing = false, connected = true, args = 0 }, seen[1])
    assert.same({ "disconnect", "exit 0" }, { seen[2], seen[3] })
    assert.is_true(w.exitedAfterDisconnect)
  end)
end)

-- An HTTP/1.1 client connection: send(text); responses are parsed as they
-- come ({ status =, head =, body = }); eof / err say how it ended.
local function http_conn(port)
  local c = { tcp = uv.new_tcp(), responses = {}, buf = "" }
  c.tcp:connect("127.0.0.1", port, function(err)
    if err then c.err = err return end
    c.connected = true
    c.tcp:read_start(function(e, data)
      if e then c.err = e elseif not data then c.eof = true end
      if e or not data then
        if not c.tcp:is_closing() then c.tcp:close() end
        return
      end
      c.buf = c.buf .. data
      while true do
        local head_end = c.buf:find("\r\n\r\n", 1, true)
        if not head_end then break end
        local head = c.buf:sub(1, head_end + 1)
        local len = compat.tointeger(tonumber(head:match("\r\nContent%-Length: (%d+)")))
        if #c.buf < head_end + 3 + len then break end
        c.responses[#c.responses + 1] = { status = compat.tointeger(tonumber(head:match("^HTTP/1%.1 (%d+)"))),
          head = head, body = c.buf:sub(head_end + 4, head_end + 3 + len) }
        c.buf = c.buf:sub(head_end + 4 + len)
      end
    end)
  end)
  function c.send(text) c.tcp:write(text) end
  function c.get(path, count)
    c.send("GET " .. path .. " HTTP/1.1\r\nHost: spec\r\n\r\n")
    return helper.wait(function() return #c.responses >= count or c.err or c.eof end, 3000)
  end
  return c
end

describe("a keep-alive app under the runner (examples/health_app.lua)", function()
  local clients

  local count, dump, port_of = runner.count, runner.dump, runner.port_of

  local function start(workers)
    return runner.start({ "-w", tostring(workers), "--heartbeat-interval", "50ms", "--stop-timeout", "10s", APP },
      { env = { "PORT=0", "BIND=127.0.0.1", "APP_HOST_NAME=spec" } })
  end
  local function connect(port)
    local c = http_conn(port)
    clients[#clients + 1] = c
    return c
  end

  before_each(function() clients = {} end)
  after_each(function()
    for _, c in ipairs(clients) do if not c.tcp:is_closing() then c.tcp:close() end end
    runner.cleanup()
  end)

  it("ends idle keep-alive connections on SIGTERM: the workers exit 0 at once, nothing is killed", function()
    local r = start(2)
    assert.is_true(helper.wait(function() return count(r, "ready after") == 2 end, 5000), dump(r))
    local port = port_of(r)
    -- Eight keep-alive connections, one request each, then idle: rr
    -- spreads them over both workers.
    local pids = {}
    for i = 1, 8 do
      local c = connect(port)
      assert.is_true(c.get("/n" .. i, 1), "request " .. i)
      assert.equal(200, c.responses[1].status)
      assert.is_nil(c.responses[1].head:find("Connection: close", 1, true))
      pids[c.responses[1].body:match(" pid (%d+) ")] = true
    end
    local n = 0
    for _ in pairs(pids) do n = n + 1 end
    assert.equal(2, n, "both workers hold connections")
    local t0 = uv.now()
    uv.kill(r.pid, "sigterm")
    assert.is_true(helper.wait(function() return r.exited end, 9000), dump(r))
    local took = uv.now() - t0
    assert.equal(0, r.code, dump(r))
    assert.is_true(took < 3000, ("the stop took %d ms"):format(took))
    assert.equal(2, count(r, "exited with code 0 after %d+ ms, stop$"), dump(r))
    assert.equal(0, count(r, "SIGKILL"), dump(r))
    local open = 0
    for _, l in ipairs(r.lines) do
      local held = l:match("draining: (%d+) connections open, 0 mid%-request$")
      if held then open = open + tonumber(held) end
    end
    assert.equal(8, open, dump(r))
    -- Every client saw a clean end of stream, after its one answer.
    assert.is_true(helper.wait(function()
      for _, c in ipairs(clients) do if not (c.eof or c.err) then return false end end
      return true
    end, 3000))
    for i, c in ipairs(clients) do
      assert.is_nil(c.err, "client " .. i)
      assert.equal(1, #c.responses)
    end
  end)

  it("a client sending requests back to back while a reload drains gets Connection: close and no error", function()
    local r = start(1)
    assert.is_true(helper.wait(function() return count(r, "ready after") == 1 end, 5000), dump(r))
    local c = connect(port_of(r))
    local closed_by_server = false
    -- The next request as soon as an answer is in, until one says close.
    local function next_request()
      local last = c.responses[#c.responses]
      if last and last.head:find("\r\nConnection: close\r\n", 1, true) then
        closed_by_server = true
        return
      end
      c.send("GET /n" .. #c.responses .. " HTTP/1.1\r\nHost: spec\r\n\r\n")
    end
    local seen = 0
    local pump = uv.new_prepare()
    pump:start(function()
      if #c.responses > seen and not closed_by_server then
        seen = #c.responses
        next_request()
      end
    end)
    finally(function() pump:close() end)
    next_request()
    assert.is_true(helper.wait(function() return #c.responses >= 50 or c.err or c.eof end, 3000))
    uv.kill(r.pid, "sighup")
    assert.is_true(helper.wait(function() return c.eof or c.err end, 5000), dump(r))
    assert.is_nil(c.err)
    assert.is_true(closed_by_server, "the connection ended without Connection: close")
    for i, resp in ipairs(c.responses) do assert.equal(200, resp.status, "response " .. i) end
    assert.equal("", c.buf)
    assert.is_true(helper.wait(function() return count(r, "exited with code 0 after %d+ ms, reload$") == 1 end,
      3000), dump(r))
    assert.equal(0, count(r, "SIGKILL"), dump(r))
  end)

  it("answers a request under way with Connection: close (503 on /healthz) while a reload drains", function()
    local r = start(1)
    assert.is_true(helper.wait(function() return count(r, "ready after") == 1 end, 5000), dump(r))
    local port = port_of(r)
    local busy, idle = connect(port), connect(port)
    assert.is_true(idle.get("/other", 1))
    -- A request and the first half of the next in one small write (one
    -- segment, read at once): once the answer to the first is here, the
    -- worker holds the half request when it is told to drain.
    busy.send("GET /first HTTP/1.1\r\nHost: spec\r\n\r\nGET /healthz HTTP/1.1\r\n")
    assert.is_true(helper.wait(function() return #busy.responses == 1 end))
    assert.equal(200, busy.responses[1].status)
    local old_pid = busy.responses[1].body:match(" pid (%d+) ")
    uv.kill(r.pid, "sighup")
    assert.is_true(helper.wait(function() return count(r, "draining: 2 connections open, 1 mid%-request$") == 1 end,
      5000), dump(r))
    -- The idle connection is ended once quiet (clean EOF, no answer
    -- owed); the busy one finishes its request.
    assert.is_true(helper.wait(function() return idle.eof or idle.err end, 3000))
    assert.is_nil(idle.err)
    assert.equal(1, #idle.responses)
    busy.send("Host: spec\r\n\r\n")
    assert.is_true(helper.wait(function() return busy.eof or busy.err end, 3000), dump(r))
    assert.is_nil(busy.err)
    assert.equal(2, #busy.responses)
    local last = busy.responses[2]
    assert.equal(503, last.status)
    assert.equal("draining\n", last.body)
    assert.is_truthy(last.head:find("\r\nConnection: close\r\n", 1, true))
    -- The old worker is gone (code 0) long before the stop timeout; the
    -- new one serves.
    assert.is_true(helper.wait(function() return count(r, "exited with code 0 after %d+ ms, reload$") == 1 end,
      3000), dump(r))
    assert.is_true(helper.wait(function() return count(r, "reload done") == 1 end, 3000), dump(r))
    local fresh = connect(port)
    assert.is_true(fresh.get("/healthz", 1))
    assert.equal(200, fresh.responses[1].status)
    assert.is_true(fresh.get("/again", 2))
    assert.are_not.equal(old_pid, fresh.responses[2].body:match(" pid (%d+) "))
    fresh.tcp:close()
    uv.kill(r.pid, "sigterm")
    assert.is_true(helper.wait(function() return r.exited end, 3000), dump(r))
    assert.equal(0, r.code)
    assert.equal(0, count(r, "SIGKILL"), dump(r))
  end)
end)
