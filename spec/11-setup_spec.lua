-- cluster.setup and what the settings do to a forked worker (Node's
-- test-cluster-setup-primary*, -fork-env, -cwd, -silent).
local uv = require("luv")
local helper = require("helper")
local cluster = require("cluster")
local util = dofile(helper.fixture("lc_util"))

local WORKER = helper.fixture("lc_worker")

-- True when the error message names `key` as a word of its own (not as
-- part of a longer name or of the "file.lua:line:" position).
local function names(err, key)
  local msg = tostring(err):gsub("^[^:]*:%d+: ", "")
  return msg:find("%f[%w_]" .. key .. "%f[^%w_]") ~= nil
end

describe("cluster.setup", function()
  after_each(util.cleanup)

  it("merges the given keys into the settings in force", function()
    util.setup({ exec = WORKER, args = { "a", "b" } })
    util.setup({ silent = false })
    assert.equal(WORKER, cluster.settings.exec)
    assert.same({ "a", "b" }, cluster.settings.args)
    assert.is_false(cluster.settings.silent)
    util.setup({ args = { "c" } })
    assert.equal(WORKER, cluster.settings.exec)
    assert.same({ "c" }, cluster.settings.args)
  end)

  it("raises an error naming an unknown key", function()
    local ok, err = pcall(cluster.setup, { noSuchSetting = 1 })
    assert.is_false(ok)
    assert.is_true(names(err, "noSuchSetting"), "the error does not name the key: " .. tostring(err))
  end)

  local bad = {
    exec = 42,
    args = "not a list",
    lua = 5,
    luaArgs = { 1, 2 },
    env = "FOO=bar",
    cwd = true,
    silent = "yes",
    uid = "root",
    gid = 1.5,
    maxMessageSize = "big",
  }
  for key, value in pairs(bad) do
    it("raises an error naming '" .. key .. "' when it has the wrong type", function()
      local ok, err = pcall(cluster.setup, { [key] = value })
      assert.is_false(ok)
      assert.is_true(names(err, key), "the error does not name '" .. key .. "': " .. tostring(err))
    end)
  end

  it("changes nothing when it raises", function()
    util.setup({ exec = WORKER, args = { "kept" } })
    local ok = pcall(cluster.setup, { args = { "lost" }, silent = "yes" })
    assert.is_false(ok)
    assert.same({ "kept" }, cluster.settings.args)
    assert.equal(WORKER, cluster.settings.exec)
  end)

  it("emits 'setup' on a later loop turn, so a listener added after the call sees it", function()
    util.settle()
    local seen = {}
    util.setup({ exec = WORKER, args = { "later" } })
    util.on("setup", function(s) seen[#seen + 1] = s end)
    assert.equal(0, #seen)
    assert.is_true(helper.wait(function() return #seen == 1 end, 5000))
    assert.equal(WORKER, seen[1].exec)
    assert.same({ "later" }, seen[1].args)
  end)

  it("emits 'setup' once per call, in order", function()
    util.settle()
    local seen = {}
    util.on("setup", function(s) seen[#seen + 1] = s.args[1] end)
    util.setup({ exec = WORKER, args = { "first" } })
    util.setup({ args = { "second" } })
    util.settle()
    assert.same({ "first", "second" }, seen)
  end)

  it("passes 'setup' listeners a copy of the settings", function()
    util.settle()
    local got
    util.on("setup", function(s) got = s end)
    util.setup({ exec = WORKER, args = { "orig" } })
    assert.is_true(helper.wait(function() return got ~= nil end, 5000))
    assert.are_not.equal(cluster.settings, got)
    assert.equal(cluster.settings.exec, got.exec)
    got.exec = "/changed"
    got.args[1] = "changed"
    assert.equal(WORKER, cluster.settings.exec)
    assert.same({ "orig" }, cluster.settings.args)
  end)

  it("has the aliases setupPrimary and setupMaster", function()
    util.settle()
    local seen = {}
    util.on("setup", function(s) seen[#seen + 1] = s.args[1] or false end)
    util.setup({ exec = WORKER, args = {} })
    cluster.setupPrimary({ args = { "primary" } })
    assert.same({ "primary" }, cluster.settings.args)
    cluster.setupMaster({ args = { "master" } })
    assert.same({ "master" }, cluster.settings.args)
    util.settle()
    assert.same({ false, "primary", "master" }, seen)
  end)

  it("is done implicitly by the first fork, which emits 'setup' (separate master)", function()
    -- A relative script path: the module makes arg[0] absolute, and the
    -- default exec and args are the running script's.
    local rel = "spec/fixtures/lc_master_implicit.lua"
    local run = helper.spawn_lua(rel, { "x", "y" })
    assert.is_true(helper.wait(function() return run.exited and run.eof end, 5000),
      "the master did not end")
    local abs = uv.cwd() .. "/" .. rel
    assert.same({
      "setup " .. abs .. " x,y",
      "fork",
      "worker " .. abs .. " x,y",
      "exit 0 nil",
    }, run.lines)
    assert.equal(0, run.code)
  end)
end)

describe("settings applied by cluster.fork", function()
  after_each(util.cleanup)

  local function getenv(w, wanted)
    local r = util.request(w, { cmd = "getenv", names = wanted })
    assert.is_table(r, "no reply from the worker")
    return r.values
  end

  it("fork(env) adds variables to the inherited environment", function()
    util.setup({ exec = WORKER, args = {} })
    local w = util.fork({ LC_FORK_VAR = "from fork", LC_FORK_NUM = 42 })
    assert.same({ "from fork", "42", os.getenv("PATH") },
      getenv(w, { "LC_FORK_VAR", "LC_FORK_NUM", "PATH" }))
  end)

  it("fork(env) applies to that worker only", function()
    util.setup({ exec = WORKER, args = {} })
    util.fork({ LC_ONLY_FIRST = "1" })
    local w2 = util.fork()
    assert.same({ false }, getenv(w2, { "LC_ONLY_FIRST" }))
  end)

  it("settings.env is added to every worker, fork(env) wins over it", function()
    util.setup({ exec = WORKER, args = {}, env = { LC_SET_VAR = "from settings", LC_BOTH = "settings" } })
    local w1 = util.fork({ LC_BOTH = "fork" })
    local w2 = util.fork()
    assert.same({ "from settings", "fork" }, getenv(w1, { "LC_SET_VAR", "LC_BOTH" }))
    assert.same({ "from settings", "settings" }, getenv(w2, { "LC_SET_VAR", "LC_BOTH" }))
  end)

  it("cwd sets the worker's working directory", function()
    local dir = assert(uv.fs_mkdtemp("/tmp/lc_cwd_XXXXXX"))
    finally(function() uv.fs_rmdir(dir) end)
    util.setup({ exec = WORKER, args = {}, cwd = dir })
    local w = util.fork()
    local r = util.request(w, { cmd = "cwd" })
    assert.is_table(r, "no reply from the worker")
    assert.equal(uv.fs_realpath(dir), uv.fs_realpath(r.cwd))
  end)

  it("silent=false leaves worker.process.stdout and stderr nil", function()
    util.setup({ exec = WORKER, args = {}, silent = false })
    local w = util.fork()
    assert.is_nil(w.process.stdout)
    assert.is_nil(w.process.stderr)
  end)

  it("silent=true pipes the worker's stdout and stderr to worker.process", function()
    util.setup({ exec = WORKER, args = {}, silent = true })
    local w = util.fork()
    local text = { stdout = "", stderr = "" }
    local eof = {}
    for name in pairs(text) do
      local pipe = w.process[name]
      assert.equal("pipe", uv.handle_get_type(pipe))
      pipe:read_start(function(err, data)
        if data then
          text[name] = text[name] .. data
        else
          eof[name] = true
          pipe:close()
        end
      end)
    end
    finally(function()
      for name in pairs(text) do
        local pipe = w.process[name]
        if not pipe:is_closing() then pipe:close() end
      end
    end)
    assert.is_table(util.request(w, { cmd = "print", out = "lc to stdout\n", err = "lc to stderr\n" }))
    w:disconnect()
    assert.is_true(helper.wait(function() return w:isDead() and eof.stdout and eof.stderr end, 5000))
    assert.equal("lc to stdout\n", text.stdout)
    assert.equal("lc to stderr\n", text.stderr)
  end)

  describe("maxMessageSize", function()
    it("limits what the master can send", function()
      util.setup({ exec = WORKER, args = {}, maxMessageSize = 4096 })
      local w = util.fork()
      local ok, err = pcall(w.send, w, string.rep("x", 5000))
      assert.is_false(ok)
      assert.matches("limit", tostring(err), 1, true)
      assert.is_true(w:send(string.rep("x", 1000)))
    end)

    it("limits what the worker can send, with the same value", function()
      util.setup({ exec = WORKER, args = {}, maxMessageSize = 4096 })
      local w = util.fork()
      local got = {}
      w:on("message", function(m) if type(m) == "string" then got[#got + 1] = #m end end)
      local over = util.request(w, { cmd = "trysend", size = 5000 })
      assert.is_table(over, "no reply from the worker")
      assert.is_false(over.ok)
      assert.matches("limit", over.err, 1, true)
      local under = util.request(w, { cmd = "trysend", size = 3000 })
      assert.is_table(under, "no reply from the worker")
      assert.is_true(under.ok)
      assert.same({ 3000 }, got)
    end)
  end)
end)
