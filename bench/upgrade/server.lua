-- bench/upgrade's app, run by luv-cluster in each worker: a line server on
-- 127.0.0.1:PORT or on a unix socket PATH (an argument that is not all
-- digits). Each line read is answered with "<version>\n", the version
-- being the first line of VERSIONFILE when the worker started (each
-- runner generation gets its own, so the driver sees who answered).
--   server.lua PORT|PATH VERSIONFILE
-- Not bench/lib/server.lua: here the runner is the master, and the app is
-- a plain luv server, as a user's would be. Not spec/fixtures/sv_server.lua
-- either: the specs' needs (pid in the answer, hold file, crash version)
-- must not change what the bench measures.
local uv = require("luv")

local where, version_file = arg[1], arg[2]
local version = "v?"
local f = version_file and io.open(version_file)
if f then
  version = f:read("*l") or version
  f:close()
end
local answer = version .. "\n"

local server, new_client
if where:match("^%d+$") then
  server, new_client = uv.new_tcp(), uv.new_tcp
  assert(server:bind("127.0.0.1", tonumber(where)))
else
  server, new_client = uv.new_pipe(false), function() return uv.new_pipe(false) end
  assert(server:bind(where))
end
assert(server:listen(511, function(err)
  if err then return end
  local client = new_client()
  if not server:accept(client) then return client:close() end
  local buf = ""
  client:read_start(function(rerr, data)
    if rerr or not data then return client:close() end
    buf = buf .. data
    while buf:find("\n", 1, true) do
      buf = buf:gsub("^[^\n]*\n", "", 1)
      client:write(answer)
    end
  end)
end))
uv.run()
