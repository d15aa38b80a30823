-- Sharing TCP server ports between workers under every scheduling policy
-- (Node's test-cluster-shared-*, -bind-twice, -eaddrinuse,
-- -listen-pipe-readable..., -server-restart-*, -dgram-reuse and friends).
-- Workers run spec/fixtures/sh_worker.lua: plain luv servers driven by
-- commands from the master.
local uv = require("luv")
local helper = require("helper")
local cluster = require("cluster")
local compat = require("cluster.compat")
local util = dofile(helper.fixture("sh_util"))

local HOST = "127.0.0.1"

local function assert_listens(reply, what)
  assert.is_truthy(reply, (what or "worker") .. ": no reply to the bind request")
  local code, msg = util.error_code(reply)
  assert.is_nil(code, (what or "worker") .. ": " .. tostring(msg))
end

-- Each worker of list gets a server from msg; all must succeed.
local function listen_all(list, msg)
  for i, w in ipairs(list) do assert_listens(util.server(w, msg), "worker " .. i) end
  assert.is_true(util.wait_listening(list, 1), "'listening' did not come for every worker")
end

local function assert_address(addr, host, port, family)
  assert.is_table(addr)
  assert.equal(host, addr.address)
  if port then
    assert.equal(port, addr.port)
  else
    assert.is_true(compat.type(addr.port) == "integer" and addr.port > 0)
  end
  assert.equal(family, addr.family)
end

local function has_ipv6_loopback()
  local t = uv.new_tcp()
  local ok = t:bind("::1", 0)
  helper.close(t)
  return ok ~= nil
end

describe("sharing a TCP port", function()
  after_each(util.cleanup)

  for _, policy in ipairs(util.POLICIES) do
    describe("under '" .. policy .. "'", function()
      before_each(function() util.policy(policy) end)

      if policy == "reuseport" then
        it("warns through cluster's 'warning' event when tcp_migrate_req is 0", function()
          local ws = util.fork_n(1)
          listen_all(ws, { cmd = "tcp", host = HOST, port = util.free_port() })
          util.settle()
          local f = io.open("/proc/sys/net/ipv4/tcp_migrate_req")
          local value = f and f:read("*l")
          if f then f:close() end
          -- Once per process: this bind's warning or an earlier spec's.
          local seen = 0
          for _, w in ipairs(helper.warnings) do
            if w:find("tcp_migrate_req = 0", 1, true) then seen = seen + 1 end
          end
          assert.equal(value == "0" and 1 or 0, seen)
        end)
      end

      it("every worker serves connections", function()
        local on_cluster, in_worker = {}, {}
        util.on("listening", function(w, addr) on_cluster[#on_cluster + 1] = { w, addr } end)
        util.on("message", function(w, m)
          if type(m) == "table" and m.ev == "worker_listening" then in_worker[w] = m.address end
        end)
        local ws = util.fork_n(2)
        local port = util.free_port()
        listen_all(ws, { cmd = "tcp", host = HOST, port = port })
        util.settle()
        for _, w in ipairs(ws) do
          assert.equal(1, #w._sh_listening)
          assert_address(w._sh_listening[1], HOST, port, "inet")
          assert.equal("listening", w.state)
        end
        local mine = {}
        for _, e in ipairs(on_cluster) do
          if e[1] == ws[1] or e[1] == ws[2] then mine[#mine + 1] = e end
        end
        assert.equal(2, #mine)
        for _, e in ipairs(mine) do assert_address(e[2], HOST, port, "inet") end
        -- The worker's own cluster.worker gets 'listening' too.
        assert.is_true(helper.wait(function() return in_worker[ws[1]] and in_worker[ws[2]] end, 3000),
          "no 'listening' on cluster.worker in the worker")
        for _, w in ipairs(ws) do assert_address(in_worker[w], HOST, port, "inet") end
        local seen, total, failures = util.until_all_seen(HOST, port, util.ids(ws), 200, 10)
        assert.same({}, failures)
        assert.is_truthy(seen[ws[1].id] and seen[ws[2].id],
          "after " .. total .. " connections only " .. util.describe_seen(seen) .. " served")
      end)

      it("port 0: the n-th server of every worker shares one real port (8 workers x 2)", function()
        local ws = util.fork_n(8)
        local replies = util.request_all(ws, { cmd = "tcp", host = HOST, port = 0 })
        for i, r in ipairs(replies) do assert_listens(r, "worker " .. i .. ", server 1") end
        assert.is_true(util.wait_listening(ws, 1), "'listening' did not come for every first server")
        replies = util.request_all(ws, { cmd = "tcp", host = HOST, port = 0 })
        for i, r in ipairs(replies) do assert_listens(r, "worker " .. i .. ", server 2") end
        assert.is_true(util.wait_listening(ws, 2), "'listening' did not come for every second server")
        util.settle()
        local first, second = ws[1]._sh_listening[1].port, ws[1]._sh_listening[2].port
        for i, w in ipairs(ws) do
          assert.equal(2, #w._sh_listening, "worker " .. i)
          assert_address(w._sh_listening[1], HOST, first, "inet")
          assert_address(w._sh_listening[2], HOST, second, "inet")
        end
        assert.is_true(first > 0 and second > 0)
        assert.are_not.equal(first, second)
        -- getsockname in the worker gives the real port, as after a plain bind.
        for i, r in ipairs(replies) do
          assert.is_table(r.sock, "worker " .. i .. ": getsockname failed")
          assert.equal(second, r.sock.port, "worker " .. i .. ", server 2: getsockname")
        end
        -- Each port reaches that server of some worker.
        local a = util.get(HOST, first)
        assert.is_nil(a.err)
        assert.equal(1, a.idx)
        local b = util.get(HOST, second)
        assert.is_nil(b.err)
        assert.equal(2, b.idx)
      end)

      it("a port held by another process: the worker gets EADDRINUSE and lives on", function()
        local holder = util.track(uv.new_tcp())
        assert(holder:bind(HOST, 0))
        assert(holder:listen(16, function() end))
        local port = holder:getsockname().port
        local ws = util.fork_n(1)
        local w = ws[1]
        local reply = util.server(w, { cmd = "tcp", host = HOST, port = port })
        assert.is_truthy(reply, "no reply to the bind request")
        local code, msg = util.error_code(reply)
        assert.equal("EADDRINUSE", code, "bind/listen gave: " .. tostring(msg))
        assert.matches("^EADDRINUSE", msg)
        assert.is_truthy(util.request(w, { cmd = "ping" }), "the worker does not answer")
        assert.is_false(w:isDead())
        util.settle()
        assert.equal(0, #w._sh_listening)
        -- It can still listen elsewhere.
        local port2 = util.free_port()
        assert_listens(util.server(w, { cmd = "tcp", host = HOST, port = port2 }))
        local res = util.get(HOST, port2)
        assert.is_nil(res.err)
        assert.equal(w.id, res.id)
      end)

      it("listen, close, listen again on the same port in one worker", function()
        local ws = util.fork_n(1)
        local w = ws[1]
        local port = util.free_port()
        assert_listens(util.server(w, { cmd = "tcp", host = HOST, port = port }))
        local res = util.get(HOST, port)
        assert.is_nil(res.err)
        assert.same({ w.id, 1 }, { res.id, res.idx })
        assert.is_truthy(util.request(w, { cmd = "close", idx = 1 }))
        assert.is_truthy(util.request(w, { cmd = "ping" }))
        assert_listens(util.server(w, { cmd = "tcp", host = HOST, port = port }))
        assert.equal(2, #w._sh_listening)
        assert_address(w._sh_listening[2], HOST, port, "inet")
        for _ = 1, 3 do
          res = util.get(HOST, port)
          assert.is_nil(res.err)
          assert.same({ w.id, 2 }, { res.id, res.idx })
        end
      end)

      it("a worker that closes its server gets no more connections", function()
        local ws = util.fork_n(2)
        local port = util.free_port()
        listen_all(ws, { cmd = "tcp", host = HOST, port = port })
        local seen, total, failures = util.until_all_seen(HOST, port, util.ids(ws), 200, 10)
        assert.same({}, failures)
        assert.is_truthy(seen[ws[1].id] and seen[ws[2].id],
          "after " .. total .. " connections only " .. util.describe_seen(seen) .. " served")
        assert.is_truthy(util.request(ws[1], { cmd = "close", idx = 1 }))
        assert.is_truthy(util.request(ws[1], { cmd = "ping" }))
        local results = util.get_many(HOST, port, 20, 1)
        for i, r in ipairs(results) do
          assert.equal(ws[2].id, r.id, "connection " .. i .. ": " .. tostring(r.err or r.data))
        end
      end)

      it("the master closes the port once no live worker holds it", function()
        local ws = util.fork_n(2)
        local port = util.free_port()
        listen_all(ws, { cmd = "tcp", host = HOST, port = port })
        assert.is_truthy(util.request(ws[1], { cmd = "close", idx = 1 }))
        assert.is_truthy(util.request(ws[1], { cmd = "ping" }))
        local res = util.get(HOST, port)
        assert.equal(ws[2].id, res.id, tostring(res.err))
        -- The last holder dies: nothing listens on the port any more.
        ws[2]:kill("SIGKILL")
        assert.is_true(helper.wait(function() return ws[2]:isDead() end, 5000))
        util.settle()
        res = util.get(HOST, port)
        assert.is_nil(res.id, "a connection was still served by " .. tostring(res.id))
        assert.matches("ECONNREFUSED", tostring(res.err))
        -- And it can be bound again, by this process even.
        local t = util.track(uv.new_tcp())
        assert(t:bind(HOST, port))
        assert(t:listen(16, function() end))
      end)

      it("cluster.disconnect(), then new workers listen on the same port; no fd is leaked", function()
        util.settle()
        local before = helper.fd_count()
        local port = util.free_port()
        for round = 1, 2 do
          local ws = util.fork_n(2)
          local codes = {}
          for i, w in ipairs(ws) do w:on("exit", function(code, signal) codes[i] = { code, signal } end) end
          listen_all(ws, { cmd = "tcp", host = HOST, port = port })
          local seen, total, failures = util.until_all_seen(HOST, port, util.ids(ws), 200, 10)
          assert.same({}, failures, "round " .. round)
          assert.is_truthy(seen[ws[1].id] and seen[ws[2].id], "round " .. round .. ": after " .. total
            .. " connections only " .. util.describe_seen(seen) .. " served")
          local done = false
          cluster.disconnect(function() done = true end)
          assert.is_true(helper.wait(function() return done end, 5000), "round " .. round .. ": disconnect callback")
          assert.is_true(helper.wait(function() return util.all_dead(ws) end, 5000),
            "round " .. round .. ": workers did not exit after disconnect")
          util.settle()
          assert.same({ { 0, nil }, { 0, nil } }, codes)
        end
        util.settle()
        assert.equal(before, helper.fd_count())
      end)

      it("cluster.listenfd gives the worker a listening integer fd and emits 'listening'", function()
        local ws = util.fork_n(1)
        local w = ws[1]
        local r = util.request(w, { cmd = "listenfd", host = HOST, port = 0 })
        assert.is_truthy(r, "no reply")
        assert.equal("integer", r.kind, "listenfd returned " .. tostring(r.kind) .. " " .. tostring(r.err))
        assert.is_true(r.fd > 2)
        assert.is_true(util.wait_listening(ws, 1), "no 'listening' for listenfd")
        local addr = w._sh_listening[1]
        assert_address(addr, HOST, nil, "inet")
        -- The fd listens already: the kernel completes a connection.
        local c = util.track(uv.new_tcp())
        local connected
        c:connect(HOST, addr.port, function(err) connected = err or true end)
        assert.is_true(helper.wait(function() return connected ~= nil end, 3000))
        assert.is_true(connected)
        helper.close(c)
        -- And a luv handle opened on it serves.
        local a = util.request(w, { cmd = "acceptfd" })
        assert.is_truthy(a, "no reply")
        assert.is_true(a.open.ok, tostring(a.open.err))
        assert.is_true(a.listen.ok, tostring(a.listen.err))
        local res = util.get(HOST, addr.port)
        assert.is_nil(res.err)
        assert.equal(w.id, res.id)
      end)

      it("serves ::1 too (family 'inet6')", function()
        if not has_ipv6_loopback() then
          pending("no IPv6 loopback here")
          return
        end
        local ws = util.fork_n(2)
        listen_all(ws, { cmd = "tcp", host = "::1", port = 0 })
        local port = ws[1]._sh_listening[1].port
        for _, w in ipairs(ws) do assert_address(w._sh_listening[1], "::1", port, "inet6") end
        local seen, total, failures = util.until_all_seen("::1", port, util.ids(ws), 200, 10)
        assert.same({}, failures)
        assert.is_truthy(seen[ws[1].id] and seen[ws[2].id],
          "after " .. total .. " connections only " .. util.describe_seen(seen) .. " served")
      end)
    end)
  end

  it("a privileged port gives the worker EACCES when the master is unprivileged", function()
    local start = tonumber(helper.read_file("/proc/sys/net/ipv4/ip_unprivileged_port_start") or "") or 1024
    if start <= 1 then
      pending("every port is unprivileged here (ip_unprivileged_port_start = " .. start .. ")")
      return
    end
    local port = "1"
    local state
    if uv.getuid() == 0 then
      -- The checkout may be in a directory user 65534 cannot enter: run a
      -- readable copy.
      local copy, remove = helper.readable_copy()
      finally(remove)
      local lpath, cpath = helper.copy_paths(copy)
      state = helper.spawn_lua(copy .. "/spec/fixtures/sh_master_eacces.lua", { port }, nil, nil,
        { uid = 65534, gid = 65534, lpath = lpath, cpath = cpath })
    else
      state = helper.spawn_lua(helper.fixture("sh_master_eacces"), { port })
    end
    local ok = helper.wait(function() return state.exited and state.eof end, 10000)
    if not ok then uv.kill(state.pid, 9) end
    assert.is_true(helper.wait(function() return state.exited and state.eof end, 5000))
    assert.is_true(ok, "the master did not finish: " .. table.concat(state.lines, " | "))
    local text = table.concat(state.lines, "\n")
    if uv.getuid() == 0 then assert.equal("uid 65534", state.lines[1]) end
    assert.matches("\nresult %a+ EACCES EACCES", text)
    assert.matches("\nalive\n", text, 1, true)
    assert.is_nil(text:find("listening", 1, true))
    assert.is_nil(text:find("timeout", 1, true))
    assert.equal(0, state.code)
  end)
end)
