-- The runner's options: from the command line and a config file (-c
-- FILE), read by the same functions so both are checked alike, merged (the
-- command line wins) and turned into cluster.supervise's options.
--
-- A bad option raises { usage = message } (options.usage_of reads it): the
-- runner prints the message with a pointer to --help and exits 2.

local uv = require("luv")
local compat = require("cluster.compat")

local options = {}

-- Raise a usage error (also used by cluster.runner.commands).
local function usage_error(msg)
  error({ usage = msg }, 0)
end
options.usage_error = usage_error

-- The message of an error options raised, or nil for any other error.
function options.usage_of(err)
  return type(err) == "table" and err.usage or nil
end

-- A value as a message shows it: strings, numbers and booleans as they
-- are, other types (from a config file) by name.
local function shown(v)
  local t = type(v)
  if t == "string" or t == "number" or t == "boolean" then return "'" .. tostring(v) .. "'" end
  return "a " .. t
end

-- "250", "250ms", "2s", "1.5s", "1m" or a number of ms -> milliseconds
local function duration(opt, v, allow_zero)
  local ms
  if type(v) == "number" then
    if v == v and v >= 0 and v < math.huge then ms = v end
  elseif type(v) == "string" then
    local num, unit = v:match("^(%d+%.?%d*)(%a*)$")
    local scale = ({ [""] = 1, ms = 1, s = 1000, m = 60000, h = 3600000 })[unit or ""]
    ms = num and scale and tonumber(num) * scale
  end
  if not ms or (ms == 0 and not allow_zero) then
    usage_error(("%s: expected a duration such as 500ms or 2s, got %s"):format(opt, shown(v)))
  end
  return ms
end

-- "1048576", "512K", "200M", "1G" (1024-based; KB/KiB alike) or a number -> bytes
local function size(opt, v)
  local bytes
  if type(v) == "number" then
    if v == v and v > 0 and v < math.huge then bytes = v end
  elseif type(v) == "string" then
    local num, unit = v:match("^(%d+%.?%d*)(%a*)$")
    local units = { [""] = 1, b = 1, k = 2 ^ 10, m = 2 ^ 20, g = 2 ^ 30, t = 2 ^ 40 }
    unit = unit and unit:lower()
    local scale = unit and (units[unit] or units[unit:match("^(%a)i?b$") or "?"])
    bytes = num and scale and tonumber(num) * scale
  end
  if not bytes or bytes <= 0 then
    usage_error(("%s: expected a size such as 200M, 1G or a number of bytes, got %s"):format(opt, shown(v)))
  end
  return math.floor(bytes)
end

local function integer(opt, v, min)
  local n = (type(v) == "string" or type(v) == "number") and compat.tointeger(tonumber(v))
  if not n or n < min then
    usage_error(("%s: expected an integer >= %d, got %s"):format(opt, min, shown(v)))
  end
  return n
end

local function flag(opt, v)
  if type(v) ~= "boolean" then usage_error(("%s: expected true or false, got %s"):format(opt, shown(v))) end
  return v
end

-- A user or group by name or number, from /etc/passwd or /etc/group:
-- its id, and for a user the primary group's.
local function lookup(file, what, opt, name)
  if type(name) == "number" and compat.tointeger(name) then name = tostring(compat.tointeger(name)) end
  if type(name) ~= "string" or name == "" then
    usage_error(("%s: expected a %s name or id, got %s"):format(opt, what, shown(name)))
  end
  local f = io.open(file)
  if f then
    for line in f:lines() do
      local fields = {}
      for field in (line .. ":"):gmatch("([^:]*):") do fields[#fields + 1] = field end
      if fields[1] == name or (tonumber(name) and fields[3] == name) then
        f:close()
        return compat.tointeger(tonumber(fields[3])), compat.tointeger(tonumber(fields[4]))
      end
    end
    f:close()
  end
  local n = compat.tointeger(tonumber(name))
  if n and n >= 0 then return n end
  usage_error(("%s: no such %s '%s'"):format(opt, what, name))
end


-- Every option by key: its long name with - turned into _, which is also
-- its key in a config file. The command line and the config file read
-- values through the same functions (opt: how the message names the
-- option), so both are checked alike; a config file may also give
-- numbers (counts, milliseconds) and booleans (flags).
local read = {
  workers = function(opt, v) return integer(opt, v, 1) end,
  policy = function(opt, v)
    if v ~= "rr" and v ~= "shared" and v ~= "reuseport" then
      usage_error(("%s: expected rr, shared or reuseport, got %s"):format(opt, shown(v)))
    end
    return v
  end,
  balance = function(opt, v)
    if v ~= "roundrobin" and v ~= "leastconn" and v ~= "source" then
      usage_error(("%s: expected roundrobin, leastconn or source, got %s"):format(opt, shown(v)))
    end
    return v
  end,
  boot_timeout = function(opt, v) return duration(opt, v) end,
  stop_timeout = function(opt, v) return duration(opt, v, true) end,
  heartbeat_interval = function(opt, v) return duration(opt, v, true) end, -- 0: off
  heartbeat_timeout = function(opt, v) return duration(opt, v) end,
  backoff_initial = function(opt, v) return duration(opt, v, true) end,
  backoff_max = function(opt, v) return duration(opt, v, true) end,
  backoff_factor = function(opt, v)
    local f = (type(v) == "string" or type(v) == "number") and tonumber(v)
    if not f or f ~= f or f < 1 then usage_error(("%s: expected a number >= 1, got %s"):format(opt, shown(v))) end
    return f
  end,
  crash_deaths = function(opt, v) return integer(opt, v, 1) end,
  crash_window = function(opt, v) return duration(opt, v, true) end,
  user = function(opt, v)
    local uid, gid = lookup("/etc/passwd", "user", opt, v)
    return { uid = uid, gid = gid }
  end,
  group = function(opt, v) return (lookup("/etc/group", "group", opt, v)) end,
  max_memory = size,
  max_age = function(opt, v) return duration(opt, v) end,
  control = function(opt, v)
    if type(v) ~= "string" or v == "" then usage_error(("%s: expected a socket path, got %s"):format(opt, shown(v))) end
    return v
  end,
  pid_file = function(opt, v)
    if type(v) ~= "string" or v == "" then usage_error(("%s: expected a file name, got %s"):format(opt, shown(v))) end
    return v
  end,
  quiet = flag,
  json = flag,
}
-- Options without a value on the command line (true when given).
local FLAGS = { quiet = true, json = true, help = true }
-- Command-line options a config file cannot hold.
local CLI_ONLY = { help = true, config = true }
local SHORT = { ["-w"] = "workers", ["-q"] = "quiet", ["-h"] = "help", ["-c"] = "config" }

-- The key of a command-line option ("--stop-timeout" -> "stop_timeout"), or nil.
local function key_of(name)
  if SHORT[name] then return SHORT[name] end
  local long = name:match("^%-%-(%l[%l%-]*%l)$")
  local key = long and long:gsub("%-", "_")
  if key and (read[key] or CLI_ONLY[key]) then return key end
end

-- The command line's options (key -> value), the config file, the script
-- and its args; nil when --help asks for the usage text instead.
local function read_command_line(argv)
  local cli = {} -- key -> value, from the command line
  local config_file
  local script, script_args = nil, {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      i = i + 1
      break
    elseif a:sub(1, 1) ~= "-" or a == "-" then
      break
    end
    local name, value = a:match("^(%-%-[^=]+)=(.*)$")
    if not name then
      name = a
      if a:match("^%-w%d+$") then name, value = "-w", a:sub(3) end
    end
    local key = key_of(name)
    if not key then usage_error("unknown option '" .. a .. "'") end
    if not FLAGS[key] and value == nil then
      i = i + 1
      value = argv[i]
      if value == nil then usage_error(name .. ": missing value") end
    elseif FLAGS[key] and value ~= nil then
      usage_error(name .. ": takes no value")
    end
    if key == "help" then
      return nil
    elseif key == "config" then
      config_file = value
    elseif FLAGS[key] then
      cli[key] = true
    else
      cli[key] = read[key](name, value)
    end
    i = i + 1
  end
  if argv[i] then
    script = argv[i]
    for j = i + 1, #argv do script_args[#script_args + 1] = argv[j] end
  end
  return cli, config_file, script, script_args
end

-- A config file's options (key -> value, with script and args) and its
-- master function.
local function read_config(config_file)
  local file = {}
  local master_hook
  local function named(msg)
    msg = tostring(msg)
    if msg:sub(1, #config_file + 1) == config_file .. ":" then return msg end
    return config_file .. ": " .. msg
  end
  local f, err = io.open(config_file)
  if not f then usage_error("cannot open config file: " .. err) end
  f:close()
  local chunk, lerr = loadfile(config_file)
  if not chunk then usage_error(named(lerr)) end
  local ok, t = pcall(chunk)
  if not ok then usage_error(named(t)) end
  if type(t) ~= "table" then usage_error(named("expected the file to return a table, got " .. type(t))) end
  -- Keys in a fixed order, so a file with several mistakes always names the same one.
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
  for _, k in ipairs(keys) do
    local v = t[k]
    local label = config_file .. ": " .. tostring(k)
    if k == "script" then
      if type(v) ~= "string" or v == "" then
        usage_error(("%s: expected a file name, got %s"):format(label, shown(v)))
      end
      file.script = v
    elseif k == "args" then
      local list = type(v) == "table" and {} or nil
      if list then
        for ak, av in pairs(v) do
          if type(ak) ~= "number" or ak < 1 or ak > #v or (type(av) ~= "string" and type(av) ~= "number") then
            list = nil
            break
          end
          list[ak] = tostring(av)
        end
      end
      if not list then usage_error(("%s: expected a list of strings, got %s"):format(label, shown(v))) end
      file.args = list
    elseif k == "master" then
      if type(v) ~= "function" then usage_error(("%s: expected a function, got %s"):format(label, shown(v))) end
      master_hook = v
    elseif CLI_ONLY[k] then
      usage_error(("%s: '%s' is a command-line option, not valid in a config file"):format(config_file, k))
    elseif type(k) == "string" and read[k] then
      file[k] = read[k](label, v)
    else
      local hint = ""
      local fixed = type(k) == "string" and k:gsub("%-", "_")
      if fixed and fixed ~= k and read[fixed] then hint = (" (the key is %s)"):format(fixed) end
      if type(k) ~= "string" then hint = ' (every value needs a key, as in script = "app.lua")' end
      usage_error(("%s: unknown key %s%s"):format(config_file, type(k) == "string" and "'" .. k .. "'"
        or "[" .. tostring(k) .. "]", hint))
    end
  end
  return file, master_hook
end

-- parse(argv): the runner's settings, or nil when --help was asked for:
--   { opt = { key -> value } (the command line wins over the file),
--     script = absolute path, script_args = {...}, config_file = FILE or nil,
--     master = the config file's master function or nil,
--     supervise = the options for cluster.supervise.start (without exec,
--       args and on_event) }
function options.parse(argv)
  local cli, config_file, script, script_args = read_command_line(argv)
  if not cli then return nil end
  local file, master_hook = {}, nil
  if config_file then
    file, master_hook = read_config(config_file)
    -- The script (and its args) from the command line win over the file's;
    -- the file's script is relative to the file's directory.
    if not script and file.script then
      script, script_args = file.script, file.args or {}
      if script:sub(1, 1) ~= "/" then
        local dir = config_file:match("^(.*)/[^/]*$")
        if dir == "" then dir = "/"
        elseif not dir or dir == "." then dir = uv.cwd()
        elseif dir:sub(1, 1) ~= "/" then dir = uv.cwd() .. "/" .. dir end
        script = dir .. "/" .. script
      end
    end
  end
  if not script then
    local where = config_file and (" (on the command line or as script in " .. config_file .. ")") or ""
    usage_error("no script given" .. where)
  end

  local opt = {}
  for k, v in pairs(file) do if read[k] then opt[k] = v end end
  for k, v in pairs(cli) do opt[k] = v end

  local o = {
    workers = opt.workers, policy = opt.policy, balance = opt.balance,
    boot_timeout = opt.boot_timeout, stop_timeout = opt.stop_timeout,
    backoff = { initial = opt.backoff_initial, factor = opt.backoff_factor, max = opt.backoff_max },
    crash = { deaths = opt.crash_deaths, window = opt.crash_window },
    heartbeat = { interval = opt.heartbeat_interval, timeout = opt.heartbeat_timeout },
    max_memory = opt.max_memory, max_age = opt.max_age,
  }
  if opt.heartbeat_interval == 0 then o.heartbeat = false end
  if opt.user then
    o.uid = opt.user.uid
    if opt.user.gid and not opt.group then o.gid = opt.user.gid end
  end
  if opt.group then o.gid = opt.group end

  if script:sub(1, 1) ~= "/" then script = uv.cwd() .. "/" .. script end
  local f, err = io.open(script)
  if not f then usage_error("cannot open script: " .. err) end
  f:close()
  return { opt = opt, script = script, script_args = script_args, config_file = config_file,
    master = master_hook, supervise = o }
end

return options
