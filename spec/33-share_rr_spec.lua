-- Round-robin scheduling: the master accepts and hands each connection to
-- the next worker; disconnecting or dead workers get none (Node's
-- test-cluster-round-robin*, -worker-kill-signal under load).
-- Workers run spec/fixtures/sh_worker.lua.
local uv = require("luv")
local helper = require("helper")
local util = dofile(helper.fixture("sh_util"))

local HOST = "127.0.0.1"

local function two_listening()
  local ws = util.fork_n(2)
  for i, w in ipairs(ws) do
    local reply = util.server(w, { cmd = "tcp", host = HOST, port = 0 })
    assert.is_truthy(reply, "worker " .. i .. ": no reply to the bind request")
    local code, msg = util.error_code(reply)
    assert.is_nil(code, "worker " .. i .. ": " .. tostring(msg))
  end
  assert.is_true(util.wait_listening(ws, 1), "'listening' did not come for both workers")
  local port = ws[1]._sh_listening[1].port
  assert.equal(port, ws[2]._sh_listening[1].port)
  return ws, port
end

describe("round-robin scheduling", function()
  before_each(function() util.policy("rr") end)
  after_each(util.cleanup)

  it("spreads 100 connections over 2 workers 40/60 or better", function()
    local ws, port = two_listening()
    local counts, failures = {}, {}
    for _, r in ipairs(util.get_many(HOST, port, 100, 4)) do
      if r.id then counts[r.id] = (counts[r.id] or 0) + 1 else failures[#failures + 1] = r.err or "no data" end
    end
    assert.same({}, failures)
    for _, w in ipairs(ws) do
      local n = counts[w.id] or 0
      assert.is_true(n >= 40 and n <= 60, "split " .. util.describe_seen(counts))
    end
  end)

  it("a disconnecting worker gets no new connection", function()
    local ws, port = two_listening()
    local seen = util.until_all_seen(HOST, port, util.ids(ws), 20, 2)
    assert.is_truthy(seen[ws[1].id] and seen[ws[2].id], "served: " .. util.describe_seen(seen))
    local gone = false
    ws[1]:on("disconnect", function() gone = true end)
    ws[1]:disconnect()
    assert.is_true(helper.wait(function() return gone end, 5000))
    for i, r in ipairs(util.get_many(HOST, port, 20, 2)) do
      assert.equal(ws[2].id, r.id, "connection " .. i .. ": " .. tostring(r.err or r.data))
    end
    assert.is_true(helper.wait(function() return ws[1]:isDead() end, 5000))
  end)

  it("connections handed to a worker that closes before accepting them go to another", function()
    local ws = util.fork_n(2)
    local lazy, busy = ws[1], ws[2]
    local reply = util.server(lazy, { cmd = "tcp", host = HOST, port = 0, noaccept = true })
    assert.is_nil(util.error_code(reply))
    reply = util.server(busy, { cmd = "tcp", host = HOST, port = 0 })
    assert.is_nil(util.error_code(reply))
    assert.is_true(util.wait_listening(ws, 1))
    local port = lazy._sh_listening[1].port
    assert.equal(port, busy._sh_listening[1].port)
    local pending = 0
    lazy:on("message", function(m) if type(m) == "table" and m.ev == "conn_pending" then pending = pending + 1 end end)
    local results = {}
    for i = 1, 6 do util.connect(HOST, port, function(r) results[i] = r end) end
    local function done()
      local n = 0
      for _ in pairs(results) do n = n + 1 end
      return n
    end
    -- Every connection is either served by busy or waiting in lazy.
    assert.is_true(helper.wait(function() return done() + pending == 6 end, 3000),
      done() .. " served, " .. pending .. " waiting")
    assert.is_true(pending > 0, "rr gave the lazy worker nothing")
    assert.is_truthy(util.request(lazy, { cmd = "close", idx = 1 }))
    assert.is_true(helper.wait(function() return done() == 6 end, 4000))
    for i = 1, 6 do
      local r = results[i]
      r.id = util.parse(r.data)
      assert.equal(busy.id, r.id, "connection " .. i .. ": " .. tostring(r.err or r.data))
    end
  end)

  it("a worker SIGKILLed under load: only connections already handed to it fail, none is refused", function()
    local ws, port = two_listening()
    local victim, survivor = ws[1], ws[2]
    local N, PARALLEL, KILL_AT = 200, 4, 100
    local results, started, finished, in_flight = {}, 0, 0, 0
    local killed, held, in_flight_at_kill = false, false, nil
    local pump
    function pump()
      while not held and in_flight < PARALLEL and started < N do
        if started == KILL_AT and not killed then
          -- Killed from outside, as a crash would be: the master learns
          -- it from the channel and the process, not from worker:kill().
          killed, in_flight_at_kill = true, in_flight
          assert(uv.kill(victim.pid, 9))
          -- Connections started from now on must all be served: hold
          -- them until the process is really gone.
          held = true
          return
        end
        started = started + 1
        local i = started
        in_flight = in_flight + 1
        util.connect(HOST, port, function(r)
          r.id, r.idx = util.parse(r.data)
          results[i] = r
          in_flight = in_flight - 1
          finished = finished + 1
          pump()
        end)
      end
    end
    pump()
    assert.is_true(helper.wait(function() return killed end, 10000), "never reached the kill")
    assert.is_true(helper.wait(function() return not helper.alive(victim.pid) end, 5000))
    held = false
    pump()
    assert.is_true(helper.wait(function() return finished == N end, 20000),
      "only " .. finished .. " of " .. N .. " connections finished")
    assert.is_true(helper.wait(function() return victim:isDead() end, 5000))

    local before, refused, failed_before, wrong_after = {}, {}, {}, {}
    for i = 1, N do
      local r = results[i]
      if r.err and tostring(r.err):match("ECONNREFUSED") then refused[#refused + 1] = i end
      if i <= KILL_AT then
        if r.id then before[r.id] = (before[r.id] or 0) + 1 else failed_before[#failed_before + 1] = i end
      elseif r.id ~= survivor.id then
        wrong_after[#wrong_after + 1] = i .. ": " .. tostring(r.id or r.err or "no data")
      end
    end
    assert.same({}, refused)
    assert.is_truthy(before[victim.id] and before[survivor.id], "before the kill: " .. util.describe_seen(before))
    assert.same({}, wrong_after)
    assert.is_true(#failed_before <= in_flight_at_kill, #failed_before .. " connections failed, "
      .. in_flight_at_kill .. " were in flight at the kill")
  end)
end)
