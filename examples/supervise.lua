-- cluster.supervise from Lua: two workers are started; one crashes and is
-- replaced; then a rolling reload replaces both, and a graceful stop ends
-- it all. The workers serve nothing, so they say when they are ready with
-- cluster.ready(). Ends by itself.
--
--   lua5.4 examples/supervise.lua
local uv = require("luv")
local cluster = require("cluster")

if cluster.isWorker then
  cluster.worker:on("message", function(msg)
    if msg == "crash" then os.exit(3) end
  end)
  cluster.ready()
  uv.run()
  return
end

local supervise = require("cluster.supervise")

-- Every event is a table: { event =, time =, slot =, id =, pid =, ... }.
-- on_event sees every one, from the first 'spawn' (inside start) on.
local function show(ev)
  local parts = { ev.event }
  for _, k in ipairs({ "slot", "id", "reason", "code", "expected", "delay", "clean", "killed" }) do
    if ev[k] ~= nil then parts[#parts + 1] = k .. "=" .. tostring(ev[k]) end
  end
  print(table.concat(parts, " "))
end

local sv = supervise.start({
  exec = arg[0], -- this file, in its worker role
  workers = 2,
  backoff = { initial = 50 }, -- first restart after a quick death: 50 ms
  stop_timeout = 2000,
  on_event = show,
})

local crashed, reloaded = false, false
local ready = 0
sv:on("ready", function()
  ready = ready + 1
  if ready == 2 and not crashed then
    -- Both up: make the worker of slot 1 die on its own.
    crashed = true
    sv:workers()[1]:send("crash")
  elseif ready == 3 and not reloaded then
    -- The replacement is up: replace every worker, one slot at a time.
    reloaded = true
    sv:reload(function(ok, err)
      print("reload finished: " .. (ok and "ok" or err))
      sv:stop(function(clean, info)
        print(("stop finished: clean=%s, killed=%d"):format(tostring(clean), info.killed))
      end)
    end)
  end
end)

uv.run()
