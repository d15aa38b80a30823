-- Running out of file descriptors costs one connection, never a process
-- (API.md, "Nothing a worker sends or asks can stop the master"; README
-- "Out of file descriptors or memory"): under rr, a worker at its fd limit
-- cannot receive the connection the master passes (MSG_CTRUNC); the
-- message is dropped with an 'error' on cluster.worker, the connection is
-- closed, and the worker serves again once it has descriptors.
-- Workers run spec/fixtures/hard_worker.lua.
local helper = require("helper")
local util = dofile(helper.fixture("sh_util"))

local HOST = "127.0.0.1"

describe("a worker out of file descriptors under rr", function()
  before_each(function() util.policy("rr") end)
  after_each(util.cleanup)

  it("loses that connection with an EMFILE 'error' in the worker, then recovers", function()
    util.setup({ exec = helper.fixture("hard_worker"), args = {} })
    local w, other = util.fork(), util.fork()
    local evs, master_errors = {}, {}
    w:on("message", function(m) if type(m) == "table" and m.ev then evs[#evs + 1] = m end end)
    w:on("error", function(err) master_errors[#master_errors + 1] = err end)
    local port
    w:on("listening", function(address) port = address.port end)
    local reply = util.request(w, { cmd = "serve" })
    assert.is_truthy(reply, "no reply to serve")
    assert.equal(0, reply.listen.ret and reply.listen.ret[1])
    assert.is_true(helper.wait(function() return port ~= nil end), "no 'listening'")
    assert.equal(w.id .. "\n", util.get(HOST, port).data)

    reply = util.request(w, { cmd = "cap" })
    assert.is_truthy(reply, "no reply to cap")
    assert.is_true(reply.filled >= 1, "nothing was left to fill under the limit")
    -- The connection's fd cannot reach the worker: closed by the kernel, so
    -- the client sees the end of it, with nothing written.
    local lost = util.get(HOST, port)
    assert.is_true(lost.err == nil or lost.err == "ECONNRESET", tostring(lost.err))
    assert.equal("", lost.data)
    assert.is_true(helper.wait(function() return #evs >= 2 end), "no error/recovered from the worker")
    assert.equal("error", evs[1].ev)
    assert.matches("^EMFILE: a message was dropped", evs[1].err)
    assert.same({ ev = "recovered", fds = reply.filled }, evs[2])
    -- Nothing broke the protocol: the worker keeps its channel, the
    -- master has nothing to report on it.
    assert.same({}, master_errors)
    assert.is_true(w:isConnected())
    -- Descriptors free again: it serves.
    for _ = 1, 3 do assert.equal(w.id .. "\n", util.get(HOST, port).data) end
    local echo = util.request(other, { cmd = "echo", value = "still here" })
    assert.equal("still here", echo and echo.value)
  end)
end)
