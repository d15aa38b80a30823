-- cluster.testing (issue 9): waits on the loop with timeouts, a free port,
-- a non-blocking HTTP GET (which keeps an in-process master accepting
-- under "rr"), and subprocesses with captured output. Every case also
-- checks that nothing of the module's is left in the loop.
local uv = require("luv")
local helper = require("helper")
local cluster = require("cluster")
local Emitter = require("cluster.emitter")
local testing = require("cluster.testing")
local util = dofile(helper.fixture("lc_util"))

local CHILD = helper.fixture("testing_child")
local HELLO = uv.cwd() .. "/examples/hello.lua"

-- The handles in the loop (what a wait must not add to).
local function handle_count()
  local n = 0
  uv.walk(function(h) if not h:is_closing() then n = n + 1 end end)
  return n
end

-- A raw TCP server on 127.0.0.1 that answers every connection by calling
-- respond(client) (which writes what it likes); returns its port and a
-- function that closes it and every client.
local function raw_server(respond)
  local server = uv.new_tcp()
  local clients = {}
  assert(server:bind("127.0.0.1", 0))
  assert(server:listen(16, function()
    local c = uv.new_tcp()
    server:accept(c)
    clients[#clients + 1] = c
    c:read_start(function() end)
    respond(c)
  end))
  return server:getsockname().port, function()
    for _, c in ipairs(clients) do helper.close(c) end
    helper.close(server)
  end
end

local function elapsed_since(t0)
  uv.update_time()
  return uv.now() - t0
end

-- Every spawned process is stopped after its case.
local procs = {}
local function spawn(script, args, opts)
  local p = testing.spawn(script, args, opts)
  procs[#procs + 1] = p
  return p
end

describe("cluster.testing", function()
  -- The cluster module makes a few handles of its own on first use (the
  -- deferred-event timer, the channel's flusher) and keeps them: made
  -- here, before the counting starts.
  setup(function()
    util.setup({ exec = helper.fixture("idle") })
    local w = util.fork()
    assert(util.online(w))
    w:send("warm up")
    util.cleanup()
  end)

  local handles_before
  before_each(function() handles_before = handle_count() end)
  after_each(function()
    for _, p in ipairs(procs) do p:stop("SIGKILL") end
    procs = {}
    util.cleanup()
    local kinds = {}
    uv.walk(function(h) if not h:is_closing() then kinds[#kinds + 1] = tostring(h) end end)
    assert.equal(handles_before, handle_count(), "a handle was left in the loop: " .. table.concat(kinds, " "))
  end)

  describe("wait", function()
    it("runs the loop until the condition holds", function()
      local fired = false
      local t = uv.new_timer()
      t:start(20, 0, function() fired = true end)
      assert.is_true(testing.wait(function() return fired end, 2000))
      helper.close(t)
    end)

    it("returns false and a message at the timeout, not much later", function()
      uv.update_time()
      local t0 = uv.now()
      local ok, err = testing.wait(function() return false end, 100)
      local took = elapsed_since(t0)
      assert.is_false(ok)
      assert.equal("testing.wait: condition not met within 100 ms", err)
      assert.is_true(took >= 100 and took < 1000, "took " .. took .. " ms")
    end)

    it("sees a condition outside the loop (another process ending) without I/O to wake it", function()
      local p = spawn(CHILD, { "print", "0" })
      assert.is_true(testing.wait(function() return not helper.alive(p.pid) end, 3000))
    end)

    it("raises the condition's error again, outside the loop", function()
      local ok, err = pcall(testing.wait, function() error("cond broke", 0) end, 1000)
      assert.is_false(ok)
      assert.equal("cond broke", err)
      -- Also when it raises on a later turn, inside the loop's callbacks.
      local n = 0
      ok, err = pcall(testing.wait, function()
        n = n + 1
        if n > 2 then error({ code = 7 }) end
      end, 1000)
      assert.is_false(ok)
      assert.same({ code = 7 }, err)
    end)

    it("keeps waiting when some callback calls uv.stop()", function()
      local t = uv.new_timer()
      local ticks = 0
      t:start(5, 5, function() ticks = ticks + 1; uv.stop() end)
      assert.is_true(testing.wait(function() return ticks >= 5 end, 2000))
      helper.close(t)
    end)

    it("raises when called inside a luv callback", function()
      local ok, err
      local t = uv.new_timer()
      t:start(0, 0, function() ok, err = pcall(testing.wait, function() return true end, 10) end)
      helper.wait(function() return ok ~= nil end, 1000)
      helper.close(t)
      assert.is_false(ok)
      assert.matches("testing.wait: called inside a luv callback", err, 1, true)
    end)

    it("raises on bad arguments, naming them", function()
      assert.has_error(function() testing.wait(nil, 10) end,
        "bad argument 'cond' to testing.wait (function expected, got nil)")
      assert.has_error(function() testing.wait(function() end, "soon") end,
        "bad argument 'timeout' to testing.wait (milliseconds >= 0 expected, got soon)")
      assert.has_error(function() testing.wait(function() end, -1) end,
        "bad argument 'timeout' to testing.wait (milliseconds >= 0 expected, got -1)")
      -- A fractional timeout is fine, and so is its message.
      assert.same({ false, "testing.wait: condition not met within 10.5 ms" },
        { testing.wait(function() return false end, 10.5) })
    end)
  end)

  describe("wait_event", function()
    it("returns true and the event's arguments, nil ones included", function()
      local e = Emitter.new(setmetatable({}, { __index = Emitter }))
      local t = uv.new_timer()
      t:start(10, 0, function() e:emit("exit", nil, "SIGKILL") end)
      local res = { testing.wait_event(e, "exit", 2000) }
      helper.close(t)
      assert.same({ true, nil, "SIGKILL" }, res)
    end)

    it("returns false and a message at the timeout, and removes its listener", function()
      local e = Emitter.new(setmetatable({}, { __index = Emitter }))
      local ok, err = testing.wait_event(e, "online", 50)
      assert.is_false(ok)
      assert.equal("testing.wait_event: no 'online' event within 50 ms", err)
      assert.is_false(e:emit("online"), "the listener is still there")
    end)

    it("follows a worker: online, then exit with its code and signal", function()
      util.setup({ exec = helper.fixture("idle") })
      local w = util.fork()
      assert.is_true(testing.wait_event(w, "online", 5000))
      w:kill("SIGKILL")
      assert.same({ true, nil, "SIGKILL" }, { testing.wait_event(w, "exit", 5000) })
    end)

    it("raises on bad arguments, naming them", function()
      assert.has_error(function() testing.wait_event({}, "x") end,
        "bad argument 'emitter' to testing.wait_event (an emitter with :once and :off expected, got table)")
      assert.has_error(function() testing.wait_event(cluster, 1) end,
        "bad argument 'name' to testing.wait_event (string expected, got number)")
    end)
  end)

  describe("free_port", function()
    it("gives a port nothing listens on, that this process can bind", function()
      local port = testing.free_port()
      assert.is_true(port > 0 and port < 65536)
      local t = uv.new_tcp()
      assert(t:bind("127.0.0.1", port))
      helper.close(t)
    end)

    it("binds the host it is given; a host that is not an IP address raises", function()
      local t = uv.new_tcp()
      local v6 = t:bind("::1", 0)
      helper.close(t)
      if v6 then assert.is_number(testing.free_port("::1")) end
      local port, err = testing.free_port("192.0.2.1") -- TEST-NET: not this host's
      assert.is_nil(port)
      assert.matches("^testing.free_port: cannot bind 192.0.2.1: EADDRNOTAVAIL", err)
      assert.has_error(function() testing.free_port("localhost") end,
        "bad argument 'host' to testing.free_port (an IP address expected, got \"localhost\")")
    end)
  end)

  describe("http_get", function()
    local stop_server
    after_each(function()
      if stop_server then stop_server() end
      stop_server = nil
    end)

    local function serve(response, close_after)
      local port
      port, stop_server = raw_server(function(c)
        if type(response) == "function" then return response(c) end
        c:write(response, function() if close_after then c:close() end end)
      end)
      return port
    end

    it("returns status, headers (lower-case names) and body for a Content-Length response", function()
      local port = serve("HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello")
      local status, headers, body = testing.http_get(port, "/")
      assert.equal(201, status)
      assert.equal("5", headers["content-length"])
      assert.equal("1, 2", headers["x-a"])
      assert.equal("hello", body)
      -- A number after the port is the timeout.
      assert.equal("hello", select(3, testing.http_get(port, 2000)))
    end)

    it("sends a GET for the path, with Host and Connection: close", function()
      local request = ""
      local port
      port, stop_server = raw_server(function(c)
        c:read_stop()
        c:read_start(function(_, data)
          if not data then return end
          request = request .. data
          if request:find("\r\n\r\n", 1, true) then
            c:write("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
          end
        end)
      end)
      assert.equal(200, (testing.http_get("http://127.0.0.1:" .. port .. "/a/b?c=d#frag")))
      assert.matches("^GET /a/b%?c=d HTTP/1%.1\r\n", request)
      assert.matches("\r\nHost: 127%.0%.0%.1:" .. port .. "\r\n", request)
      assert.matches("\r\nConnection: close\r\n", request)
    end)

    it("decodes a chunked body, in pieces, after a 100 Continue", function()
      local port = serve(function(c)
        local parts = { "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
          "5\r\nhel", "lo\r\n6;ext=1\r\n world\r\n", "0\r\n\r\n" }
        local t = uv.new_timer()
        local i = 0
        t:start(0, 10, function()
          i = i + 1
          c:write(parts[i])
          if i == #parts then t:close() end
        end)
      end)
      local status, headers, body = testing.http_get(port, "/", 2000)
      assert.equal(200, status)
      assert.equal("chunked", headers["transfer-encoding"])
      assert.equal("hello world", body)
    end)

    it("reads a body with no length until the server closes", function()
      local port = serve("HTTP/1.0 200 OK\r\n\r\nuntil eof", true)
      local status, _, body = testing.http_get(port)
      assert.equal(200, status)
      assert.equal("until eof", body)
    end)

    it("returns nil and a message: refused, cut short, not HTTP, no answer", function()
      local port = testing.free_port()
      local status, err = testing.http_get(port, "/x")
      assert.is_nil(status)
      assert.matches("^GET http://127%.0%.0%.1:" .. port .. "/x: ECONNREFUSED", err)

      port = serve("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true)
      status, err = testing.http_get(port)
      assert.is_nil(status)
      assert.matches("connection closed after 5 of 10 body bytes$", err)
      stop_server()

      port = serve("SSH-2.0-OpenSSH\r\n\r\n", true)
      status, err = testing.http_get(port)
      assert.is_nil(status)
      assert.matches('not an HTTP response: "SSH%-2%.0%-OpenSSH"$', err)
      stop_server()

      port = serve(function() end) -- accepts, never answers
      uv.update_time()
      local t0 = uv.now()
      status, err = testing.http_get(port, "/", 150)
      assert.is_nil(status)
      assert.matches("no complete response within 150 ms$", err)
      assert.is_true(elapsed_since(t0) < 2000)
    end)

    it("resolves a host name (localhost)", function()
      local port = serve("HTTP/1.1 204 No Content\r\n\r\n")
      local status, _, body = testing.http_get("http://localhost:" .. port .. "/", 3000)
      assert.equal(204, status)
      assert.equal("", body)
    end)

    it("raises on bad arguments, naming them", function()
      assert.has_error(function() testing.http_get(0) end,
        "bad argument 'target' to testing.http_get (a port from 1 to 65535 expected, got 0)")
      assert.has_error(function() testing.http_get("https://x/") end,
        "bad argument 'target' to testing.http_get (a port or an http:// URL expected, got \"https://x/\")")
      assert.has_error(function() testing.http_get("http://127.0.0.1:1/", "/x") end,
        "bad argument 'path' to testing.http_get (give the path in the URL)")
      assert.has_error(function() testing.http_get(80, "x") end,
        "bad argument 'path' to testing.http_get (a string starting with '/' expected, got x)")
      assert.has_error(function() testing.http_get(80, "/", {}) end)
    end)

    -- The trap of issue 9: the master is this process, so a blocking
    -- client (io.popen("curl ...")) would stop the loop that accepts.
    for _, policy in ipairs({ "rr", "shared" }) do
      it("reaches a worker forked by this process under '" .. policy .. "' (the master keeps accepting)", function()
        local saved = cluster.schedulingPolicy
        finally(function() cluster.schedulingPolicy = saved end)
        cluster.schedulingPolicy = policy
        local port = testing.free_port()
        util.setup({ exec = HELLO })
        local w = util.fork({ PORT = port })
        assert(testing.wait_event(w, "listening", 5000))
        for _ = 1, 3 do
          local status, _, body = assert(testing.http_get(port, "/", 3000))
          assert.equal(200, status)
          assert.equal("hello world\n", body)
        end
        w:disconnect()
        assert.same({ true, 0, nil }, { testing.wait_event(w, "exit", 5000) })
      end)
    end
  end)

  describe("spawn", function()
    it("captures stdout and stderr lines, in order per stream, and the exit status", function()
      local seen = {}
      local p = spawn(CHILD, { "print", 3 }, { on_line = function(line, stream) seen[#seen + 1] = stream end })
      assert.is_number(p.pid)
      assert.same({ 3, nil }, { p:wait_exit(3000) })
      assert.same({ "out one", "out two", "no newline" }, p.stdout)
      assert.same({ "err one" }, p.stderr)
      assert.equal(4, #p.lines)
      assert.equal(4, #seen)
      assert.is_false(p:running())
      assert.same({ 3, nil }, { p:exit_status() })
    end)

    it("wait_line returns the first matching line from init on, with its index", function()
      local p = spawn(CHILD, { "print", 0 })
      local line, i = p:wait_line("^out", 3000)
      assert.equal("out one", line)
      local line2, i2 = p:wait_line("^out", 3000, i + 1)
      assert.equal("out two", line2)
      assert.is_true(i2 > i)
      assert.equal("err one", (p:wait_line("^err", 3000)))
      -- After the end: nil and a message with the process's last output.
      local none, err = p:wait_line("^never", 3000)
      assert.is_nil(none)
      assert.matches("ended %(code 0%) before printing a line matching \"%^never\"; its last output:\n", err)
      assert.matches("\n  no newline", err, 1, true)
    end)

    it("wait_line times out with a message while the process runs on", function()
      local p = spawn(CHILD, { "stubborn" })
      assert.is_truthy(p:wait_line("^ready$", 5000))
      local none, err = p:wait_line("^never", 50)
      assert.is_nil(none)
      assert.matches("^testing: no line matching \"%^never\" from testing_child%.lua %(pid %d+%) within 50 ms", err)
      assert.is_false(p:exit_status())
      assert.is_true(p:running())
    end)

    it("wait_exit returns false and a message while it runs; stop escalates to SIGKILL after its timeout", function()
      local p = spawn(CHILD, { "stubborn" })
      assert.is_truthy(p:wait_line("^ready$", 5000))
      local ok, err = p:wait_exit(30)
      assert.is_false(ok)
      assert.matches("still running after 30 ms$", err)
      uv.update_time()
      local t0 = uv.now()
      assert.same({ nil, "SIGKILL" }, { p:stop("SIGTERM", 200) })
      assert.is_true(elapsed_since(t0) >= 190)
      assert.is_truthy(p:wait_line("^ignored SIGTERM$", 0))
      -- stop on an ended process gives its status again.
      assert.same({ nil, "SIGKILL" }, { p:stop() })
    end)

    it("passes env, cwd and a prefix command", function()
      local p = spawn(CHILD, { "env", "TESTING_SPEC_VAR" }, { env = { TESTING_SPEC_VAR = 42 }, cwd = "/tmp" })
      assert.equal(0, p:wait_exit(3000))
      assert.same({ "env 42", "cwd /tmp" }, p.stdout)
      p = spawn(CHILD, { "env", "FROM_PREFIX" }, { prefix = { "env", "FROM_PREFIX=yes" } })
      assert.equal(0, p:wait_exit(3000))
      assert.equal("env yes", p.stdout[1])
      -- stdout is line-buffered through LUA_INIT, unless the env sets its own.
      p = spawn(CHILD, { "env", "LUA_INIT" })
      assert.equal(0, p:wait_exit(3000))
      assert.equal("env if io and io.stdout then io.stdout:setvbuf('line') end", p.stdout[1])
      p = spawn(CHILD, { "env", "LUA_INIT" }, { env = { LUA_INIT = "x = 1" } })
      assert.equal(0, p:wait_exit(3000))
      assert.equal("env x = 1", p.stdout[1])
    end)

    it("wait_listening finds the port a plain luv server got for port 0 (from /proc)", function()
      local p = spawn(CHILD, { "serve", "127.0.0.1" })
      local line = assert(p:wait_line("^ready", 5000))
      local port, host = p:wait_listening(5000)
      assert.equal(tonumber(line:match("%d+")), port)
      assert.equal("127.0.0.1", host)
      assert.equal("hi", select(3, testing.http_get(port)))
    end)

    it("wait_listening finds ::1 too", function()
      local t = uv.new_tcp()
      local v6 = t:bind("::1", 0)
      helper.close(t)
      if not v6 then
        pending("no IPv6 loopback here")
        return
      end
      local p = spawn(CHILD, { "serve", "::1" })
      local port, host = p:wait_listening(5000)
      assert.is_number(port)
      assert.equal("::1", host)
    end)

    it("wait_listening: nil and the output when the process ends first", function()
      local p = spawn(CHILD, { "print", 2 })
      local port, err = p:wait_listening(3000)
      assert.is_nil(port)
      assert.matches("ended %(code 2%) before listening; its last output:\n", err)
      assert.matches("err one", err, 1, true)
    end)

    it("runs a script under the runner, whose workers listen; stop is a graceful SIGTERM", function()
      local p = spawn(HELLO, nil, { runner = { "-w", "2" }, env = { PORT = 0 } })
      local port = assert(p:wait_listening(10000))
      assert(p:wait_line("listening on 127%.0%.0%.1:" .. port .. "$", 5000))
      local status, _, body = assert(testing.http_get(port, "/", 3000))
      assert.equal(200, status)
      assert.equal("hello world\n", body)
      assert.same({ 0, nil }, { p:stop() })
      assert.equal("luv-cluster: stopped", p.stdout[#p.stdout])
    end)

    it("raises the error of an on_line callback from the next call on the process", function()
      -- Shown on stderr when it happens, too.
      -- luacheck: push ignore 122
      local real_stderr, shown = io.stderr, {}
      io.stderr = { write = function(_, ...) shown[#shown + 1] = table.concat({ ... }) end }
      finally(function() io.stderr = real_stderr end)
      local p = spawn(CHILD, { "print", 0 }, { on_line = function() error("on_line broke", 0) end })
      local ok, err = pcall(p.wait_exit, p, 3000)
      io.stderr = real_stderr
      -- luacheck: pop
      assert.same({ "testing.spawn: error in on_line: on_line broke\n" }, shown)
      assert.is_false(ok)
      assert.equal("on_line broke", err)
      assert.equal(0, p:wait_exit(3000))
    end)

    it("kills what is still running when the Lua state closes (a script that raised before stop)", function()
      local p = spawn(helper.fixture("testing_leaver"), { CHILD })
      local line = assert(p:wait_line("^child %d+$", 5000))
      local child = tonumber(line:match("%d+"))
      assert.same({ 1, nil }, { p:wait_exit(5000) })
      assert.is_truthy(p:wait_line("left it running", 0))
      assert.is_true(helper.wait(function() return not helper.alive(child) end, 3000), "the child still runs")
    end)

    it("raises on bad arguments, naming them", function()
      assert.has_error(function() testing.spawn(nil) end,
        "bad argument 'script' to testing.spawn (string expected, got nil)")
      assert.has_error(function() testing.spawn("/nonexistent/app.lua") end,
        "bad argument 'script' to testing.spawn (cannot open /nonexistent/app.lua: No such file or directory)")
      assert.has_error(function() testing.spawn(CHILD, { {} }) end,
        "bad argument 'args' to testing.spawn (a list of strings expected)")
      assert.has_error(function() testing.spawn(CHILD, nil, { timeout = 1 }) end,
        "bad argument 'opts' to testing.spawn (unknown option 'timeout')")
      assert.has_error(function() testing.spawn(CHILD, nil, { env = "A=1" }) end,
        "bad argument 'opts' to testing.spawn (option 'env' must be a table, got string)")
      assert.has_error(function() testing.spawn(CHILD, nil, { lua = "/nonexistent/lua" }) end,
        "testing.spawn: cannot start /nonexistent/lua: ENOENT: no such file or directory")
      local p = spawn(CHILD, { "stubborn" })
      assert.has_error(function() p:stop("SIGNOPE") end,
        "bad argument 'signal' to testing.stop (SIGNOPE is not a signal)")
      assert.has_error(function() p:wait_line("(") end)
      assert.has_error(function() p:wait_line("x", 10, 0) end,
        "bad argument 'init' to testing.wait_line (a line index >= 1 expected, got 0)")
    end)
  end)
end)
