-- Process titles: what `ps` shows for a worker and for the runner's
-- master instead of the interpreter's command line (which, in a worker,
-- holds the long boot chunk):
--
--   luv-cluster worker 3 app.lua [args...]
--   luv-cluster master app.lua [args...]
--
-- The script by its base name, then its arguments. The short name (`comm`,
-- what `ps -e`, top, pgrep and killall show without -f) becomes
-- "luv-cluster" for both, as nginx's master and workers are all "nginx".
-- A master that is a user's own script (cluster.fork from it) keeps its
-- own title. The C side (csrc/proctitle.c) writes over the argv area, so a
-- title never takes more room than the command line it replaces: it is
-- cut to fit.

local core = require("cluster.core")

local proctitle = {}

proctitle.NAME = "luv-cluster"

-- The title for a role ("worker" with its id, or "master"), a script path
-- and its argument list.
function proctitle.format(role, id, script, args)
  local words = { proctitle.NAME, role }
  if id then words[#words + 1] = ("%d"):format(id) end
  if script then words[#words + 1] = script:match("[^/]*$") end
  for _, a in ipairs(args or {}) do words[#words + 1] = a end
  return table.concat(words, " ")
end

-- The source of the outermost Lua chunk on the stack: once lua.c runs
-- the script, "@" .. arg[0].
local function outermost_chunk()
  local getinfo = debug and debug.getinfo
  if not getinfo then return nil end
  local source
  local level = 2
  while true do
    local info = getinfo(level, "S")
    if not info then return source end
    if info.what == "main" then source = info.source end
    level = level + 1
  end
end

-- Set the title and the short name; script and args default to the
-- running script's (arg[0], arg[1..n]). Returns true, or nil and why the
-- title was not set; never raises: a title is a courtesy.
--
-- Not before the script runs: lua.c reads the script's name from argv
-- when it loads it, after the -e and -l options (and Lua 5.1 and 5.2 make
-- `arg` only then), so a title written from those would become the name
-- of the file it loads. The outermost chunk on the stack tells: the
-- script's, or the title is left alone. The C side fails without /proc,
-- off Linux, and where argv is not where the kernel says (valgrind).
function proctitle.set(role, id, script, args)
  local running = rawget(_G, "arg")
  if type(running) ~= "table" or type(running[0]) ~= "string"
      or outermost_chunk() ~= "@" .. running[0] then
    return nil, "cluster.proctitle: the script is not running yet"
  end
  if not script then
    script, args = running[0], {}
    for i = 1, #running do args[i] = tostring(running[i]) end
  end
  core.set_comm(proctitle.NAME)
  local kept, err = core.set_proctitle(proctitle.format(role, id, script, args))
  if not kept then return nil, err end
  return true
end

return proctitle
