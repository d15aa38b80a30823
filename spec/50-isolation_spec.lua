-- Nothing a worker sends or asks can stop the master (API.md, Sharing
-- server ports; README "What a worker cannot do to the master"): a bind
-- the master cannot use, internal messages that break the protocol, and a
-- master handler that fails. Each time the master lives on and still
-- serves another worker. Workers run spec/fixtures/hard_worker.lua.
local uv = require("luv")
local helper = require("helper")
local cluster = require("cluster")
local protocol = require("cluster.protocol")
local util = dofile(helper.fixture("sh_util"))

local HOST = "127.0.0.1"

local function fork(n)
  util.setup({ exec = helper.fixture("hard_worker"), args = {} })
  local list = {}
  for i = 1, n do
    local w = util.fork()
    w._errs, w._seen = {}, {}
    w:on("error", function(err) w._errs[#w._errs + 1] = err end)
    w:on("disconnect", function() w._seen[#w._seen + 1] = "disconnect" end)
    w:on("exit", function(code, signal)
      w._seen[#w._seen + 1] = "exit"
      w._code, w._signal = code, signal
    end)
    list[i] = w
  end
  return list
end

-- The master still works: `w` (another worker) answers an echo.
local function still_serves(w, what)
  local reply = util.request(w, { cmd = "echo", value = { what = what } })
  assert.is_truthy(reply, "the master no longer talks to worker " .. w.id .. " after " .. what)
  assert.same({ what = what }, reply.value)
end

-- A worker's bind -> its results: { raised = msg } or { ret = { n =, ... } }.
local function bind(w, kind, host, port, fn)
  local reply = util.request(w, { cmd = "bind", kind = kind, host = host, port = port, fn = fn })
  assert.is_truthy(reply, "no reply to the bind request")
  return reply.res
end

-- A server from `w`: serves "<id>\n" on the port its 'listening' says.
local function serve_and_connect(w)
  local port
  local function on_listening(address) port = address.port end
  w:on("listening", on_listening)
  local reply = util.request(w, { cmd = "serve" })
  assert.is_truthy(reply, "no reply to serve")
  assert.equal(0, reply.bind.ret and reply.bind.ret[1], tostring(reply.bind.raised or reply.bind.ret[2]))
  assert.equal(0, reply.listen.ret and reply.listen.ret[1], tostring(reply.listen.raised or reply.listen.ret[2]))
  assert.is_true(helper.wait(function() return port ~= nil end), "no 'listening'")
  w:off("listening", on_listening)
  local res = util.get(HOST, port)
  assert.equal(w.id .. "\n", res.data, tostring(res.err))
end

describe("a worker's bind the master cannot use", function()
  after_each(util.cleanup)

  for _, policy in ipairs({ "rr", "shared" }) do
    it("is EINVAL in that worker, the master lives on (" .. policy .. ")", function()
      util.policy(policy)
      local ws = fork(2)
      local w, other = ws[1], ws[2]
      -- These reach the master (the worker's luv checks pass them) and come
      -- back as luv reports a bind error.
      local reach = {
        { HOST, 70000 }, { HOST, -1 }, { "abc", 80 }, { "", 80 }, { "::1%%bogus", 80 },
        { HOST, 2 ^ 40 },
      }
      for _, kind in ipairs({ "tcp", "udp" }) do
        for _, fn in ipairs({ false, true }) do
          for _, a in ipairs(reach) do
            local what = ("%s %s bind(%q, %s)"):format(kind, fn and "function" or "method", a[1], tostring(a[2]))
            local res = bind(w, kind, a[1], a[2], fn)
            assert.is_nil(res.raised, what .. " raised: " .. tostring(res.raised))
            assert.equal(3, res.ret.n, what)
            assert.is_nil(res.ret[1], what)
            -- API.md: "EINVAL: ..." (the text after it is the master's reason)
            assert.matches("^EINVAL: %S", res.ret[2], 1, false, what)
            assert.equal("EINVAL", res.ret[3], what)
          end
        end
      end
      -- These are refused by luv's own argument checks, which run first in
      -- the worker and raise as luv does: the master never sees them.
      local raise = {
        { HOST, "x", "bad argument #3 to 'tcp_bind' %(number expected, got string%)" },
        { HOST, 1.5, "bad argument #3 to 'tcp_bind' %(number has no integer representation%)" },
        { nil, 80, "bad argument #2 to 'tcp_bind' %(string expected, got nil%)" },
        { true, 80, "bad argument #2 to 'tcp_bind' %(string expected, got boolean%)" },
      }
      for _, a in ipairs(raise) do
        local res = bind(w, "tcp", a[1], a[2], false)
        assert.is_nil(res.ret, "bind(" .. tostring(a[1]) .. ", " .. tostring(a[2]) .. ") returned")
        assert.matches(a[3], res.raised)
      end
      assert.same({}, w._errs)
      assert.is_true(w:isConnected())
      -- The same worker then binds and serves; the other one is served too.
      serve_and_connect(w)
      still_serves(other, "bad binds")
    end)
  end
end)

-- How many of this process's fds are open on /dev/null.
local function devnull_fds()
  local n = 0
  local req = assert(uv.fs_scandir("/proc/self/fd"))
  while true do
    local name = uv.fs_scandir_next(req)
    if not name then break end
    if uv.fs_readlink("/proc/self/fd/" .. name) == "/dev/null" then n = n + 1 end
  end
  return n
end

describe("an internal message that breaks the protocol", function()
  after_each(util.cleanup)

  -- Written raw onto the worker's channel (hard_worker's "raw" command goes
  -- under protocol.message, which would refuse them): a worker that is
  -- broken or hostile is not bound by its own library's checks.
  local cases = {
    { "of an unknown kind", { act = "bogus" }, false, "'bogus'%): unknown kind" },
    { "that is no table", "online", false, "a string%): unknown kind" },
    { "without an act", { seq = 1 }, false, "a table%): unknown kind" },
    { "with a mistyped field", { act = "serve", seq = "x", type = "tcp" }, false, "'serve'%): bad field 'seq'" },
    { "with a missing field", { act = "listening", address = {} }, false, "'listening'%): bad field 'key'" },
    { "with a bad enum field", { act = "serve", seq = 1, type = "sctp" }, false, "'serve'%): bad field 'type'" },
    { "with an fd where its kind takes none", { act = "online" }, true, "'online'%): unexpected file descriptor" },
    { "without the fd its kind needs", { act = "handback", key = "k" }, false,
      "'handback'%): file descriptor missing" },
    { "of a kind only the master sends (newconn, with an fd)", { act = "newconn", key = "k" }, true,
      "'newconn'%): unknown kind" },
    { "of a kind only the master sends (reply)", { act = "reply", seq = 1 }, false, "'reply'%): unknown kind" },
  }
  for _, case in ipairs(cases) do
    it(case[1] .. " costs that worker its channel, nothing more", function()
      local ws = fork(2)
      local bad, other = ws[1], ws[2]
      still_serves(bad, "start") -- online, in its loop
      local null_before = devnull_fds()
      bad:send({ cmd = "raw", value = case[2], fd = case[3] })
      assert.is_true(helper.wait(function() return bad:isDead() end), "the worker was not dropped")
      assert.equal(1, #bad._errs, table.concat(bad._errs, "\n"))
      assert.matches("^bad internal message from the worker %(" .. case[4] .. "$", bad._errs[1])
      assert.same({ "disconnect", "exit" }, bad._seen)
      -- The worker was dropped, not killed: it left on its channel's EOF.
      assert.equal(0, bad._code)
      assert.is_false(bad.exitedAfterDisconnect)
      assert.is_nil(cluster.workers[bad.id])
      -- The fd that came with it (the worker's /dev/null) was closed.
      assert.equal(null_before, devnull_fds())
      still_serves(other, case[1])
    end)
  end
end)

describe("a master handler that fails", function()
  after_each(util.cleanup)

  -- The protocol's table of kinds is protocol.lua's own; only through it
  -- can a spec make a handler fail (no request a worker can make does).
  -- Found through protocol.handle's upvalue, and put back afterwards.
  local function kinds()
    for i = 1, math.huge do
      local name, value = debug.getupvalue(protocol.handle, i)
      if not name then break end
      if name == "KINDS" then return value end
    end
    error("protocol.handle has no KINDS upvalue")
  end

  it("answers the request with EIO, is an 'error' on that Worker, the master lives on", function()
    local ws = fork(2)
    local w, other = ws[1], ws[2]
    still_serves(w, "start")
    local serve_kind = kinds().serve
    local original = serve_kind.handler
    assert.is_function(original)
    protocol.handle("serve", function() error("boom from a spec") end)
    local ok, res = pcall(bind, w, "tcp", HOST, 0, false)
    protocol.handle("serve", original)
    assert(ok, res)
    assert.same({ ret = { n = 3, nil, "EIO: the master failed to handle the request", "EIO" } }, res)
    assert.equal(1, #w._errs)
    assert.matches("^internal error handling 'serve' from the worker: .*boom from a spec", w._errs[1])
    -- Not a protocol violation: the worker keeps its channel and binds
    -- again once the handler works.
    assert.is_true(w:isConnected())
    serve_and_connect(w)
    still_serves(other, "a failed handler")
  end)
end)
