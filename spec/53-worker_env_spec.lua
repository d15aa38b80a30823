-- What a worker is, seen from inside it and from the OS (API.md, Roles):
-- getsockname on handles that are no shared server, an environment with
-- nothing of the cluster left in it (so a Lua process the worker starts is
-- a master), and Ctrl-C: a worker or master without a SIGINT handler of
-- its own ends by SIGINT without printing a Lua error.
local uv = require("luv")
local helper = require("helper")
local util = dofile(helper.fixture("sh_util"))

local function fork_hard(given, env)
  given = given or {}
  given.exec, given.args = helper.fixture("hard_worker"), {}
  util.setup(given)
  return util.fork(env)
end

describe("in a worker, getsockname on a handle that is no shared server", function()
  after_each(util.cleanup)

  for _, policy in ipairs({ "rr", "shared" }) do
    it("answers from its own socket (" .. policy .. ")", function()
      util.policy(policy)
      -- A server of the spec's own (this process is the master: its binds
      -- are plain luv) that the worker's client connects to.
      local server = util.track(uv.new_tcp())
      assert(server:bind("127.0.0.1", 0))
      local port = server:getsockname().port
      local peer_port
      assert(server:listen(8, function()
        local c = util.track(uv.new_tcp())
        server:accept(c)
        peer_port = c:getpeername().port
      end))
      local w = fork_hard()
      local reply = util.request(w, { cmd = "sockname", port = port })
      assert.is_truthy(reply, "no reply")
      assert.is_false(reply.err)
      assert.is_true(helper.wait(function() return peer_port ~= nil end), "the spec's server saw no connection")
      local mine = { ip = "127.0.0.1", port = peer_port, family = "inet" }
      assert.same({ ret = { n = 1, mine } }, reply.tcp)
      assert.same({ ret = { n = 1, mine } }, reply.tcp_fn)
      assert.same({ ret = { n = 1, { ip = "127.0.0.1", port = port, family = "inet" } } }, reply.peer)
      -- A socketpair's ends have no name: luv's "" for both forms.
      assert.same({ ret = { n = 1, "" } }, reply.pipe)
      assert.same({ ret = { n = 1, "" } }, reply.pipe_fn)
    end)
  end
end)

describe("a worker's environment", function()
  after_each(util.cleanup)

  it("holds no LUA_CLUSTER_* variable, and a Lua process it starts is a master", function()
    util.policy("shared")
    local w = fork_hard({ env = { HARD_ENV_MARK = "from settings" } })
    local env = util.request(w, { cmd = "env" })
    assert.is_truthy(env, "no reply")
    assert.same({}, env.names)
    assert.is_false(env.id)
    assert.is_false(env.fd)
    -- What the cluster passed on is read before it is removed; the rest of
    -- the environment is left alone.
    assert.equal("shared", env.policy)
    assert.equal("from settings", env.mark)
    local child = util.request(w, { cmd = "spawn" }, nil, 10000)
    assert.is_truthy(child, "no reply from the worker's child")
    assert.is_nil(child.err)
    assert.equal(0, child.code)
    assert.equal("isMaster=true isWorker=false worker=nil env=\n", child.out)
    -- The worker itself is still a worker of this master.
    assert.is_true(w:isConnected())
  end)
end)

describe("SIGINT", function()
  after_each(util.cleanup)

  it("ends a worker without a handler of its own by the signal, with nothing on its stderr", function()
    local w = fork_hard({ silent = true })
    local err_chunks, err_eof = {}, false
    w.process.stderr:read_start(function(_, data)
      if data then err_chunks[#err_chunks + 1] = data else err_eof = true end
    end)
    w.process.stdout:read_start(function() end)
    local exit
    w:on("exit", function(code, signal) exit = { code = code, signal = signal } end)
    -- From inside its loop: past the interpreter's own SIGINT handling.
    assert.is_truthy(util.request(w, { cmd = "ping" }), "the worker did not answer")
    assert(uv.kill(w.pid, "sigint"))
    assert.is_true(helper.wait(function() return exit ~= nil and err_eof end), "the worker did not end")
    assert.same({ signal = "SIGINT" }, exit)
    assert.is_false(w.exitedAfterDisconnect)
    local err = table.concat(err_chunks)
    assert.is_nil(err:find("interrupted!", 1, true), err)
    assert.is_nil(err:find("EBADF", 1, true), err)
    assert.equal("", err)
  end)

  describe("to a clustered script's process group", function()
    local state, pids = nil, {}
    after_each(function()
      if state and not state.exited then uv.kill(-state.pid, "sigkill") end
      for _, pid in ipairs(pids) do if helper.alive(pid) then uv.kill(pid, "sigkill") end end
      if state then helper.wait(function() return state.exited end, 5000) end
      state, pids = nil, {}
    end)

    it("ends master and workers, none printing a Lua error", function()
      state = helper.spawn_lua(helper.fixture("hard_sigint"), {}, function(line)
        local pid = tonumber(line:match("^worker (%d+)$"))
        if pid then pids[#pids + 1] = pid end
      end, nil, { detached = true, stderr = true })
      assert.is_true(helper.wait(function()
        return state.exited or state.lines[#state.lines] == "ready"
      end, 10000), "the script did not get ready")
      assert.is_falsy(state.exited)
      assert.equal(2, #pids)
      -- Its own session and process group, as a terminal's foreground job.
      assert(uv.kill(-state.pid, "sigint"))
      assert.is_true(helper.wait(function()
        return state.exited and state.err_eof and not helper.alive(pids[1]) and not helper.alive(pids[2])
      end, 10000), "the group did not end")
      assert.equal(2, state.signal) -- the master too ended by SIGINT
      local err = table.concat(state.err_lines, "\n")
      assert.is_nil(err:find("interrupted!", 1, true), err)
      assert.is_nil(err:find("EBADF", 1, true), err)
      assert.equal("", err)
    end)
  end)
end)
