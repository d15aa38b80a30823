# luv-cluster. `make` builds the C core into build/<lua>/; `make check` is
# the whole test suite (README's test command); `make demo` runs the
# example server.
#
# LUA picks the interpreter (lua5.1 .. lua5.4, luajit; default lua5.4):
# `make test LUA=luajit` builds the core for it and runs the specs under
# it. Each interpreter has its own build directory, named by what the
# interpreter says it is (lua5.1 .. lua5.4, luajit), so builds for
# different versions sit side by side: build/lua5.4/cluster/core.so,
# build/luajit/cluster/core.so. LUA_INC follows LUA unless given.

LUA        ?= lua5.4
LUA_NAME   := $(or $(shell $(LUA) -e 'print(jit and "luajit" or "lua" .. _VERSION:match("%d+%.%d+"))' 2>/dev/null),$(notdir $(LUA)))
LUA_INC    ?= $(if $(filter luajit%,$(LUA_NAME)),/usr/include/luajit-2.1,/usr/include/$(LUA_NAME))
LUA_LIB    ?= $(if $(filter luajit%,$(LUA_NAME)),luajit-5.1,$(LUA_NAME))
BUILD       = build/$(LUA_NAME)
ASAN_BUILD  = build/$(LUA_NAME)-asan
CC         ?= cc
CFLAGS     ?= -O2 -g
WARN        = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CORE_FLAGS  = -std=gnu11 -fPIC -fvisibility=hidden -I$(LUA_INC) $(WARN)
SRCS        = $(wildcard csrc/*.c)
HDRS        = $(wildcard csrc/*.h)
BUSTED      = busted --lua=$(LUA)
# The specs, and the example specs (examples/*_spec.lua), run alike.
SPECS       = spec examples
FUZZ_SECONDS ?= 30
# Modules from this checkout, for scripts run outside busted. Both names:
# 5.2+ read LUA_PATH_5_x first, 5.1 and LuaJIT only LUA_PATH.
LUA_ENV_SUFFIX = $(if $(filter lua5.%,$(LUA_NAME)),_$(subst .,_,$(LUA_NAME:lua%=%)))
LUA_ENV     = LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$(BUILD)/?.so;;" \
              $(if $(LUA_ENV_SUFFIX),LUA_PATH$(LUA_ENV_SUFFIX)="lua/?.lua;lua/?/init.lua;;" \
              LUA_CPATH$(LUA_ENV_SUFFIX)="$(BUILD)/?.so;;")

# Debian packages: what building and installing the rock needs, and what
# the whole suite adds (every supported interpreter and its headers,
# busted, clang's libFuzzer, valgrind; git for `make rock`'s file list).
RUN_PKGS  = lua5.4 liblua5.4-dev lua-luv luarocks gcc libc6-dev make
TEST_PKGS = $(RUN_PKGS) lua5.1 liblua5.1-0-dev lua5.2 liblua5.2-dev lua5.3 liblua5.3-dev \
            luajit libluajit-5.1-dev lua-busted lua-check clang libclang-rt-14-dev valgrind git \
            haproxy iproute2

.PHONY: all build peer-build lint test test-sigchld test-hosts asan valgrind fuzz check deps-run deps-test demo \
        install rock bench bench-http bench-balance bench-upgrade clean

all: build
build: $(BUILD)/cluster/core.so

$(BUILD)/cluster/core.so: $(SRCS) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(CORE_FLAGS) -shared -o $@ $(SRCS)

# Sanitized copy of the core, loaded by an uninstrumented interpreter
# through LD_PRELOAD of the ASan runtime (workers inherit it through the env).
$(ASAN_BUILD)/cluster/core.so: $(SRCS) $(HDRS)
	@mkdir -p $(@D)
	gcc -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
	    -fno-sanitize-recover=undefined $(CORE_FLAGS) -shared -o $@ $(SRCS)

# spec/15-mixed_versions runs a worker under another interpreter (LuaJIT
# for a 5.3+ master, 5.4 otherwise): its core is built too.
PEER_LUA = $(if $(filter lua5.3 lua5.4,$(LUA_NAME)),luajit,lua5.4)
peer-build:
	@$(MAKE) --no-print-directory build LUA=$(PEER_LUA) CFLAGS="$(CFLAGS)"

# luacheck over the Lua code, the runner, specs, examples and deploy scripts (.luacheckrc).
lint:
	luacheck --no-color -q lua bin/luv-cluster spec examples deploy

test: build peer-build
	$(BUSTED) --cpath="$(BUILD)/?.so" $(SPECS)

# The same specs with the SIGCHLD reaping path that kernels without pidfds
# (and valgrind) take.
test-sigchld: build peer-build
	LUA_CLUSTER_REAP=sigchld $(BUSTED) --cpath="$(BUILD)/?.so" $(SPECS)

# Three runner "hosts" (network namespaces) behind HAProxy under load,
# through rolling reloads, rolling restarts and a killed host
# (deploy/test-hosts.sh; root; about 15 s).
test-hosts: build
	$(call apt_install,haproxy iproute2)
	LUA=$(LUA) deploy/test-hosts.sh

asan: $(ASAN_BUILD)/cluster/core.so peer-build
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libubsan.so) \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	$(BUSTED) --cpath="$(ASAN_BUILD)/?.so" $(SPECS)

FUZZ_COMMON = csrc/codec.c csrc/frame.c csrc/buffer.c
# The harnesses link the interpreter's own library (lua5.1 and LuaJIT
# run the decoder's every-number-is-a-double path).
$(BUILD)/fuzz_%: fuzz/fuzz_%.c $(FUZZ_COMMON) $(HDRS)
	@mkdir -p $(@D)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -I$(LUA_INC) -Icsrc \
	    -o $@ $< $(FUZZ_COMMON) -l$(LUA_LIB)

fuzz: $(BUILD)/fuzz_decode $(BUILD)/fuzz_frame
	@mkdir -p $(BUILD)/corpus/decode $(BUILD)/corpus/frame
	$(BUILD)/fuzz_decode -max_total_time=$(FUZZ_SECONDS) -max_len=4096 $(BUILD)/corpus/decode fuzz/seeds/decode
	$(BUILD)/fuzz_frame -max_total_time=$(FUZZ_SECONDS) -max_len=4096 $(BUILD)/corpus/frame fuzz/seeds/frame

# Install the Debian packages of a list that are missing (root and apt).
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p 2>/dev/null | grep -q '^Status: install ok' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi
endef

deps-run:
	$(call apt_install,$(RUN_PKGS))

deps-test:
	$(call apt_install,$(TEST_PKGS))

check: deps-test
	./.ci/suite

# luv comes from Debian's lua-luv, which luarocks does not see as a rock:
# rocks-provided.lua declares it, so nothing is downloaded. The rock goes
# to the tree of LUA's version; LuaJIT uses the 5.1 tree (it loads modules
# built for 5.1). luarocks' builtin build leaves its objects in the tree:
# remove them.
ROCKS_LUA_VERSION = $(if $(filter luajit%,$(LUA_NAME)),5.1,$(LUA_NAME:lua%=%))
install:
	LUAROCKS_CONFIG=$(CURDIR)/rocks-provided.lua luarocks --lua-version $(ROCKS_LUA_VERSION) make luv-cluster-scm-1.rockspec
	rm -f csrc/*.o cluster/core.so && (rmdir cluster 2>/dev/null || true)

# A source rock that installs offline: build/luv-cluster-<v>-<r>.src.rock,
# the versioned rockspec and the source tarball it names beside it
# (luv-cluster-<v>.tar.gz: the checkout's tracked files as they are in the
# working tree, under luv-cluster-<v>/), zipped as `luarocks pack` does.
# The version comes from the rockspec's file name.
ROCKSPEC    = $(firstword $(wildcard luv-cluster-[0-9]*.rockspec))
ROCK_NAME   = $(ROCKSPEC:.rockspec=)
SOURCE_NAME = $(shell echo '$(ROCK_NAME)' | sed 's/-[0-9]*$$//')
rock:
	@mkdir -p build
	rm -f build/$(SOURCE_NAME).tar.gz build/$(ROCK_NAME).src.rock
	git ls-files -z > build/rock-files
	tar --null -T build/rock-files --sort=name --owner=0 --group=0 --numeric-owner \
	    --mtime=@$$(git log -1 --format=%ct) --transform 's,^,$(SOURCE_NAME)/,' \
	    -I 'gzip -n' -cf build/$(SOURCE_NAME).tar.gz
	zip -q -X -j build/$(ROCK_NAME).src.rock $(ROCKSPEC) build/$(SOURCE_NAME).tar.gz
	@echo "build/$(ROCK_NAME).src.rock"

demo: deps-run install
	$(LUA) examples/count_requests.lua

# bench/ipc: the luv-cluster cases under $(LUA) and again under LuaJIT
# (BENCH_LUAJIT=0 skips those), Node's cluster when the machine has it,
# and a raw C socketpair baseline; BENCH_RUNS repetitions (default 5),
# medians. The driver runs under lua5.4.
bench: build
	@$(MAKE) --no-print-directory build LUA=luajit CFLAGS="$(CFLAGS)"
	LUA=$(LUA) lua5.4 bench/ipc/run.lua

# wrk and nginx from Debian; node is used when the machine has it.
# The driver runs under lua5.4; the luv-cluster rows under $(LUA) and
# again under LuaJIT (BENCH_LUAJIT=0 skips those).
bench-http: build
	@$(MAKE) --no-print-directory build LUA=luajit CFLAGS="$(CFLAGS)"
	$(call apt_install,wrk nginx-light)
	LUA=$(LUA) lua5.4 bench/http/run.lua

# p99 latency under rr with balance roundrobin vs leastconn when one worker
# blocks its loop now and then (bench/balance/run.lua says how it runs),
# and the clients balance "source" moves when a worker comes or goes.
bench-balance: build
	LUA=$(LUA) $(LUA) bench/balance/run.lua
	$(LUA) bench/balance/source.lua

# 20 hot upgrades of the runner in a row under load (rr, shared, reuseport,
# unix socket), and the same versions brought in by stop + start for
# reference: failed requests, time per upgrade.
bench-upgrade: build
	LUA=$(LUA) $(LUA) bench/upgrade/run.lua

clean:
	rm -rf build

# The master side of a round trip (and the codec) under valgrind; workers
# run natively. valgrind 3.19 does not know pidfd_open: reap by SIGCHLD.
valgrind: build
	$(LUA_ENV) LUA_CLUSTER_REAP=sigchld \
	valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
	    $(LUA) spec/valgrind_master.lua
