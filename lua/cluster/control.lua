-- A unix control socket: one command line per connection, one answer.
--
--   local control = require("cluster.control")
--   control.open(path, function(words, reply) reply(true, "text") end,
--     function(server, err) ... end)
--   control.request(path, "status", function(ok, text) ... end)
--
-- The socket file is created with mode 0600 (only the runner's user, and
-- root, can connect). A leftover socket file (from a process that was
-- killed) is removed once a connect to it is refused; a live one, or a
-- path that is not a socket, is refused.
--
-- Protocol: the client sends one line (words separated by spaces, at most
-- MAX_LINE bytes); the server writes an answer and closes: "ok\n" and the
-- text, or "error: message\n".

local uv = require("luv")
local Emitter = require("cluster.emitter")

local control = {}

local MAX_LINE = 1024
-- sockaddr_un's sun_path holds 108 bytes, the terminating NUL included.
local MAX_PATH = 107

local function close(handle)
  if handle and not handle:is_closing() then handle:close() end
end

local function check_path(fname, path)
  if type(path) ~= "string" or path == "" then
    error(("cluster.control.%s: path must be a non-empty string (got %s)"):format(fname, type(path)), 3)
  end
  if #path > MAX_PATH then
    error(("cluster.control.%s: path is %d bytes, longer than a unix socket path may be (%d)")
      :format(fname, #path, MAX_PATH), 3)
  end
end

local function answer_text(ok, text)
  text = tostring(text or "")
  if ok then
    if text ~= "" and text:sub(-1) ~= "\n" then text = text .. "\n" end
    return "ok\n" .. text
  end
  return "error: " .. text:gsub("\n", " ") .. "\n"
end

-- Serve one connection: read its line, call handler(words, reply).
local function serve(client, handler)
  local buf, answered = "", false
  local function reply(ok, text, after)
    if answered then return end
    answered = true
    if client:is_closing() then return end
    client:read_stop()
    client:write(answer_text(ok, text), function()
      client:shutdown(function() close(client) end)
      if after then Emitter.call_protected("a control command", after) end
    end)
  end
  client:read_start(function(err, data)
    if answered then return end
    if err or not data then
      close(client)
      return
    end
    buf = buf .. data
    local line = buf:match("^([^\n]*)\n")
    if not line and #buf > MAX_LINE then return reply(false, "command line too long") end
    if not line then return end
    line = line:gsub("\r$", "")
    local words = {}
    for w in line:gmatch("%S+") do words[#words + 1] = w end
    local ok, e = pcall(handler, words, reply)
    if not ok then reply(false, "internal error: " .. tostring(e)) end
  end)
end

-- Bind `path` (mode 0600 before it listens) and serve it.
local function bind(path, handler, cb)
  local server = uv.new_pipe(false)
  local ok, err = server:bind(path)
  if not ok then
    close(server)
    return cb(nil, ("cannot bind control socket %s: %s"):format(path, tostring(err)))
  end
  -- Not yet listening: a connect now is refused, so nobody gets in
  -- before the mode is tightened.
  ok, err = uv.fs_chmod(path, tonumber("600", 8))
  if ok then ok, err = server:listen(16, function(lerr)
    if lerr then return end
    local client = uv.new_pipe(false)
    if server:accept(client) then serve(client, handler) else close(client) end
  end) end
  if not ok then
    close(server)
    os.remove(path)
    return cb(nil, ("cannot listen on control socket %s: %s"):format(path, tostring(err)))
  end
  local s = { path = path, handle = server }
  -- Stop serving and remove the socket file (idempotent).
  function s.close()
    if s.closed then return end
    s.closed = true
    close(server)
    os.remove(path)
  end
  cb(s)
end

-- open(path, handler, cb): cb(server) once it listens, or cb(nil, err)
-- (the path is in use by a live process, is not a socket, or cannot be
-- bound). handler(words, reply) answers each command: reply(ok, text[,
-- after]) writes the answer; after() runs once it is written.
function control.open(path, handler, cb)
  check_path("open", path)
  if type(handler) ~= "function" then error("cluster.control.open: handler must be a function", 2) end
  if type(cb) ~= "function" then error("cluster.control.open: callback must be a function", 2) end
  local stat = uv.fs_lstat(path)
  if not stat then return bind(path, handler, cb) end
  if stat.type ~= "socket" then
    return cb(nil, ("control socket path %s exists and is not a socket; not removing it"):format(path))
  end
  -- A socket file: live if something accepts a connection on it.
  local probe = uv.new_pipe(false)
  probe:connect(path, function(err)
    close(probe)
    if not err then
      return cb(nil, ("control socket %s is in use (is another runner running?)"):format(path))
    end
    if not tostring(err):match("^ECONNREFUSED") then
      return cb(nil, ("control socket %s: %s"):format(path, tostring(err)))
    end
    os.remove(path) -- left over from a process that is gone
    bind(path, handler, cb)
  end)
end

-- request(path, line, cb): send one command line, cb(ok, text) with the
-- answer (text: the answer's text, or the error message).
function control.request(path, line, cb)
  check_path("request", path)
  local c = uv.new_pipe(false)
  local buf, done = "", false
  local function finish(ok, text)
    if done then return end
    done = true
    close(c)
    cb(ok, text)
  end
  c:connect(path, function(err)
    if err then return finish(false, ("cannot connect to %s: %s"):format(path, tostring(err))) end
    c:write(line .. "\n")
    c:read_start(function(rerr, data)
      if rerr then return finish(false, ("reading from %s: %s"):format(path, tostring(rerr))) end
      if data then
        buf = buf .. data
        return
      end
      local head, rest = buf:match("^([^\n]*)\n(.*)$")
      if head == "ok" then return finish(true, rest) end
      local msg = head and head:match("^error: (.*)$")
      if msg then return finish(false, msg) end
      finish(false, ("%s closed without an answer"):format(path))
    end)
  end)
end

return control
