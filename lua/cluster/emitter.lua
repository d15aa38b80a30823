-- The event emitter behind both `cluster` and every Worker.
--
-- Listener lists are copied on change, never on emit, so `emit` allocates
-- nothing and a listener may add or remove listeners while it runs. A
-- listener that raises is reported on stderr with its traceback and the
-- other listeners still run: the cluster's own bookkeeping is done before
-- events are emitted, so an error here cannot leave it half updated.

local Emitter = {}
Emitter.__index = Emitter

local compat = require("cluster.compat")
local xpcall = compat.xpcall

local traceback = debug.traceback

local function report(name, err)
  io.stderr:write(("cluster: error in %s: %s\n"):format(name, tostring(err)))
end

local function report_unhandled(err)
  io.stderr:write(("cluster: 'error' event with no listener: %s\n"):format(tostring(err)))
end

local function check_listener(fn)
  if type(fn) ~= "function" then
    error("bad argument 'listener' (function expected, got " .. type(fn) .. ")", 3)
  end
end

local function check_name(name)
  if type(name) ~= "string" then
    error("bad argument 'name' (string expected, got " .. type(name) .. ")", 3)
  end
end

-- Make `obj` an emitter (or a new table when obj is nil).
function Emitter.new(obj)
  obj = obj or {}
  rawset(obj, "_events", {})
  return obj
end

function Emitter:on(name, fn)
  check_name(name)
  check_listener(fn)
  local old = self._events[name]
  local list = { fn }
  if old then
    list = compat.move(old, 1, #old, 1, {})
    list[#list + 1] = fn
  end
  self._events[name] = list
  return self
end

-- once-wrappers remember the listener they wrap, so `off(name, fn)` finds them.
local wrapped = setmetatable({}, { __mode = "k" })

function Emitter:once(name, fn)
  check_name(name)
  check_listener(fn)
  local function once(...)
    self:off(name, fn)
    return fn(...)
  end
  wrapped[once] = fn
  return self:on(name, once)
end

function Emitter:off(name, fn)
  check_name(name)
  local old = self._events[name]
  if not old then return self end
  local list = {}
  local removed = false
  for i = 1, #old do
    local l = old[i]
    if not removed and (l == fn or wrapped[l] == fn) then
      removed = true
    else
      list[#list + 1] = l
    end
  end
  self._events[name] = #list > 0 and list or nil
  return self
end

-- For the roles' 'message' dispatch, which unrolls emit: with one Lua call
-- less per message it delivers about a tenth more messages a second.
function Emitter.report_listener_error(name, err)
  report("a '" .. name .. "' listener", err)
end

-- Call a user callback (a send callback, say) the way listeners are
-- called: an error is reported, never raised into the loop (luv would end
-- the process).
function Emitter.call_protected(what, fn, ...)
  local ok, err = xpcall(fn, traceback, ...)
  if not ok then report(what, err) end
end

function Emitter:listenerCount(name)
  local list = self._events[name]
  return list and #list or 0
end

-- Calls every listener of `name`; true when there was one. An 'error' with
-- no listener is written to stderr rather than raised.
function Emitter:emit(name, ...)
  local list = self._events[name]
  if not list then
    if name == "error" then report_unhandled((...)) end
    return false
  end
  for i = 1, #list do
    local ok, err = xpcall(list[i], traceback, ...)
    if not ok then report("a '" .. name .. "' listener", err) end
  end
  return true
end

-- A warning about how the process is set up (not an error of a peer): a
-- 'warning' event, or stderr when nothing listens.
function Emitter:warn(message)
  if not self:emit("warning", message) then io.stderr:write("cluster: warning: ", message, "\n") end
end

return Emitter
