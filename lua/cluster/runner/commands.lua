-- The runner's control commands: the client (luv-cluster status|reload|
-- stop|scale N|upgrade --control PATH [--json]) and what a running runner
-- answers on its control socket (cluster.control carries them).

local uv = require("luv")
local compat = require("cluster.compat")
local output = require("cluster.runner.output")
local usage_error = require("cluster.runner.options").usage_error

local commands = {}

-- Each command and how many words it takes after its name.
local COMMANDS = { status = 0, reload = 0, stop = 0, scale = 1, upgrade = 0 }

-- Whether argv is a command to a running runner (luv-cluster status ...).
function commands.is_command(argv)
  return argv[1] ~= nil and COMMANDS[argv[1]] ~= nil
end

-- Send the command in argv over the control socket and print the answer;
-- returns the exit status: 0, or 1 when the runner answered an error or
-- could not be reached.
function commands.request(argv)
  local command, words, path, as_json = argv[1], { argv[1] }, nil, false
  local j = 2
  while argv[j] do
    local a = argv[j]
    local value = a:match("^%-%-control=(.*)$")
    if a == "--control" then
      j = j + 1
      value = argv[j]
      if not value then usage_error("--control: missing value") end
    end
    if value then
      path = value
    elseif a == "--json" then
      as_json = true
    elseif a:sub(1, 1) ~= "-" and #words <= COMMANDS[command] then
      words[#words + 1] = a
    else
      usage_error(("%s: unexpected argument '%s'"):format(command, a))
    end
    j = j + 1
  end
  if #words <= COMMANDS[command] then usage_error("scale: expected the number of workers (scale N)") end
  if command == "scale" then
    local n = compat.tointeger(tonumber(words[2]))
    if not n or n < 1 then usage_error(("scale: expected an integer >= 1, got '%s'"):format(words[2])) end
  end
  if not path or path == "" then
    usage_error(command .. ": --control PATH (the runner's control socket) is required")
  end
  if as_json then words[#words + 1] = "json" end
  local status = 1
  require("cluster.control").request(path, table.concat(words, " "), function(ok, text)
    if ok then
      io.stdout:write(text)
      status = 0
    else
      io.stderr:write("luv-cluster: ", text, "\n")
    end
  end)
  uv.run()
  io.stdout:flush()
  return status
end

-- A command a running runner got (words: "status", "json"): it answers with
-- reply(ok, text[, after]). upgrade(reply) starts a hot upgrade.
function commands.handle(sv, words, reply, upgrade)
  local cmd = words[1]
  if cmd == "status" and (#words == 1 or (#words == 2 and words[2] == "json")) then
    return reply(true, output.stats_text(sv:stats(), words[2] == "json"))
  elseif cmd == "reload" and #words == 1 then
    local queued = sv:reload(function(ok, err)
      if ok then return reply(true, ("reload done (%d so far)"):format(sv.reloads)) end
      reply(false, "reload aborted: " .. tostring(err) .. "; the old workers keep serving")
    end)
    if not queued then reply(false, "stopping: no reload") end
    return
  elseif cmd == "stop" and #words == 1 then
    if sv.state ~= "running" then return reply(true, "stopping already") end
    -- Answered first: the runner exits once its workers are gone.
    return reply(true, ("stopping %d workers"):format(sv:size()), function() sv:stop() end)
  elseif cmd == "upgrade" and #words == 1 then
    return upgrade(reply)
  elseif cmd == "scale" and #words == 2 then
    local n = compat.tointeger(tonumber(words[2]))
    if not n or n < 1 then return reply(false, ("scale: expected an integer >= 1, got '%s'"):format(words[2])) end
    if sv.state ~= "running" then return reply(false, "stopping: not scaling") end
    sv:scale(n)
    if sv:size() ~= n then
      return reply(false, ("scaled to %d workers, not %d (see the runner's output)"):format(sv:size(), n))
    end
    return reply(true, ("scaling to %d workers"):format(n))
  end
  reply(false, ("unknown command '%s' (status [json], reload, stop, scale N, upgrade)")
    :format(table.concat(words, " ")))
end

return commands
