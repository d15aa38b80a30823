-- The cluster's internal protocol: every kind of internal message between a
-- master and its workers, in one table. For each kind: which side sends
-- it, the fields it must carry, whether a file descriptor rides with it,
-- and the function that handles it (set by the module that owns it, with
-- protocol.handle). A message from the peer is checked against the table
-- and its handler runs protected, so nothing a peer sends can raise inside
-- the loop (luv would end the process).

local core = require("cluster.core")
local compat = require("cluster.compat")

local traceback = debug.traceback
local xpcall = compat.xpcall

local protocol = {}

local is_integer = compat.is_integer
local function integer(v) return is_integer(v) end
local function string_(v) return type(v) == "string" end
local function table_(v) return type(v) == "table" end
local function server_type(v) return v == "tcp" or v == "pipe" or v == "udp" end

-- kind -> { from = the sending role, fields = { name = check },
--           fd = nil | "optional" | "required" (an integer fd),
--           request = true when the sender blocks for a "reply" }
local KINDS = {
  -- worker -> master
  online = { from = "worker" },
  ready = { from = "worker" },
  exitedAfterDisconnect = { from = "worker" },
  pong = { from = "worker" }, -- seq: whatever the master's ping carried
  serve = { from = "worker", fields = { seq = integer, type = server_type }, request = true },
  listening = { from = "worker", fields = { key = string_, address = table_ } },
  close = { from = "worker", fields = { key = string_ } },
  handback = { from = "worker", fields = { key = string_ }, fd = "required" },
  -- total: how many connections from the master (newconn) this worker has
  -- closed since it started, a running total, so a late or refused report
  -- is made good by the next. Sent only while the master asks (newconn's
  -- `count`), at most once per share_worker.REPORT_INTERVAL_MS.
  closedconns = { from = "worker", fields = { total = integer } },
  -- master -> worker
  reply = { from = "master", fields = { seq = integer }, fd = "optional" },
  disconnect = { from = "master" },
  ping = { from = "master" },
  -- count = true (balance "leastconn"): report closes with closedconns.
  newconn = { from = "master", fields = { key = string_ }, fd = "required" },
}
-- Each kind's checks as an array of { name, check }, walked with a numeric
-- loop in the hot path: fixed order, and no pairs() there (a pairs() walk
-- once called a table as the check in a LuaJIT worker under load; seen
-- once in ~10^6 dispatches, not reproduced).
for _, kind in pairs(KINDS) do
  local checks = {}
  for name, check in pairs(kind.fields or {}) do checks[#checks + 1] = { name, check } end
  table.sort(checks, function(a, b) return a[1] < b[1] end)
  kind.checks, kind.fields = checks, nil
end

local role, peer_role -- "master" / "worker", set by protocol.install

function protocol.install(my_role)
  role = my_role
  peer_role = my_role == "master" and "worker" or "master"
end

-- The handler of a kind this role receives: fn(peer, message, handle),
-- where peer is the Worker the message came from (in a worker: its own).
function protocol.handle(name, fn)
  local kind = assert(KINDS[name], name)
  assert(kind.from == peer_role, "not a kind this role receives: " .. name)
  kind.handler = fn
end

-- A message of kind `name` to send: `fields` with its act set.
function protocol.message(name, fields)
  local kind = KINDS[name]
  if not kind or kind.from ~= role then error("not a kind this role sends: " .. tostring(name), 2) end
  fields = fields or {}
  fields.act = name
  return fields
end

-- A file descriptor or luv handle that came with a message nobody takes.
function protocol.release(handle)
  if is_integer(handle) then
    core.close(handle)
  elseif handle ~= nil then
    pcall(function() if not handle:is_closing() then handle:close() end end)
  end
end

-- nil when `message` is a well-formed message of a kind the peer sends,
-- else what is wrong with it.
local function problem_with(message, handle)
  local kind = type(message) == "table" and KINDS[rawget(message, "act")]
  if not kind or kind.from ~= peer_role then return "unknown kind" end
  if handle ~= nil and (not kind.fd or not is_integer(handle)) then
    return "unexpected file descriptor"
  end
  if handle == nil and kind.fd == "required" then return "file descriptor missing" end
  local checks = kind.checks
  for i = 1, #checks do
    local name, check = checks[i][1], checks[i][2]
    if not check(rawget(message, name)) then return "bad field '" .. name .. "'" end
  end
  return nil
end

local function describe(message)
  local act = type(message) == "table" and rawget(message, "act")
  return type(act) == "string" and ("'" .. act:sub(1, 40) .. "'") or ("a " .. type(message))
end

-- Handle an internal message from the peer. Returns true, or false and an
-- error when the message breaks the protocol (the caller drops the peer);
-- its handle is closed then. A handler that fails is reported as an
-- 'error' on the peer; a request whose handler failed gets an error reply,
-- so the peer is not left waiting.
function protocol.dispatch(peer, message, handle)
  local problem = problem_with(message, handle)
  if problem then
    protocol.release(handle)
    return false, ("bad internal message from the %s (%s): %s"):format(peer_role, describe(message), problem)
  end
  local kind = KINDS[message.act]
  local handler = kind.handler
  if not handler then
    protocol.release(handle)
    return true
  end
  local ok, err = xpcall(handler, traceback, peer, message, handle)
  if not ok then
    peer:emit("error", ("internal error handling %s from the %s: %s"):format(describe(message), peer_role,
      tostring(err)))
    if kind.request then
      peer:_send_internal("reply", { seq = message.seq, errname = "EIO",
        errmsg = "the master failed to handle the request" })
    end
  end
  return true
end

-- An internal message that could not be delivered (its fd was lost, or no
-- memory for it): an 'error' on the peer. `message` is the value when it
-- could be decoded.
function protocol.dropped(peer, err)
  peer:emit("error", err)
end

-- Send a request and block (outside the loop) for its reply; see
-- Channel:request. Returns reply, fd | nil, err.
local next_seq = 0
function protocol.request(channel, name, fields, timeout_ms)
  next_seq = next_seq + 1
  local seq = next_seq
  local message = protocol.message(name, fields)
  message.seq = seq
  local function is_reply(value, internal)
    return internal and type(value) == "table" and rawget(value, "act") == "reply" and rawget(value, "seq") == seq
  end
  local reply, fd = channel:request(message, is_reply, timeout_ms)
  if reply and problem_with(reply, fd) then
    protocol.release(fd)
    return nil, "bad reply from the master"
  end
  return reply, fd
end

return protocol
