-- Messages between a master and two workers: a greeting, a request and its
-- answer, a table that goes there and back unchanged, a file descriptor
-- passed along with a message, and a send callback. Ends by itself.
--
--   lua5.4 examples/messaging.lua        (any Lua 5.1-5.4 or LuaJIT with luv)
local uv = require("luv")
local cluster = require("cluster")

-- A table made of everything a message can hold.
local SAMPLE = {
  "array", "part", 3, -- keys 1..3
  int = 42, float = 0.25, huge = 2 ^ 60, neg = -7,
  bytes = "binary\0safe\255",
  flags = { yes = true, no = false },
  [2.5] = "a float key", [true] = "a boolean key",
  nested = { { { "three levels down" } } },
}

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

if cluster.isMaster then
  -- The file whose descriptor worker 2 will read.
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write("hello through a file descriptor")
  f:close()

  cluster:on("exit", function(worker, code, signal)
    print(("worker %d exited (code %s, signal %s)"):format(worker.id, tostring(code), tostring(signal)))
  end)

  local results = 0
  local function one_done()
    results = results + 1
    if results < 4 then return end -- 2 sums + 1 echo + 1 file
    os.remove(path)
    cluster.disconnect(function() print("all workers disconnected") end)
  end

  for _ = 1, 2 do
    local worker = cluster.fork()
    worker:on("message", function(msg)
      if msg.cmd == "hello" then
        print(("worker %d says hello from pid %d"):format(worker.id, msg.pid))
        -- The callback runs once the message is handed to the kernel.
        worker:send({ cmd = "sum", numbers = { 1, 2, 3, 4 } }, function(err)
          if err then print("send failed: " .. err) end
        end)
        if worker.id == 1 then
          worker:send({ cmd = "echo", value = SAMPLE })
        else
          -- The worker gets its own duplicate: ours can be closed at once.
          local fd = assert(uv.fs_open(path, "r", 0))
          worker:send({ cmd = "file" }, fd)
          uv.fs_close(fd)
        end
      elseif msg.cmd == "sum" then
        print(("worker %d: sum = %d"):format(worker.id, msg.sum))
        one_done()
      elseif msg.cmd == "echo" then
        local how = same(msg.value, SAMPLE) and "unchanged" or "CHANGED"
        print(("worker %d echoed the table back %s"):format(worker.id, how))
        one_done()
      elseif msg.cmd == "file" then
        print(("worker %d read from the fd: %s"):format(worker.id, msg.text))
        one_done()
      end
    end)
  end
  uv.run()
else
  local worker = cluster.worker
  worker:on("message", function(msg, fd)
    if msg.cmd == "sum" then
      local sum = 0
      for _, n in ipairs(msg.numbers) do sum = sum + n end
      worker:send({ cmd = "sum", sum = sum })
    elseif msg.cmd == "echo" then
      worker:send({ cmd = "echo", value = msg.value })
    elseif msg.cmd == "file" then
      -- An integer fd sent with a message arrives as an integer fd.
      local text = uv.fs_read(fd, 100, 0)
      uv.fs_close(fd)
      worker:send({ cmd = "file", text = text })
    end
  end)
  worker:send({ cmd = "hello", pid = worker.pid })
  uv.run()
end
