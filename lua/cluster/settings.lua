-- cluster.setup() keys: their types, defaults and validation. A bad key or
-- value raises an error that names it.

local core = require("cluster.core")
local compat = require("cluster.compat")

local settings = {}

local function is_string_list(v)
  if type(v) ~= "table" then return false end
  local n = #v
  for k, x in pairs(v) do
    if not compat.is_integer(k) or k < 1 or k > n or type(x) ~= "string" then
      return false
    end
  end
  return true
end

local function is_env(v)
  if type(v) ~= "table" then return false end
  for k, x in pairs(v) do
    if type(k) ~= "string" or k == "" or k:find("[=%z]") then return false end
    local t = type(x)
    if t ~= "string" and t ~= "number" and t ~= "boolean" then return false end
  end
  return true
end

local function is_id(v)
  return compat.is_integer(v) and v >= 0 and v <= 0x7fffffff
end

local function is_size(v)
  return compat.is_integer(v) and v > 0 and v <= 0xffffffff
end

local function is_byte_count(v)
  return compat.is_integer(v) and v >= 0 and v <= 2 ^ 53
end

local function is_queue_size(v)
  return compat.is_integer(v) and v > 0 and v <= 2 ^ 53
end

-- key -> { check, what the value must be }
local schema = {
  exec = { function(v) return type(v) == "string" and v ~= "" end, "a non-empty string" },
  args = { is_string_list, "a list of strings" },
  lua = { function(v) return type(v) == "string" and v ~= "" end, "a non-empty string" },
  luaArgs = { is_string_list, "a list of strings" },
  env = { is_env, "a table of name = string|number|boolean" },
  cwd = { function(v) return type(v) == "string" and v ~= "" end, "a non-empty string" },
  silent = { function(v) return type(v) == "boolean" end, "a boolean" },
  detached = { function(v) return type(v) == "boolean" end, "a boolean" },
  uid = { is_id, "an integer user id" },
  gid = { is_id, "an integer group id" },
  maxMessageSize = { is_size, "an integer number of bytes from 1 to 4 GiB - 1" },
  sendHighWaterMark = { is_byte_count, "an integer number of bytes, 0 or more" },
  maxQueueSize = { is_queue_size, "an integer number of bytes, 1 or more" },
  balance = { function(v) return settings.BALANCES[v] == true end, '"roundrobin", "leastconn" or "source"' },
}

settings.DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
settings.DEFAULT_SEND_HIGH_WATER_MARK = 1024 * 1024
settings.DEFAULT_MAX_QUEUE_SIZE = 256 * 1024 * 1024
-- How "rr" picks the worker for a connection (share_master.lua).
settings.BALANCES = { roundrobin = true, leastconn = true, source = true }

local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = x end
  return t
end
settings.copy = copy

-- Raises unless every key of `given` is known and has a value of its type.
-- `false` is accepted for every key: it puts the key back to its default
-- (a Lua table cannot hold nil, so this is how `cwd` or `uid` is unset).
function settings.validate(given, level)
  if type(given) ~= "table" then
    error("bad argument 'settings' (table expected, got " .. type(given) .. ")", level + 1)
  end
  for k, v in pairs(given) do
    local rule = schema[k]
    if not rule then
      error(("cluster.setup: unknown setting '%s'"):format(tostring(k)), level + 1)
    end
    if v ~= false and not rule[1](v) then
      -- A string is shown itself: "balance" = "fastest" is a wrong name,
      -- not a wrong type.
      local got = type(v) == "string" and ("%q"):format(v:sub(1, 60)) or type(v)
      error(("cluster.setup: setting '%s' must be %s (got %s)"):format(k, rule[2], got), level + 1)
    end
  end
end

-- The defaults: this interpreter running this script with its arguments.
-- `script` is the absolute path of arg[0] taken when the module loaded.
function settings.defaults(script)
  local args = {}
  for i = 1, #(arg or {}) do args[i] = arg[i] end
  return {
    exec = script,
    args = args,
    lua = core.exe_path() or "lua5.4",
    luaArgs = {},
    env = {},
    silent = false,
    detached = false,
    maxMessageSize = settings.DEFAULT_MAX_MESSAGE_SIZE,
    sendHighWaterMark = settings.DEFAULT_SEND_HIGH_WATER_MARK,
    maxQueueSize = settings.DEFAULT_MAX_QUEUE_SIZE,
    balance = "roundrobin",
  }
end

-- Test runners whose command-line script must never be a worker's: with
-- no `exec` set, a fork under them would start the whole test run again.
local TEST_RUNNERS = { busted = true }

-- The name of the test runner that the script at `path` is, or nil: its
-- file name is a runner's (`busted`, `busted.lua`), or busted is loaded and
-- `path` is its command-line launcher under another name (the file calls
-- busted.runner with standalone = false, as /usr/bin/busted does; a spec
-- file that runs itself through busted.runner is a script like any other).
function settings.test_runner(path)
  if type(path) ~= "string" then return nil end
  local name = (path:match("[^/\\]+$") or path):gsub("%.lua$", "")
  if TEST_RUNNERS[name] then return name end
  if package.loaded["busted.runner"] then
    local f = io.open(path)
    local head = f and f:read(4096)
    if f then f:close() end
    if head and head:find("busted%.runner") and head:find("standalone%s*=%s*false") then return "busted" end
  end
  return nil
end

-- `base` with `given` merged in, each table value copied; a false in
-- `given` takes the key's value from `defaults`.
function settings.merge(base, given, defaults)
  local out = {}
  for k, v in pairs(base) do out[k] = copy(v) end
  for k, v in pairs(given) do
    if v == false and k ~= "silent" and k ~= "detached" then v = defaults[k] end
    out[k] = copy(v)
  end
  return out
end

return settings
