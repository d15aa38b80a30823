-- fork() with no exec under a test runner (issue 9): the default exec is
-- the running script, which here is busted itself; a worker would run the
-- whole test suite again. fork() refuses with an error that says what to
-- set, and an explicit exec always wins.
local uv = require("luv")
local helper = require("helper")
local cluster = require("cluster")
local settings = require("cluster.settings")
local util = dofile(helper.fixture("lc_util"))

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

describe("cluster.fork under a test runner", function()
  after_each(util.cleanup)

  it("raises a clear error when exec is not set: the running script is busted", function()
    -- This spec runs under busted: arg[0] is its launcher (/usr/bin/busted).
    assert.equal("busted", settings.test_runner(arg[0]))
    util.setup({ exec = false }) -- back to the default: the running script
    local before = 0
    for _ in pairs(cluster.workers) do before = before + 1 end
    local ok, err = pcall(function() cluster.fork() end)
    assert.is_false(ok)
    err = tostring(err)
    assert.matches("cluster.fork: the running script is busted (" .. arg[0], err, 1, true)
    assert.matches("a test runner: a worker would run the test suite again", err, 1, true)
    assert.matches('cluster.setup{ exec = "worker.lua" }', err, 1, true)
    assert.matches("cluster.testing.spawn", err, 1, true)
    -- The error points at the caller, not at the module.
    assert.matches("16%-fork_test_runner_spec%.lua:%d+:", err)
    local after = 0
    for _ in pairs(cluster.workers) do after = after + 1 end
    assert.equal(before, after)
    assert.same({}, helper.zombies())
  end)

  it("forks when exec is set, and refuses again once exec is put back to its default", function()
    util.setup({ exec = helper.fixture("idle") })
    local w = util.fork()
    assert.is_true(util.online(w), "the worker did not come online")
    w:kill("SIGKILL")
    assert.is_true(util.dead(w))
    util.setup({ exec = false })
    assert.has_error(function() cluster.fork() end)
  end)

  it("recognizes busted by its file name, or by its launcher's contents when renamed", function()
    assert.equal("busted", settings.test_runner("/usr/bin/busted"))
    assert.equal("busted", settings.test_runner("/home/u/.luarocks/lib/luarocks/rocks-5.4/busted/2.1.1-1/bin/busted"))
    assert.equal("busted", settings.test_runner("busted.lua"))
    assert.is_nil(settings.test_runner("/srv/app/server.lua"))
    assert.is_nil(settings.test_runner("/srv/app/busted_helpers.lua"))
    assert.is_nil(settings.test_runner(nil))
    local dir = assert(uv.fs_mkdtemp("/tmp/luv-cluster-runner-guard-XXXXXX"))
    finally(function() os.execute("rm -rf '" .. dir .. "'") end)
    -- A copy of busted's launcher under another name (busted.runner is
    -- loaded: this spec runs under busted).
    write(dir .. "/run-tests", "#!/usr/bin/env lua\nrequire 'busted.runner'({ standalone = false })\n")
    assert.equal("busted", settings.test_runner(dir .. "/run-tests"))
    -- A spec file that runs itself through busted.runner is a script like
    -- any other: its own worker code may run when it is forked.
    write(dir .. "/self_spec.lua", "require 'busted.runner'()\ndescribe('x', function() end)\n")
    assert.is_nil(settings.test_runner(dir .. "/self_spec.lua"))
  end)
end)
