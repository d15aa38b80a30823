-- What send() returns when the other side does not keep up, and 'drain'.
-- The master stops its worker (SIGSTOP: a peer that reads nothing) and
-- sends 64 KiB messages until one is refused, then lets the worker run
-- again and waits for the backlog to be written. Ends by itself.
--
--   lua5.4 examples/backpressure.lua
local uv = require("luv")
local cluster = require("cluster")

if cluster.isMaster then
  -- Small limits, so the example stays small: send() returns false past
  -- 256 KiB unwritten and refuses a message past 2 MiB.
  cluster.setup({ sendHighWaterMark = 256 * 1024, maxQueueSize = 2 * 1024 * 1024 })
  local worker = cluster.fork()
  local chunk = string.rep("x", 64 * 1024)
  local queued = 0

  worker:on("online", function()
    uv.kill(worker.pid, "sigstop")
    local warned = false
    while true do
      local ok, err = worker:send(chunk)
      if err then -- not queued: the queue is full (ENOBUFS)
        print(("message %d refused: %s"):format(queued + 1, err))
        break
      end
      queued = queued + 1
      if not ok and not warned then -- queued, behind a backlog
        warned = true
        print(("send returned false at message %d: slow down until 'drain'"):format(queued))
      end
    end
    worker:once("drain", function()
      print("drain: the backlog has been written")
      worker:send({ cmd = "count" })
    end)
    uv.kill(worker.pid, "sigcont")
  end)

  worker:on("message", function(msg)
    print(("the worker received %d messages, %d were queued"):format(msg.received, queued))
    worker:disconnect()
  end)
  worker:on("exit", function(code) print("worker exited with code " .. tostring(code)) end)
  uv.run()
else
  local received = 0
  cluster.worker:on("message", function(msg)
    if type(msg) == "string" then
      received = received + 1
    elseif msg.cmd == "count" then
      cluster.worker:send({ received = received })
    end
  end)
  uv.run()
end
