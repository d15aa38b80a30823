-- The two rockspecs: luv-cluster-scm-1 (installed from a checkout with
-- `luarocks make`) and the versioned one that `make rock` packs. They
-- must not drift apart, and together with the tree: every Lua module and
-- C source here is installed, and nothing that is not here is named.
-- (Installing the packed rock is .ci/rock-check.)
local uv = require("luv")

local root = uv.cwd()

-- A rockspec's globals, as LuaRocks reads them.
local function load_rockspec(path)
  local env = {}
  local chunk, err
  local setfenv = rawget(_G, "setfenv")
  if setfenv then -- 5.1, LuaJIT
    chunk, err = loadfile(path)
    if chunk then setfenv(chunk, env) end
  else
    chunk, err = loadfile(path, "t", env)
  end
  assert(chunk, err)
  chunk()
  return env
end

-- Files under dir (and its subdirectories) whose names end in suffix.
local function files(dir, suffix, found)
  local top = found == nil
  found = found or {}
  local req = assert(uv.fs_scandir(root .. "/" .. dir))
  while true do
    local name, kind = uv.fs_scandir_next(req)
    if not name then break end
    if kind == "directory" then
      files(dir .. "/" .. name, suffix, found)
    elseif name:sub(-#suffix) == suffix then
      found[#found + 1] = dir .. "/" .. name
    end
  end
  if top then table.sort(found) end
  return found
end

local function exists(path)
  return uv.fs_stat(root .. "/" .. path) ~= nil
end

local versioned_path = files(".", ".rockspec")
for i = #versioned_path, 1, -1 do
  if not versioned_path[i]:match("^%./luv%-cluster%-%d[^/]*%-%d+%.rockspec$") then table.remove(versioned_path, i) end
end

describe("rockspecs", function()
  local scm = load_rockspec(root .. "/luv-cluster-scm-1.rockspec")

  it("there is one versioned rockspec, named for its package and version", function()
    assert.equal(1, #versioned_path, "versioned rockspecs: " .. table.concat(versioned_path, ", "))
    local spec = load_rockspec(root .. "/" .. versioned_path[1])
    assert.equal("./" .. spec.package .. "-" .. spec.version .. ".rockspec", versioned_path[1])
    assert.equal("luv-cluster", spec.package)
    assert.equal("scm-1", scm.version)
  end)

  it("the versioned one names the tarball `make rock` packs beside it", function()
    local spec = load_rockspec(root .. "/" .. versioned_path[1])
    local v = spec.version:match("^(.*)%-%d+$")
    assert.same({ url = "luv-cluster-" .. v .. ".tar.gz", dir = "luv-cluster-" .. v }, spec.source)
  end)

  it("agree on everything but version and source", function()
    local spec = load_rockspec(root .. "/" .. versioned_path[1])
    local a, b = {}, {}
    for k, v in pairs(scm) do if k ~= "version" and k ~= "source" then a[k] = v end end
    for k, v in pairs(spec) do if k ~= "version" and k ~= "source" then b[k] = v end end
    assert.same(a, b)
  end)

  it("install every module in lua/cluster/ and build every C file in csrc/, and name nothing else", function()
    local modules = scm.build.modules
    local want = {}
    for _, path in ipairs(files("lua/cluster", ".lua")) do
      local name = path:match("^lua/(.+)%.lua$"):gsub("/", ".")
      want[name == "cluster.init" and "cluster" or name] = path
    end
    local got = {}
    for name, path in pairs(modules) do
      if name ~= "cluster.core" then got[name] = path end
    end
    assert.same(want, got)

    local sources = {}
    for _, s in ipairs(modules["cluster.core"].sources) do sources[#sources + 1] = s end
    table.sort(sources)
    assert.same(files("csrc", ".c"), sources)

    for name, path in pairs(scm.build.install.bin) do
      assert.is_true(exists(path), name .. ": " .. path)
    end
    assert.equal("bin/luv-cluster", scm.build.install.bin["luv-cluster"])
  end)

  it("need Lua 5.1 to 5.4 and luv, which rocks-provided.lua declares provided", function()
    assert.same({ "lua >= 5.1, < 5.5", "luv" }, scm.dependencies)
    local config = load_rockspec(root .. "/rocks-provided.lua")
    assert.is_string(config.rocks_provided.luv)
  end)
end)
