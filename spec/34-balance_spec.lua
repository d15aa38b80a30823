-- settings.balance under "rr": roundrobin (the default, unchanged),
-- leastconn (fewest connections handed over and not yet closed) and source
-- (rendezvous hashing of the client's IP over the ready workers), and the
-- runner's --balance. Workers run spec/fixtures/bal_worker.lua, which
-- writes its id on every connection and keeps it until the client closes.
local uv = require("luv")
local helper = require("helper")
local cluster = require("cluster")
local compat = require("cluster.compat")
local util = dofile(helper.fixture("sh_util"))

local WORKER = helper.fixture("bal_worker")
local HOST = "127.0.0.1"

-- Client connections of this spec: closed by after_each.
local clients, closing = {}, 0

local function close_conn(c)
  if not clients[c] then return end
  clients[c] = nil
  if c:is_closing() then return end
  closing = closing + 1
  c:close(function() closing = closing - 1 end)
end

-- One connection to the worker's server (TCP to `to.port`, from the
-- address `to.from` when given, or to the pipe `to.path`); cb(id) once the
-- worker's id line is in, cb(nil, err) on failure. The connection stays
-- open: returns the handle, for close_conn.
local function connect(to, cb)
  local c = to.path and uv.new_pipe(false) or uv.new_tcp()
  clients[c] = true
  local buf, done = "", false
  local timer = uv.new_timer()
  local function finish(id, err)
    if done then return end
    done = true
    timer:close()
    if not id then close_conn(c) end
    cb(id, err)
  end
  timer:start(4000, 0, function() finish(nil, "timeout") end)
  local function on_connect(err)
    if err then return finish(nil, err) end
    c:read_start(function(rerr, data)
      if rerr or not data then return finish(nil, rerr or "EOF before the id") end
      buf = buf .. data
      local id = buf:match("^(%d+)\n")
      if id then
        c:read_stop()
        finish(tonumber(id))
      end
    end)
  end
  if to.from then
    local ok, err = c:bind(to.from, 0)
    if not ok then
      finish(nil, err)
      return c
    end
  end
  local ok, err
  if to.path then ok, err = c:connect(to.path, on_connect) else ok, err = c:connect(HOST, to.port, on_connect) end
  if not ok then finish(nil, err) end
  return c
end

-- n connections at once, held open: a list of { c =, id = }.
local function hold(to, n)
  local list, got = {}, 0
  for i = 1, n do
    list[i] = {}
    list[i].c = connect(to, function(id, err)
      list[i].id, list[i].err = id, err
      got = got + 1
    end)
  end
  assert(helper.wait(function() return got == n end, 10000), "only " .. got .. " of " .. n .. " connected")
  for i = 1, n do assert(list[i].id, "held connection " .. i .. ": " .. tostring(list[i].err)) end
  return list
end

-- n short connections (id read, then closed), at most `parallel` at once;
-- `to_of(i)` gives connection i's target. The worker ids, in start order.
local function short(n, parallel, to_of)
  local ids, started, finished, errs = {}, 0, 0, {}
  local function start_next()
    if started >= n then return end
    started = started + 1
    local i = started
    local c
    c = connect(to_of(i), function(id, err)
      ids[i] = id
      if not id then errs[#errs + 1] = i .. ": " .. tostring(err) end
      close_conn(c)
      finished = finished + 1
      start_next()
    end)
  end
  for _ = 1, math.min(parallel, n) do start_next() end
  assert(helper.wait(function() return finished == n end, 30000), "only " .. finished .. " of " .. n .. " finished")
  assert.same({}, errs)
  return ids
end

local function tally(ids)
  local counts = {}
  for _, id in pairs(ids) do counts[id] = (counts[id] or 0) + 1 end
  return counts
end

-- A worker, listening (its 'listening' event in), with w._bal_address.
local function fork_listening(msg)
  local w = util.fork()
  w:on("listening", function(address) w._bal_address = address end)
  local reply = util.request(w, msg)
  assert(reply and reply.ok, "worker " .. w.id .. " cannot listen: " .. tostring(reply and reply.err))
  assert(helper.wait(function() return w._bal_address ~= nil end, 5000), "no 'listening' from worker " .. w.id)
  return w
end

-- n workers sharing one TCP port under `balance`: the list and the port.
local function tcp_workers(n, balance)
  util.policy("rr")
  util.setup({ exec = WORKER, args = {}, balance = balance })
  local ws = {}
  for i = 1, n do ws[i] = fork_listening({ cmd = "listen", host = HOST, port = 0 }) end
  local port = ws[1]._bal_address.port
  for i = 2, n do assert.equal(port, ws[i]._bal_address.port) end
  return ws, port
end

-- The worker's own count of open connections has come down to n.
-- Asked again after each answer (a round trip, not a sleep) until then.
local function wait_open(w, n)
  local last
  uv.update_time()
  local deadline = uv.now() + 5000
  repeat
    local reply = util.request(w, { cmd = "open" })
    last = reply and reply.n
  until last == n or uv.now() > deadline
  assert.equal(n, last, "worker " .. w.id .. " still has " .. tostring(last) .. " connections open")
end

-- The master's count for leastconn (share_master's fields: handed over,
-- given back, closed as last reported) has caught up with n: the report
-- of the last closes is in.
local function wait_master_count(w, n)
  local function count() return w._handed - w._handed_back - w._closed end
  assert.is_true(helper.wait(function() return count() == n end, 5000),
    "the master counts " .. count() .. " connections open on worker " .. w.id .. ", not " .. n)
end

describe("settings.balance", function()
  before_each(function() closing = 0 end)
  after_each(function()
    for c in pairs(clients) do close_conn(c) end
    helper.wait(function() return closing == 0 end, 2000)
    util.cleanup()
    cluster.setup({ balance = false })
  end)

  it("is roundrobin by default and raises naming a bad value", function()
    util.setup({})
    assert.equal("roundrobin", cluster.settings.balance)
    local ok, err = pcall(cluster.setup, { balance = "fastest" })
    assert.is_false(ok)
    assert.matches("'balance'", tostring(err))
    assert.matches('"fastest"', tostring(err))
    ok, err = pcall(cluster.setup, { balance = 2 })
    assert.is_false(ok)
    assert.matches("'balance' must be \"roundrobin\", \"leastconn\" or \"source\" %(got number%)", tostring(err))
    assert.equal("roundrobin", cluster.settings.balance)
  end)

  it("roundrobin ignores held connections: short ones alternate", function()
    local ws, port = tcp_workers(2, "roundrobin")
    local a, b = ws[1], ws[2]
    local held = hold({ port = port }, 40)
    for _, h in ipairs(held) do if h.id == b.id then close_conn(h.c) end end
    wait_open(b, 0)
    local counts = tally(short(40, 1, function() return { port = port } end))
    assert.equal(20, counts[a.id], util.describe_seen(counts))
    assert.equal(20, counts[b.id], util.describe_seen(counts))
  end)

  it("leastconn steers new connections away from a worker holding 20 long-lived ones", function()
    local ws, port = tcp_workers(2, "leastconn")
    local a, b = ws[1], ws[2]
    -- All even: ties go round robin.
    local held = hold({ port = port }, 40)
    local counts = tally((function()
      local ids = {}
      for i, h in ipairs(held) do ids[i] = h.id end
      return ids
    end)())
    assert.equal(20, counts[a.id], util.describe_seen(counts))
    assert.equal(20, counts[b.id], util.describe_seen(counts))
    -- b's clients leave; a keeps its 20.
    for _, h in ipairs(held) do if h.id == b.id then close_conn(h.c) end end
    wait_open(b, 0)
    wait_master_count(b, 0)
    wait_master_count(a, 20)
    -- Short connections, one at a time: b's count stays far below a's 20
    -- even with its latest closes not reported yet, so all go to b.
    counts = tally(short(40, 1, function() return { port = port } end))
    assert.equal(40, counts[b.id], util.describe_seen(counts))
    -- 30 more held at once: b is filled up to a's 20, then they alternate.
    wait_master_count(b, 0)
    local more = hold({ port = port }, 30)
    counts = {}
    for _, h in ipairs(more) do counts[h.id] = (counts[h.id] or 0) + 1 end
    assert.equal(25, counts[b.id], util.describe_seen(counts))
    assert.equal(5, counts[a.id], util.describe_seen(counts))
  end)

  it("a worker's bogus closedconns reports cost the master nothing", function()
    local ws, port = tcp_workers(2, "leastconn")
    local liar, bad = ws[1], ws[2]
    -- An integer, however wrong, is taken: the liar looks idle and gets
    -- the connections, nothing more.
    assert.is_truthy(util.request(liar, { cmd = "report", total = compat.tointeger(2 ^ 40) }))
    local counts = tally(short(10, 2, function() return { port = port } end))
    assert.equal(10, counts[liar.id], util.describe_seen(counts))
    -- Not an integer: a protocol error, which drops that worker.
    local err
    bad:on("error", function(e) err = e end)
    bad:send({ cmd = "report", total = "many" })
    assert.is_true(helper.wait(function() return err ~= nil and not bad:isConnected() end, 5000))
    assert.matches("closedconns", tostring(err))
    counts = tally(short(10, 2, function() return { port = port } end))
    assert.equal(10, counts[liar.id], util.describe_seen(counts))
  end)

  it("source keeps each client address on one worker; adding or removing a worker moves only its share", function()
    local ws, port = tcp_workers(3, "source")
    local CLIENTS, PER = 20, 10
    local function from(i) return "127.0.0." .. (2 + (i - 1) % CLIENTS) end
    -- 200 connections, 8 at once: client address -> worker id, each
    -- address seen on one worker only.
    local function placement()
      local ids = short(CLIENTS * PER, 8, function(i) return { port = port, from = from(i) } end)
      local on = {}
      for i, id in ipairs(ids) do
        local addr = from(i)
        assert.is_true(on[addr] == nil or on[addr] == id,
          addr .. " went to worker " .. tostring(on[addr]) .. " and to worker " .. id)
        on[addr] = id
      end
      return on
    end
    local function live(id)
      for _, w in ipairs(ws) do if w.id == id and not w._bal_removed then return true end end
      return false
    end

    local before = placement()
    local used = tally(before)
    local n_used = 0
    for _ in pairs(used) do n_used = n_used + 1 end
    assert.is_true(n_used >= 2, "20 addresses all on one of 3 workers: " .. util.describe_seen(used))

    -- One more worker: the addresses that move all go to it, about 1/4 of
    -- them (20/4 = 5; at most twice that plus 2).
    local added = fork_listening({ cmd = "listen", host = HOST, port = 0 })
    assert.equal(port, added._bal_address.port)
    ws[#ws + 1] = added
    local after_add = placement()
    local moved = 0
    for addr, id in pairs(after_add) do
      if id ~= before[addr] then
        moved = moved + 1
        assert.equal(added.id, id, addr .. " moved from worker " .. before[addr] .. " to an old worker")
      end
    end
    assert.is_true(moved <= 2 * CLIENTS / 4 + 2, moved .. " of 20 addresses moved to the added worker")

    -- Remove the busiest worker: exactly its addresses move, each to a
    -- live worker; every other address stays where it was.
    local counts = tally(after_add)
    local gone
    for _, w in ipairs(ws) do
      if not gone or (counts[w.id] or 0) > (counts[gone.id] or 0) then gone = w end
    end
    local disconnected = false
    gone:on("disconnect", function() disconnected = true end)
    gone._bal_removed = true
    gone:disconnect()
    assert.is_true(helper.wait(function() return disconnected end, 5000))
    local after_remove = placement()
    for addr, id in pairs(after_remove) do
      if after_add[addr] == gone.id then
        assert.is_true(live(id), addr .. " went to worker " .. id .. ", which is not live")
      else
        assert.equal(after_add[addr], id, addr .. " moved though its worker stayed")
      end
    end
  end)

  it("source sends unix-socket clients round robin", function()
    util.policy("rr")
    util.setup({ exec = WORKER, args = {}, balance = "source" })
    local path = util.tmpdir() .. "/bal.sock"
    local a = fork_listening({ cmd = "listen", path = path })
    local b = fork_listening({ cmd = "listen", path = path })
    local counts = tally(short(10, 1, function() return { path = path } end))
    assert.equal(5, counts[a.id], util.describe_seen(counts))
    assert.equal(5, counts[b.id], util.describe_seen(counts))
  end)

  describe("the runner's --balance", function()
    local BIN = uv.cwd() .. "/bin/luv-cluster"
    local run

    after_each(function()
      if run and not run.exited then
        uv.kill(run.pid, "sigterm")
        if not helper.wait(function() return run.exited end, 5000) then uv.kill(run.pid, "sigkill") end
        assert.is_true(helper.wait(function() return run.exited end, 3000))
      end
      run = nil
    end)

    it("rejects a bad name", function()
      run = helper.spawn_lua(BIN, { "--balance", "fastest", "x.lua" }, nil, nil, { stderr = true })
      assert.is_true(helper.wait(function() return run.exited end, 5000))
      assert.equal(2, run.code)
      assert.is_true(helper.wait(function() return #run.err_lines > 0 end, 2000))
      assert.matches("%-%-balance: expected roundrobin, leastconn or source, got 'fastest'", run.err_lines[1])
    end)

    it("source: one client address, one worker", function()
      local port = util.free_port()
      run = helper.spawn_lua(BIN, { "-w", "2", "--balance", "source", helper.fixture("sv_server"), tostring(port) })
      assert.is_true(helper.wait(function()
        local n = 0
        for _, l in ipairs(run.lines) do if l:find("ready after") then n = n + 1 end end
        return n >= 2 or run.exited
      end, 10000), "the runner's workers did not get ready:\n" .. table.concat(run.lines, "\n"))
      -- sv_server answers a line with "<pid> <version>".
      local function ask(addr)
        local c, res = uv.new_tcp(), {}
        assert(c:bind(addr, 0))
        c:connect(HOST, port, function(err)
          if err then res.err = err; c:close(); return end
          c:write("x\n")
          c:read_start(function(rerr, data)
            if rerr or not data then
              res.err = res.err or rerr or "EOF"
              if not c:is_closing() then c:close() end
              return
            end
            res.pid = res.pid or compat.tointeger(tonumber(data:match("^(%d+) ")))
            if res.pid and not c:is_closing() then c:close() end
          end)
        end)
        helper.wait(function() return (res.pid or res.err) and c:is_closing() end, 3000)
        assert(res.pid, "no answer from " .. addr .. ": " .. tostring(res.err))
        return res.pid
      end
      local first, pids = {}, {}
      for round = 1, 3 do
        for i = 2, 21 do
          local addr = "127.0.0." .. i
          local pid = ask(addr)
          if round == 1 then first[addr] = pid end
          assert.equal(first[addr], pid, addr .. " changed worker")
          pids[pid] = true
        end
      end
      local n = 0
      for _ in pairs(pids) do n = n + 1 end
      assert.equal(2, n, "20 client addresses all on one of 2 workers")
    end)
  end)
end)
