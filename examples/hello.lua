-- A plain luv HTTP hello-world server: nothing in it knows about cluster.
-- Run it in N workers sharing port 8000 with the runner:
--
--   luv-cluster -w 2 examples/hello.lua
local uv = require("luv")

local RESPONSE = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world\n"
local port = tonumber(os.getenv("PORT")) or 8000

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", port))
assert(server:listen(511, function(err)
  assert(not err, err)
  local client = uv.new_tcp()
  server:accept(client)
  local pending = ""
  client:read_start(function(rerr, data)
    if rerr or not data then return client:close() end
    pending = pending .. data
    -- Answer every complete request (keep-alive, pipelining).
    while true do
      local head_end = pending:find("\r\n\r\n", 1, true)
      if not head_end then break end
      local close = pending:sub(1, head_end):lower():find("connection: close", 1, true)
      pending = pending:sub(head_end + 4)
      if close then
        client:write(RESPONSE:gsub("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1), function() client:close() end)
        return client:read_stop()
      end
      client:write(RESPONSE)
    end
  end)
end))
uv.run()
