-- What differs between Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT 2.1, in one
-- place: the rest of the Lua layer calls these instead of the 5.3+ library
-- (math.type, math.tointeger, table.move, table.unpack, xpcall's extra
-- arguments) and never uses 5.3+ syntax. Also the module search paths a
-- process this one starts is given (the variables differ by version).
--
-- Numbers: before 5.3 every number is a double. There an "integer" is a
-- number with an integral value within +-2^53 (-0.0 excepted), the same
-- rule the C core's compat.h uses and the codec sends with its integer
-- tag.

local uv = require("luv")

local compat = {}

-- True where numbers have an integer subtype (5.3+).
compat.integers = math.type ~= nil

local MAX_EXACT = 2 ^ 53

if compat.integers then
  local math_type, math_tointeger = math.type, math.tointeger

  function compat.is_integer(v)
    return math_type(v) == "integer"
  end

  -- v as an integer, or nil (a float with an integral value converts).
  function compat.tointeger(v)
    if type(v) ~= "number" then return nil end
    return math_tointeger(v)
  end

  -- "integer", "float" or nil, as math.type.
  compat.type = math_type
else
  local floor = math.floor

  local function is_integer(v)
    return type(v) == "number" and v == floor(v) and v >= -MAX_EXACT and v <= MAX_EXACT
      and not (v == 0 and 1 / v < 0)
  end
  compat.is_integer = is_integer

  function compat.tointeger(v)
    if type(v) == "number" and v == floor(v) and v >= -MAX_EXACT and v <= MAX_EXACT then
      return v + 0.0 -- -0.0 becomes 0
    end
    return nil
  end

  function compat.type(v)
    if type(v) ~= "number" then return nil end
    return is_integer(v) and "integer" or "float"
  end
end

compat.unpack = table.unpack or unpack

function compat.pack(...)
  return { n = select("#", ...), ... }
end

-- compat.move(a, f, e, t, b): 5.3+ and LuaJIT have it.
compat.move = table.move or function(a, f, e, t, b)
  b = b or a
  if e >= f then
    if t > f or t > e or a ~= b then
      for i = 0, e - f do b[t + i] = a[f + i] end
    else
      for i = e - f, 0, -1 do b[t + i] = a[f + i] end
    end
  end
  return b
end

-- xpcall(f, handler, ...): PUC 5.1's xpcall passes no arguments to f.
if select(2, xpcall(function(x) return x end, debug.traceback, true)) then
  compat.xpcall = xpcall
else
  local unpack = compat.unpack
  function compat.xpcall(f, handler, ...)
    local n, args = select("#", ...), { ... }
    return xpcall(function() return f(unpack(args, 1, n)) end, handler)
  end
end

-- The environment variables this interpreter reads its module paths from
-- (5.2+ prefer LUA_PATH_5_x; 5.1 and LuaJIT read only LUA_PATH).
local version = _VERSION:match("%d+%.%d+")
if version == "5.1" then
  compat.path_var, compat.cpath_var = "LUA_PATH", "LUA_CPATH"
else
  local suffix = "_" .. version:gsub("%.", "_")
  compat.path_var, compat.cpath_var = "LUA_PATH" .. suffix, "LUA_CPATH" .. suffix
end

-- A module search path (package.path or package.cpath) with its relative
-- entries made absolute, for a child process that may run in another cwd
-- (a worker, a process cluster.testing starts).
function compat.absolute_paths(path)
  local cwd = uv.cwd()
  return (path:gsub("[^;]+", function(p)
    if p:sub(1, 1) ~= "/" then return cwd .. "/" .. p end
  end))
end

-- The name of this interpreter's build directory (build/<name>/): lua5.1
-- .. lua5.4 or luajit.
compat.build_name = rawget(_G, "jit") and "luajit" or ("lua" .. version)

return compat
