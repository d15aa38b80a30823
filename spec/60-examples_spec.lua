-- Every example in examples/*.lua runs, as a separate process under this
-- interpreter with this checkout's modules, and shows what its docs say it
-- shows. Each example has its own check below; an examples/*.lua without
-- one fails the first case, so a new example cannot rot unnoticed.
-- (Subdirectories of examples/ belong to their own specs; examples/*_spec.lua
-- are specs that `make test` runs.)
local helper = require("helper")
local uv = require("luv")
local compat = require("cluster.compat")

local ROOT = uv.cwd()
local BIN = ROOT .. "/bin/luv-cluster"

local function example(name)
  return ROOT .. "/examples/" .. name
end

-- Processes started by the current case, stopped by pid after it.
local running = {}

-- Runs `script` (a path) with args and env ({"K=V", ...}); the state of
-- helper.spawn_lua, stdout lines in .lines, stderr lines in .err_lines.
local function start(script, args, env)
  local state = helper.spawn_lua(script, args, nil, env, { stderr = true })
  running[#running + 1] = state
  return state
end

local function find(state, pattern)
  for i, line in ipairs(state.lines) do
    if line:find(pattern) then return line, i end
  end
end

local function count(state, pattern)
  local n = 0
  for _, line in ipairs(state.lines) do
    if line:find(pattern) then n = n + 1 end
  end
  return n
end

local function wait_line(state, pattern, timeout)
  helper.wait(function() return find(state, pattern) ~= nil or state.exited end, timeout or 5000)
  return find(state, pattern)
end

-- Exit code (nil until it exits) once the process has ended and its
-- output is all read.
local function wait_exit(state, timeout)
  helper.wait(function() return state.exited and state.eof end, timeout or 10000)
  return state.exited and state.code, state.signal
end

local function output(state)
  return "stdout:\n" .. table.concat(state.lines, "\n") .. "\nstderr:\n" .. table.concat(state.err_lines, "\n")
end

-- Asserts that every pattern matches a line of the output.
local function assert_lines(state, patterns)
  for _, pattern in ipairs(patterns) do
    assert.is_truthy(find(state, pattern), "no line matches '" .. pattern .. "'\n" .. output(state))
  end
end

local function assert_clean_exit(state, timeout)
  local code = wait_exit(state, timeout)
  assert.equal(0, code, output(state))
  assert.same({}, state.err_lines, output(state))
end

-- A port nothing listens on now.
local function free_port()
  local s = uv.new_tcp()
  assert(s:bind("127.0.0.1", 0))
  local port = s:getsockname().port
  helper.close(s)
  return compat.tointeger(port)
end

-- One HTTP request; the whole answer (the server closes), or nil and an
-- error. Connection refused is tried again until `timeout` (a server that
-- is still starting), every 20 ms: the loop waits on the answer, not on a
-- guess of the start-up time.
local function http_get(port, timeout)
  local res = {}
  local deadline = uv.now() + (timeout or 5000)
  local function attempt()
    local c = uv.new_tcp()
    c:connect("127.0.0.1", port, function(err)
      if err then
        c:close()
        if err:find("ECONNREFUSED") and uv.now() < deadline then
          local t = uv.new_timer()
          t:start(20, 0, function() t:close() attempt() end)
        else
          res.err = err
        end
        return
      end
      c:write("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
      local buf = ""
      c:read_start(function(rerr, data)
        if data then
          buf = buf .. data
          return
        end
        c:close()
        if rerr then res.err = rerr else res.answer = buf end
      end)
    end)
  end
  attempt()
  helper.wait(function() return res.answer or res.err end, (timeout or 5000) + 1000)
  return res.answer, res.err
end

local function assert_hello(port)
  local answer, err = http_get(port)
  assert.is_nil(err)
  assert.matches("^HTTP/1%.1 200 OK\r\n", answer or "")
  assert.matches("\r\n\r\nhello world\n$", answer or "")
end

-- name -> the check of examples/<name>
local CHECKS = {}

CHECKS["hello.lua"] = function()
  -- On its own: a plain luv server.
  local port = free_port()
  local state = start(example("hello.lua"), {}, { "PORT=" .. port })
  assert_hello(port)
  uv.kill(state.pid, "sigterm")
  local _, signal = wait_exit(state)
  assert.equal(15, signal, output(state))

  -- Under the runner, in two workers, stopped gracefully.
  port = free_port()
  state = start(BIN, { "-w", "2", example("hello.lua") }, { "PORT=" .. port })
  assert.is_true(helper.wait(function() return count(state, "ready after") == 2 end, 10000), output(state))
  assert_lines(state, { "^luv%-cluster: worker %d+ %(pid %d+%) listening on 127%.0%.0%.1:" .. port .. "$" })
  assert_hello(port)
  uv.kill(state.pid, "sigterm")
  assert_clean_exit(state)
  assert_lines(state, { "^luv%-cluster: stopping 2 workers %(graceful", "^luv%-cluster: stopped$" })
end

CHECKS["readme.lua"] = function()
  -- The README shows this file as it is.
  local f = assert(io.open("README.md"))
  local readme = f:read("*a")
  f:close()
  local code = assert(io.open(example("readme.lua"))):read("*a"):gsub("^%-%-[^\n]*\n", "")
  assert.is_truthy(readme:find("```lua\n" .. code .. "```", 1, true),
    "README's example differs from examples/readme.lua")
  local port = free_port()
  local state = start(example("readme.lua"), {}, { "PORT=" .. port })
  for _ = 1, 2 do
    local answer, err = http_get(port)
    assert.is_nil(err)
    assert.matches("^HTTP/1%.1 200 OK\r\n.*\r\n\r\nhi\n$", answer or "")
  end
  uv.kill(state.pid, "sigterm")
  local _, signal = wait_exit(state)
  assert.equal(15, signal, output(state))
end

CHECKS["health_app.lua"] = function()
  -- spec/44-draining_spec.lua tests its draining; here: it runs, answers
  -- its health check and stops cleanly under the runner.
  local port = free_port()
  local state = start(BIN, { "-w", "1", example("health_app.lua") }, { "PORT=" .. port, "APP_HOST_NAME=h1" })
  assert.is_true(helper.wait(function() return count(state, "ready after") == 1 end, 10000), output(state))
  local answer, err = http_get(port)
  assert.is_nil(err)
  assert.matches("^HTTP/1%.1 200 OK\r\n.*host h1 worker %d+ pid %d+ path /", answer or "")
  uv.kill(state.pid, "sigterm")
  assert_clean_exit(state)
end

CHECKS["count_requests.lua"] = function()
  local port = free_port()
  local workers = uv.available_parallelism()
  local state = start(example("count_requests.lua"), { "60" }, { "PORT=" .. port })
  assert.is_true(helper.wait(function() return count(state, "serving http://") == workers end, 10000),
    output(state))
  for _ = 1, 3 do assert_hello(port) end
  -- The master prints the count every second.
  assert.is_truthy(wait_line(state, "^numReqs =%s+3$", 5000), output(state))
  -- Ctrl-C (to the master alone here) disconnects the workers and ends it.
  uv.kill(state.pid, "sigint")
  assert_clean_exit(state)
  assert_lines(state, { "^all workers disconnected$" })
  assert.equal(workers, count(state, "^worker %d+ %(pid %d+%) ended: code 0$"), output(state))
end

CHECKS["messaging.lua"] = function()
  local state = start(example("messaging.lua"))
  assert_clean_exit(state)
  assert_lines(state, {
    "^worker 1 says hello from pid %d+$", "^worker 2 says hello from pid %d+$",
    "^worker 1: sum = 10$", "^worker 2: sum = 10$",
    "^worker 1 echoed the table back unchanged$",
    "^worker 2 read from the fd: hello through a file descriptor$",
    "^all workers disconnected$",
    "^worker 1 exited %(code 0, signal nil%)$", "^worker 2 exited %(code 0, signal nil%)$",
  })
end

CHECKS["backpressure.lua"] = function()
  local state = start(example("backpressure.lua"))
  assert_clean_exit(state)
  assert_lines(state, {
    "^send returned false at message %d+: slow down until 'drain'$",
    "^message %d+ refused: ENOBUFS: send queue full",
    "^drain: the backlog has been written$",
    "^worker exited with code 0$",
  })
  local line = find(state, "^the worker received %d+ messages, %d+ were queued$")
  assert.is_truthy(line, output(state))
  local received, queued = line:match("(%d+) messages, (%d+) were")
  assert.equal(queued, received)
  assert.is_true(tonumber(queued) > 1)
end

CHECKS["sharing.lua"] = function()
  for _, policy in ipairs({ "rr", "shared", "reuseport" }) do
    local state = start(example("sharing.lua"), { policy })
    assert_clean_exit(state)
    local ports = {}
    for _, l in ipairs(state.lines) do
      local p = l:match("^worker %d listening on 127%.0%.0%.1:(%d+) %(policy " .. policy .. "%)$")
      if p then ports[#ports + 1] = p end
    end
    assert.equal(2, #ports, output(state))
    assert.equal(ports[1], ports[2], "one port for both workers")
    assert.equal(6, count(state, "^connection %d answered by worker [12]$"), output(state))
    local one = tonumber(find(state, "^worker 1 answered %d of 6$"):match("(%d) of"))
    local two = tonumber(find(state, "^worker 2 answered %d of 6$"):match("(%d) of"))
    assert.equal(6, one + two)
    if policy == "rr" then
      -- Round robin: connections one after another alternate.
      assert.same({ 3, 3 }, { one, two }, output(state))
    end
  end
end

CHECKS["supervise.lua"] = function()
  local state = start(example("supervise.lua"))
  assert_clean_exit(state)
  assert_lines(state, {
    "^spawn slot=1 id=1 reason=start$", "^spawn slot=2 id=2 reason=start$",
    "^ready slot=1 id=1$", "^ready slot=2 id=2$",
    "^exit slot=1 id=1 code=3 expected=false$",
    "^backoff slot=1",
    "^spawn slot=1 id=3 reason=restart$",
    "^reload_start$", "^spawn slot=1 id=%d+ reason=reload$", "^spawn slot=2 id=%d+ reason=reload$",
    "^reload_done$", "^reload finished: ok$",
    "^stopping$", "^stopped clean=true killed=0$",
    "^stop finished: clean=true, killed=0$",
  })
end

describe("examples/", function()
  after_each(function()
    for _, state in ipairs(running) do
      if not state.exited then uv.kill(state.pid, "sigkill") end
      helper.wait(function() return state.exited end, 3000)
    end
    running = {}
  end)

  it("every examples/*.lua has a check in this spec", function()
    local missing = {}
    local req = assert(uv.fs_scandir(ROOT .. "/examples"))
    while true do
      local name, kind = uv.fs_scandir_next(req)
      if not name then break end
      -- examples/*_spec.lua are busted specs themselves (`make test` runs them).
      if kind == "file" and name:match("%.lua$") and not name:match("_spec%.lua$") and not CHECKS[name] then
        missing[#missing + 1] = name
      end
    end
    table.sort(missing)
    assert.same({}, missing, "examples without a check in spec/60-examples_spec.lua")
  end)

  local names = {}
  for name in pairs(CHECKS) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    it(name, CHECKS[name])
  end
end)
