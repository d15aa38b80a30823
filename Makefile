# luv-cluster. `make` builds the C core into build/; `make check` is the whole
# test suite (README's test command); `make demo` runs the example server.

LUA        ?= lua5.4
LUA_INC    ?= /usr/include/lua5.4
CC         ?= cc
CFLAGS     ?= -O2 -g
WARN        = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CORE_FLAGS  = -std=gnu11 -fPIC -fvisibility=hidden -I$(LUA_INC) $(WARN)
SRCS        = $(wildcard csrc/*.c)
HDRS        = $(wildcard csrc/*.h)
BUSTED      = busted --lua=$(LUA)
FUZZ_SECONDS ?= 30

# Debian packages: what building and installing the rock needs, and what
# the whole suite adds (busted, clang's libFuzzer, valgrind).
RUN_PKGS  = lua5.4 liblua5.4-dev lua-luv luarocks gcc libc6-dev make
TEST_PKGS = $(RUN_PKGS) lua-busted clang libclang-rt-14-dev valgrind

.PHONY: all build test test-sigchld asan valgrind fuzz check deps-run deps-test demo install bench bench-http clean

all: build
build: build/cluster/core.so

build/cluster/core.so: $(SRCS) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(CORE_FLAGS) -shared -o $@ $(SRCS)

# Sanitized copy of the core, loaded by an uninstrumented lua5.4 through
# LD_PRELOAD of the ASan runtime (workers inherit it through the env).
build-asan/cluster/core.so: $(SRCS) $(HDRS)
	@mkdir -p $(@D)
	gcc -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
	    -fno-sanitize-recover=undefined $(CORE_FLAGS) -shared -o $@ $(SRCS)

test: build
	$(BUSTED) spec

# The same specs with the SIGCHLD reaping path that kernels without pidfds
# (and valgrind) take.
test-sigchld: build
	LUA_CLUSTER_REAP=sigchld $(BUSTED) spec

asan: build-asan/cluster/core.so
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libubsan.so) \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	$(BUSTED) --cpath="build-asan/?.so" spec

FUZZ_COMMON = csrc/codec.c csrc/frame.c csrc/buffer.c
build/fuzz_%: fuzz/fuzz_%.c $(FUZZ_COMMON) $(HDRS)
	@mkdir -p $(@D)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -I$(LUA_INC) -Icsrc \
	    -o $@ $< $(FUZZ_COMMON) -l$(LUA)

fuzz: build/fuzz_decode build/fuzz_frame
	@mkdir -p build/corpus/decode build/corpus/frame
	build/fuzz_decode -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build/corpus/decode fuzz/seeds/decode
	build/fuzz_frame -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build/corpus/frame fuzz/seeds/frame

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
# rocks-provided.lua declares it, so nothing is downloaded.
# luarocks' builtin build leaves its objects in the tree: remove them.
install:
	LUAROCKS_CONFIG=$(CURDIR)/rocks-provided.lua luarocks --lua-version 5.4 make luv-cluster-scm-1.rockspec
	rm -f csrc/*.o cluster/core.so && (rmdir cluster 2>/dev/null || true)

demo: deps-run install
	$(LUA) examples/count_requests.lua

bench: build
	$(LUA) bench/ipc/run.lua

# wrk and nginx from Debian; node is used when the machine has it.
bench-http: build
	$(call apt_install,wrk nginx-light)
	$(LUA) bench/http/run.lua

clean:
	rm -rf build build-asan

# The master side of a round trip (and the codec) under valgrind; workers
# run natively. valgrind 3.19 does not know pidfd_open: reap by SIGCHLD.
valgrind: build
	LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;" LUA_CLUSTER_REAP=sigchld \
	valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
	    $(LUA) spec/valgrind_master.lua
