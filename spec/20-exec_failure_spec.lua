-- fork() raises a clear error when the worker cannot start, and leaves
-- neither a child nor an fd behind.
local uv = require("luv")
local helper = require("helper")
local cluster = require("cluster")

local tmp

local function write_file(path, body, mode)
  local f = assert(io.open(path, "w"))
  f:write(body)
  f:close()
  if mode then assert(uv.fs_chmod(path, mode)) end
end

local function fork_error(settings)
  cluster.setup(settings)
  local before = helper.fd_count()
  local ok, err = pcall(cluster.fork)
  assert.is_false(ok, "fork should have raised")
  assert.equal(before, helper.fd_count())
  assert.same({}, helper.zombies())
  return tostring(err)
end

describe("fork() when the worker cannot start", function()
  local saved
  before_each(function()
    tmp = assert(uv.fs_mkdtemp("/tmp/luv-cluster-spec-XXXXXX"))
    saved = cluster.settings
  end)
  after_each(function()
    cluster.setup({ exec = saved.exec, lua = saved.lua, cwd = false, uid = false, gid = false })
    os.execute("rm -rf '" .. tmp .. "'")
  end)

  it("names a missing script", function()
    local err = fork_error({ exec = tmp .. "/missing.lua" })
    assert.matches("cannot open script '" .. tmp .. "/missing.lua'", err, 1, true)
    assert.matches("No such file", err, 1, true)
  end)

  it("names a script that is a directory", function()
    local err = fork_error({ exec = tmp })
    assert.matches("cannot open script", err, 1, true)
    assert.matches("directory", err, 1, true)
  end)

  it("names a missing interpreter", function()
    local err = fork_error({ exec = helper.fixture("idle"), lua = tmp .. "/no-lua" })
    assert.matches("cannot execute '" .. tmp .. "/no-lua'", err, 1, true)
  end)

  it("names an interpreter that is not executable", function()
    write_file(tmp .. "/lua", "not a program", tonumber("644", 8))
    local err = fork_error({ exec = helper.fixture("idle"), lua = tmp .. "/lua" })
    assert.matches("cannot execute", err, 1, true)
    assert.matches("Permission denied", err, 1, true)
  end)

  it("names a missing cwd", function()
    local err = fork_error({ exec = helper.fixture("idle"), cwd = tmp .. "/nowhere" })
    assert.matches("cannot change to cwd '" .. tmp .. "/nowhere'", err, 1, true)
  end)

  it("checks the script as the worker's own user", function()
    if uv.getuid() ~= 0 then
      -- Without root the worker cannot switch users: that is the error.
      local err = fork_error({ exec = helper.fixture("idle"), uid = 0 })
      assert.matches("setuid", err, 1, true)
      return
    end
    -- root can read anything; user nobody (65534) cannot read a 0600 file.
    write_file(tmp .. "/private.lua", "require('cluster')", tonumber("600", 8))
    assert(uv.fs_chmod(tmp, tonumber("755", 8)))
    local err = fork_error({ exec = tmp .. "/private.lua", uid = 65534, gid = 65534 })
    assert.matches("cannot open script", err, 1, true)
    assert.matches("Permission denied", err, 1, true)
  end)

  it("keeps working: a good fork after the failures", function()
    cluster.setup({ exec = helper.fixture("exit_code"), args = { "0" } })
    local w = cluster.fork()
    assert.is_true(helper.wait(function() return w:isDead() end))
  end)
end)
