-- The runner's output: one line per supervisor event on stdout (text, or
-- JSON with --json); with --quiet only alerts, on stderr. And the stats
-- table (SIGUSR1, the control socket's status).

local compat = require("cluster.compat")

local output = {}

local PROG = "luv-cluster"

local function json_encode(v)
  local t = type(v)
  if t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      local named = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
      return named[c] or ("\\u%04x"):format(c:byte())
    end) .. '"'
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if compat.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2 ^ 53 then
      return tostring(compat.tointeger(v))
    end
    return tostring(v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    if #v > 0 or next(v) == nil and getmetatable(v) == "array" then
      local parts = {}
      for k = 1, #v do parts[k] = json_encode(v[k]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys, function(a, b)
      if a == "event" then return b ~= "event" end
      if b == "event" then return false end
      return a < b
    end)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = json_encode(k) .. ":" .. json_encode(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return "null"
end

local function out(line)
  io.stdout:write(line, "\n")
  io.stdout:flush()
end

local function who(ev)
  return ("worker %d (pid %d)"):format(ev.id, ev.pid)
end

local function mib(bytes)
  return ("%.1fM"):format(bytes / 1048576)
end

local function ms(v)
  return ("%d ms"):format(math.floor(v + 0.5))
end

local describe = {
  spawn = function(ev)
    local how = ({ restart = "restarted", reload = "started (reload)", scale = "started (scale up)",
      recycle = "started (recycle)" })[ev.reason]
    return ("%s %s in slot %d"):format(who(ev), how or "started", ev.slot)
  end,
  spawn_error = function(ev) return ("slot %d: cannot start a worker: %s"):format(ev.slot, ev.error) end,
  online = function(ev) return who(ev) .. " online" end,
  listening = function(ev) return ("%s listening on %s"):format(who(ev), ev.address) end,
  ready = function(ev) return ("%s ready after %s"):format(who(ev), ms(ev.ms)) end,
  exit = function(ev)
    local how = ev.signal and ("killed by " .. ev.signal) or ("exited with code " .. tostring(ev.code))
    local why = ev.reason and (", " .. ev.reason) or (ev.expected and "" or ", unexpected")
    return ("%s %s after %s%s"):format(who(ev), how, ms(ev.uptime), why)
  end,
  backoff = function(ev)
    return ("slot %d: restarting in %s (%d quick deaths in a row)"):format(ev.slot, ms(ev.delay), ev.deaths)
  end,
  errored = function(ev)
    return ("slot %d errored: %d quick deaths in a row, not restarting it (SIGHUP retries)"):format(ev.slot, ev.deaths)
  end,
  all_errored = function() return "every worker slot errored: giving up" end,
  boot_timeout = function(ev) return ("%s not ready after %s: killing it"):format(who(ev), ms(ev.ms)) end,
  hang = function(ev) return ("%s answered no heartbeat for %s: killing it"):format(who(ev), ms(ev.silent)) end,
  draining = function(ev) return ("%s draining (%s)"):format(who(ev), ev.reason) end,
  kill = function(ev) return ("%s still running: %s (%s)"):format(who(ev), ev.signal, ev.reason) end,
  reload_request = function(ev) return ev.queued and "reload requested: queued after the running one" or nil end,
  reload_start = function(ev) return ("reloading %d workers"):format(ev.workers) end,
  reload_done = function(ev) return ("reload done (%d so far)"):format(ev.reloads) end,
  reload_abort = function(ev)
    return ("reload aborted%s: %s; the old workers keep serving"):format(
      ev.slot and (" at slot " .. ev.slot) or "", tostring(ev.error))
  end,
  stopping = function(ev)
    if ev.graceful then return ("stopping %d workers (graceful, up to %s)"):format(ev.workers, ms(ev.timeout)) end
    return ("stopping %d workers at once"):format(ev.workers)
  end,
  stopped = function(ev)
    return ev.clean and "stopped" or ("stopped (%d workers killed)"):format(ev.killed)
  end,
  recycle = function(ev)
    if ev.reason == "memory" then
      return ("%s uses %s, over --max-memory %s: replacing it"):format(who(ev), mib(ev.rss), mib(ev.limit))
    elseif ev.reason == "age" then
      return ("%s is %.2fs old, past its max age of %.2fs: replacing it"):format(
        who(ev), ev.age / 1000, ev.limit / 1000)
    end
    return ("%s: replacing it (%s)"):format(who(ev), tostring(ev.reason))
  end,
  recycle_abort = function(ev)
    return ("replacing %s failed: %s; it keeps serving"):format(who(ev), tostring(ev.error))
  end,
  scale = function(ev) return ("scaling to %d workers"):format(ev.workers) end,
  scale_refused = function(ev) return ("not adding a worker: %s"):format(ev.error) end,
  upgrade_start = function(ev)
    return ("upgrade: new runner (pid %d) started with %d listening sockets"):format(ev.pid, ev.sockets)
  end,
  upgrade_done = function(ev)
    return ("upgrade: the new runner (pid %d) is ready; this one stops"):format(ev.pid)
  end,
  upgrade_failed = function(ev) return ("upgrade failed: %s; this runner keeps serving"):format(ev.error) end,
  worker_error = function(ev) return ("%s error: %s"):format(who(ev), ev.error) end,
}

local ALERTS = { scale_refused = true, spawn_error = true, errored = true, all_errored = true,
  reload_abort = true, hang = true, recycle_abort = true, upgrade_failed = true,
  boot_timeout = true }

-- The stats table as text (as_json: one JSON line).
function output.stats_text(rows, as_json)
  if as_json then
    return json_encode({ event = "stats", workers = setmetatable(rows, { __metatable = "array" }) })
  end
  local lines = { ("%-5s %-5s %-8s %-9s %-8s %-9s %-10s %-9s"):format(
    "slot", "id", "pid", "state", "age", "restarts", "heartbeat", "rss") }
  for _, r in ipairs(rows) do
    lines[#lines + 1] = ("%-5s %-5s %-8s %-9s %-8s %-9s %-10s %-9s"):format(
      r.slot, r.id or "-", r.pid or "-", r.state,
      r.age and ("%.1fs"):format(r.age / 1000) or "-", r.restarts,
      r.last_heartbeat and ms(r.last_heartbeat) .. " ago" or "-",
      r.rss and ("%.1fM"):format(r.rss / 1048576) or "-")
  end
  return table.concat(lines, "\n")
end

-- printer(quiet, json): a function(ev) that prints an event as the
-- options ask.
function output.printer(quiet, json)
  return function(ev)
    if json then
      if not quiet then
        out(json_encode(ev))
      elseif ALERTS[ev.event] then
        io.stderr:write(json_encode(ev), "\n") -- --quiet: alerts still reach stderr
      end
      return
    end
    local f = describe[ev.event]
    local line = f and f(ev)
    if not line then return end
    if quiet then
      if ALERTS[ev.event] then io.stderr:write(PROG, ": ", line, "\n") end
    else
      out(PROG .. ": " .. line)
    end
  end
end

-- The stats table on stdout.
function output.print_stats(rows, json)
  out(output.stats_text(rows, json))
end

return output
