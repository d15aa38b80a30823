-- Sharing pipes bound to a path and UDP sockets, the function form of the
-- luv calls, and handles passed with messages in both directions (Node's
-- test-cluster-net-listen-relative-path, -dgram-*, -send-handle-*).
-- Workers run spec/fixtures/sh_worker.lua.
local uv = require("luv")
local helper = require("helper")
local compat = require("cluster.compat")
local util = dofile(helper.fixture("sh_util"))

local HOST = "127.0.0.1"

local function assert_listens(reply, what)
  assert.is_truthy(reply, (what or "worker") .. ": no reply to the bind request")
  local code, msg = util.error_code(reply)
  assert.is_nil(code, (what or "worker") .. ": " .. tostring(msg))
end

local function listen_all(list, msg)
  for i, w in ipairs(list) do assert_listens(util.server(w, msg), "worker " .. i) end
  assert.is_true(util.wait_listening(list, 1), "'listening' did not come for every worker")
end

local function assert_both_serve(list, host, port)
  local seen, total, failures = util.until_all_seen(host, port, util.ids(list), 200, 10)
  assert.same({}, failures)
  assert.is_truthy(seen[list[1].id] and seen[list[2].id],
    "after " .. total .. " connections only " .. util.describe_seen(seen) .. " served")
end

-- 4 workers bind UDP on one port; 100 datagrams sent from here must each
-- arrive exactly once, somewhere.
local function udp_all_arrive(fn_form)
  local ws = util.fork_n(4)
  local got, by_worker = {}, {}
  util.on("message", function(w, m)
    if type(m) == "table" and m.ev == "dgram" then
      got[#got + 1] = m.data
      by_worker[w.id] = (by_worker[w.id] or 0) + 1
    end
  end)
  local replies = util.request_all(ws, { cmd = "udp", host = HOST, port = 0, fn = fn_form })
  for i, r in ipairs(replies) do assert_listens(r, "worker " .. i) end
  assert.is_true(util.wait_listening(ws, 1), "'listening' did not come for every UDP bind")
  local port = ws[1]._sh_listening[1].port
  for i, w in ipairs(ws) do
    local addr = w._sh_listening[1]
    assert.equal(HOST, addr.address, "worker " .. i)
    assert.equal(port, addr.port, "worker " .. i)
    assert.equal("inet", addr.family, "worker " .. i)
  end
  assert.is_true(compat.type(port) == "integer" and port > 0)
  local sender = util.track(uv.new_udp())
  local sent, send_errors = 0, {}
  for i = 1, 100 do
    sender:send(tostring(i), HOST, port, function(err)
      if err then send_errors[#send_errors + 1] = err end
      sent = sent + 1
    end)
  end
  local ok = helper.wait(function() return sent == 100 and #got >= 100 end, 5000)
  util.settle()
  assert.same({}, send_errors)
  assert.is_true(ok, #got .. " of 100 datagrams arrived, per worker " .. util.describe_seen(by_worker))
  assert.equal(100, #got)
  table.sort(got, function(a, b) return tonumber(a) < tonumber(b) end)
  for i = 1, 100 do assert.equal(tostring(i), got[i]) end
  return by_worker
end

describe("sharing", function()
  after_each(util.cleanup)

  for _, policy in ipairs(util.POLICIES) do
    describe("under '" .. policy .. "'", function()
      before_each(function() util.policy(policy) end)

      it("a pipe bound to a path: both workers serve; the path goes once no worker holds it", function()
        local path = util.tmpdir() .. "/s.sock"
        local ws = util.fork_n(2)
        listen_all(ws, { cmd = "pipe", path = path })
        for i, w in ipairs(ws) do
          local addr = w._sh_listening[1]
          assert.equal("unix", addr.family, "worker " .. i)
          assert.equal(path, addr.address, "worker " .. i)
          assert.is_nil(addr.port, "worker " .. i)
        end
        assert_both_serve(ws, path, nil)
        -- One closes: the path stays, the other serves everything.
        assert.is_truthy(util.request(ws[1], { cmd = "close", idx = 1 }))
        assert.is_truthy(util.request(ws[1], { cmd = "ping" }))
        assert.is_true(util.exists(path), "the path went while a worker still holds it")
        for i, r in ipairs(util.get_many(path, nil, 20, 1)) do
          assert.equal(ws[2].id, r.id, "connection " .. i .. ": " .. tostring(r.err or r.data))
        end
        -- The last holder dies: the master unlinks the path.
        ws[2]:kill("SIGKILL")
        assert.is_true(helper.wait(function() return ws[2]:isDead() end, 5000))
        assert.is_true(helper.wait(function() return not util.exists(path) end, 2000),
          "the socket path is still there")
      end)

      it("UDP: 4 workers on one port receive all 100 datagrams", function()
        udp_all_arrive(false)
      end)

      it("worker:disconnect() closes its TCP, pipe and UDP servers; the master closes its side", function()
        util.settle()
        local before = helper.fd_count()
        local path = util.tmpdir() .. "/d.sock"
        local ws = util.fork_n(2)
        local codes = {}
        for i, w in ipairs(ws) do w:on("exit", function(code, signal) codes[i] = { code, signal } end) end
        for _, w in ipairs(ws) do
          assert_listens(util.server(w, { cmd = "tcp", host = HOST, port = 0 }), "tcp")
          assert_listens(util.server(w, { cmd = "pipe", path = path }), "pipe")
          assert_listens(util.server(w, { cmd = "udp", host = HOST, port = 0 }), "udp")
        end
        assert.is_true(util.wait_listening(ws, 3))
        -- In bind order: tcp, pipe, udp.
        local tcp_port, udp_port = ws[1]._sh_listening[1].port, ws[1]._sh_listening[3].port
        assert.equal("unix", ws[1]._sh_listening[2].family)
        local res = util.get(HOST, tcp_port)
        assert.is_truthy(res.id, tostring(res.err))
        res = util.get(path, nil)
        assert.is_truthy(res.id, tostring(res.err))
        for _, w in ipairs(ws) do w:disconnect() end
        assert.is_true(helper.wait(function() return util.all_dead(ws) end, 5000),
          "the workers did not exit after disconnect (a server left open?)")
        util.settle()
        assert.same({ { 0, nil }, { 0, nil } }, codes)
        assert.is_false(util.exists(path), "the socket path is still there")
        res = util.get(HOST, tcp_port)
        assert.matches("ECONNREFUSED", tostring(res.err))
        local u = util.track(uv.new_udp())
        assert.is_truthy(u:bind(HOST, udp_port), "the UDP port is still held")
        helper.close(u)
        util.settle()
        assert.equal(before, helper.fd_count())
      end)
    end)
  end

  it("a relative pipe path is resolved in the worker's cwd (Node's test-cluster-net-listen-relative-path)", function()
    util.policy("rr")
    local dir = util.tmpdir()
    local name = ("sh-relative-%d.sock"):format(uv.os_getpid())
    -- Where it would land if the master bound it in its own cwd.
    local stray = uv.cwd() .. "/" .. name
    finally(function() if util.exists(stray) then uv.fs_unlink(stray) end end)
    local ws = util.fork_n(1)
    local r = util.request(ws[1], { cmd = "chdir", dir = dir })
    assert.is_true(r and r.ok, "chdir in the worker")
    assert_listens(util.server(ws[1], { cmd = "pipe", path = name }))
    assert.is_true(util.wait_listening(ws, 1))
    local in_master_cwd = util.exists(stray)
    assert.is_true(util.exists(dir .. "/" .. name), "the socket is not in the worker's cwd"
      .. (in_master_cwd and " but in the master's: " .. stray or ""))
    local res = util.get(dir .. "/" .. name, nil)
    assert.equal(ws[1].id, res.id, tostring(res.err))
  end)

  it("a pipe path another process serves gives EADDRINUSE, and the path is left alone", function()
    local path = util.tmpdir() .. "/busy.sock"
    local holder = util.track(uv.new_pipe(false))
    assert(holder:bind(path))
    assert(holder:listen(4, function() end))
    local ws = util.fork_n(1)
    local reply = util.server(ws[1], { cmd = "pipe", path = path })
    local code, msg = util.error_code(reply)
    assert.equal("EADDRINUSE", code, tostring(msg))
    assert.matches("^EADDRINUSE", msg)
    assert.is_truthy(util.request(ws[1], { cmd = "ping" }), "the worker does not answer")
    ws[1]:kill("SIGKILL")
    assert.is_true(helper.wait(function() return ws[1]:isDead() end, 5000))
    util.settle()
    assert.is_true(util.exists(path), "the master removed a socket path it did not create")
  end)

  it("a UDP port another socket holds gives EADDRINUSE from bind", function()
    local holder = util.track(uv.new_udp())
    assert(holder:bind(HOST, 0))
    local port = holder:getsockname().port
    local ws = util.fork_n(1)
    local reply = util.server(ws[1], { cmd = "udp", host = HOST, port = port })
    assert.is_truthy(reply, "no reply")
    assert.is_false(reply.bind.ok)
    assert.equal("EADDRINUSE", reply.bind.code, tostring(reply.bind.err))
    assert.matches("^EADDRINUSE: ", reply.bind.err)
    assert.is_truthy(util.request(ws[1], { cmd = "ping" }), "the worker does not answer")
  end)

  describe("the function form", function()
    before_each(function() util.policy("rr") end)

    it("uv.tcp_bind, uv.listen, uv.accept", function()
      local ws = util.fork_n(2)
      listen_all(ws, { cmd = "tcp", host = HOST, port = 0, fn = true })
      local port = ws[1]._sh_listening[1].port
      assert.equal(port, ws[2]._sh_listening[1].port)
      assert_both_serve(ws, HOST, port)
    end)

    it("uv.pipe_bind", function()
      local path = util.tmpdir() .. "/f.sock"
      local ws = util.fork_n(2)
      listen_all(ws, { cmd = "pipe", path = path, fn = true })
      assert_both_serve(ws, path, nil)
    end)

    it("uv.udp_bind", function()
      udp_all_arrive(true)
    end)
  end)

  describe("handles sent with messages", function()
    it("master -> worker: a connected tcp socket arrives as a tcp handle the worker writes to", function()
      local server = util.track(uv.new_tcp())
      local conn
      assert(server:bind(HOST, 0))
      assert(server:listen(16, function(err)
        assert(not err, err)
        conn = util.track(uv.new_tcp())
        server:accept(conn)
      end))
      local client = util.track(uv.new_tcp())
      local data, eof = "", false
      client:connect(HOST, server:getsockname().port, function(err)
        assert(not err, err)
        client:read_start(function(rerr, chunk)
          if chunk then data = data .. chunk else eof = rerr or true end
        end)
      end)
      assert.is_true(helper.wait(function() return conn ~= nil end, 3000))
      local ws = util.fork_n(1)
      local w = ws[1]
      local reply
      w:on("message", function(m) if type(m) == "table" and m.re == "greet" then reply = m end end)
      assert.is_true(w:send({ cmd = "greet" }, conn))
      -- The message holds its own copy: ours may close at once.
      helper.close(conn)
      assert.is_true(helper.wait(function() return reply ~= nil end, 5000), "no reply from the worker")
      assert.equal("tcp", reply.kind)
      assert.is_true(helper.wait(function() return eof end, 5000), "the connection was not closed")
      assert.equal("hello from " .. w.id .. "\n", data)
      assert.is_true(eof)
    end)

    it("worker -> master: a pipe handle arrives as a luv pipe the master writes to", function()
      local ws = util.fork_n(1)
      local w = ws[1]
      local handle, read
      w:on("message", function(m, h)
        if type(m) ~= "table" then return end
        if m.re == "pipe_to_master" then handle = h end
        if m.ev == "pipe_read" then read = m.data end
      end)
      w:send({ cmd = "pipe_to_master" })
      assert.is_true(helper.wait(function() return handle ~= nil end, 5000), "no handle came")
      assert.equal("userdata", type(handle))
      util.track(handle)
      assert.equal("pipe", (uv.handle_get_type(handle)))
      assert(handle:write("through the pipe"))
      assert.is_true(helper.wait(function() return read == "through the pipe" end, 5000),
        "the worker read " .. tostring(read))
    end)

    it("worker -> master: a connected tcp handle arrives as a luv tcp handle", function()
      local server = util.track(uv.new_tcp())
      local conn, data = nil, ""
      assert(server:bind(HOST, 0))
      assert(server:listen(16, function(err)
        assert(not err, err)
        conn = util.track(uv.new_tcp())
        server:accept(conn)
        conn:read_start(function(_, chunk) if chunk then data = data .. chunk end end)
      end))
      local ws = util.fork_n(1)
      local w = ws[1]
      local handle, reply
      w:on("message", function(m, h)
        if type(m) == "table" and m.re == "tcp_to_master" then reply, handle = m, h end
      end)
      w:send({ cmd = "tcp_to_master", port = server:getsockname().port })
      assert.is_true(helper.wait(function() return reply ~= nil end, 5000), "no reply")
      assert.is_nil(reply.err)
      assert.equal("userdata", type(handle))
      util.track(handle)
      assert.equal("tcp", (uv.handle_get_type(handle)))
      assert(handle:write("via master\n"))
      assert.is_true(helper.wait(function() return data == "via master\n" end, 5000), "got " .. data)
    end)

    it("worker -> master: an integer fd arrives as an integer fd", function()
      local path = util.tmpdir() .. "/f.txt"
      local f = assert(io.open(path, "wb"))
      f:write("sh fd contents\n")
      f:close()
      local ws = util.fork_n(1)
      local w = ws[1]
      local got, fd
      w:on("message", function(m, h)
        if type(m) == "table" and m.re == "fd_to_master" then got, fd = true, h end
      end)
      w:send({ cmd = "fd_to_master", path = path })
      assert.is_true(helper.wait(function() return got ~= nil end, 5000), "no reply")
      assert.equal("integer", compat.type(fd))
      local content = uv.fs_read(fd, 100, 0)
      uv.fs_close(fd)
      assert.equal("sh fd contents\n", content)
    end)
  end)
end)
