/* Starting a worker: fork + exec of the Lua interpreter with the channel
 * socket at a fixed fd. Anything that fails between fork and exec is sent
 * back over a CLOEXEC status pipe, so fork() in Lua can raise a clear error
 * instead of handing back a worker that is already dead. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "core.h"

/* Where the child puts what it was given; fds below FIRST_FREE_FD are ours. */
enum { CHANNEL_FD = 3, STATUS_FD = 4, FIRST_FREE_FD = 5 };

/* What failed in the child, reported through the status pipe. */
enum child_stage {
  STAGE_FDS = 1,
  STAGE_SETSID,
  STAGE_GROUPS,
  STAGE_GID,
  STAGE_UID,
  STAGE_CWD,
  STAGE_SCRIPT,
  STAGE_EXEC,
};

struct child_report {
  int stage;
  int err;
};

struct spawn_request {
  const char *path;   /* interpreter */
  const char *script; /* checked readable after the privilege drop */
  const char *cwd;    /* NULL: inherit */
  char **argv;
  char **envp;
  long uid, gid; /* -1: inherit */
  int silent;
  int detached; /* own session and process group: a terminal's Ctrl-C misses it */
};

static int close_retry(int fd) {
  /* Linux closes the fd even when close() reports EINTR: never retry. */
  return close(fd);
}

static void close_from(int lowfd) {
#ifdef SYS_close_range
  if (syscall(SYS_close_range, (unsigned)lowfd, ~0u, 0u) == 0) return;
#endif
  struct rlimit rl;
  long max = 65536;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      rl.rlim_cur < (rlim_t)max)
    max = (long)rl.rlim_cur;
  for (long fd = lowfd; fd < max; fd++) close((int)fd);
}

static void write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    c += w;
    n -= (size_t)w;
  }
}

static _Noreturn void child_fail(int status_fd, int stage, int err) {
  struct child_report r = {stage, err};
  write_all(status_fd, &r, sizeof r);
  _exit(127);
}

/* Runs in the forked child: only async-signal-safe calls from here on. */
static _Noreturn void child_main(const struct spawn_request *req, pid_t parent,
                                 int chan, int status, int out, int err) {
  /* libuv blocks and handles signals in the parent; the worker starts clean. */
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &dfl, NULL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);

  /* Die with the master, and close the race where it died before this. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127);

  /* Lift every fd we keep above the fixed slots, then put each in place. */
  int st = fcntl(status, F_DUPFD_CLOEXEC, FIRST_FREE_FD);
  if (st < 0) child_fail(status, STAGE_FDS, errno);
  int ch = fcntl(chan, F_DUPFD_CLOEXEC, FIRST_FREE_FD);
  int o = out >= 0 ? fcntl(out, F_DUPFD_CLOEXEC, FIRST_FREE_FD) : -1;
  int e = err >= 0 ? fcntl(err, F_DUPFD_CLOEXEC, FIRST_FREE_FD) : -1;
  if (ch < 0 || (out >= 0 && o < 0) || (err >= 0 && e < 0))
    child_fail(st, STAGE_FDS, errno);
  if (dup3(st, STATUS_FD, O_CLOEXEC) < 0) child_fail(st, STAGE_FDS, errno);
  st = STATUS_FD;
  /* dup2 leaves the target without CLOEXEC: these survive the exec. */
  if (dup2(ch, CHANNEL_FD) < 0) child_fail(st, STAGE_FDS, errno);
  if (o >= 0 && dup2(o, STDOUT_FILENO) < 0) child_fail(st, STAGE_FDS, errno);
  if (e >= 0 && dup2(e, STDERR_FILENO) < 0) child_fail(st, STAGE_FDS, errno);
  close_from(FIRST_FREE_FD);

  if (req->detached && setsid() < 0) child_fail(st, STAGE_SETSID, errno);
  if (req->gid >= 0) {
    gid_t g = (gid_t)req->gid;
    if (geteuid() == 0 && setgroups(1, &g) != 0) child_fail(st, STAGE_GROUPS, errno);
    if (setgid(g) != 0) child_fail(st, STAGE_GID, errno);
  }
  if (req->uid >= 0 && setuid((uid_t)req->uid) != 0) child_fail(st, STAGE_UID, errno);
  if (req->cwd && chdir(req->cwd) != 0) child_fail(st, STAGE_CWD, errno);

  /* The interpreter would start and then fail on an unreadable script; test
   * it here, as the worker's own user, so fork() can say so. */
  int sfd = open(req->script, O_RDONLY | O_CLOEXEC);
  if (sfd < 0) child_fail(st, STAGE_SCRIPT, errno);
  struct stat sb;
  if (fstat(sfd, &sb) != 0) child_fail(st, STAGE_SCRIPT, errno);
  if (S_ISDIR(sb.st_mode)) child_fail(st, STAGE_SCRIPT, EISDIR);
  close_retry(sfd);

  execve(req->path, req->argv, req->envp);
  child_fail(st, STAGE_EXEC, errno);
}

static int push_child_error(lua_State *L, const struct spawn_request *req,
                            const struct child_report *r) {
  const char *what;
  switch (r->stage) {
  case STAGE_SETSID: what = "setsid"; break;
  case STAGE_GROUPS: what = lua_pushfstring(L, "setgroups(%d)", (int)req->gid); break;
  case STAGE_GID: what = lua_pushfstring(L, "setgid(%d)", (int)req->gid); break;
  case STAGE_UID: what = lua_pushfstring(L, "setuid(%d)", (int)req->uid); break;
  case STAGE_CWD: what = lua_pushfstring(L, "cannot change to cwd '%s'", req->cwd); break;
  case STAGE_SCRIPT: what = lua_pushfstring(L, "cannot open script '%s'", req->script); break;
  case STAGE_EXEC: what = lua_pushfstring(L, "cannot execute '%s'", req->path); break;
  default: what = "cannot set up the worker's file descriptors"; break;
  }
  return core_push_errno(L, what, r->err);
}

/* A Lua array of strings as a NULL-terminated char* array in userdata
 * memory; the strings stay anchored by the table at stack index idx. */
static char **check_string_array(lua_State *L, int idx, const char *field) {
  lua_getfield(L, idx, field);
  if (!lua_istable(L, -1)) luaL_error(L, "spawn: '%s' must be a table", field);
  lua_Integer n = luaL_len(L, -1);
  char **arr = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, -2, i);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "spawn: '%s'[%d] must be a string", field, (int)i);
    arr[i - 1] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  arr[n] = NULL;
  /* Keep the userdata; the table stays referenced from the request. */
  lua_remove(L, -2);
  return arr;
}

static const char *opt_string_field(lua_State *L, int idx, const char *field) {
  lua_getfield(L, idx, field);
  const char *s = lua_isnil(L, -1) ? NULL : lua_tostring(L, -1);
  if (!s && !lua_isnil(L, -1)) luaL_error(L, "spawn: '%s' must be a string", field);
  lua_pop(L, 1); /* still anchored by the request table */
  return s;
}

static long opt_id_field(lua_State *L, int idx, const char *field) {
  lua_getfield(L, idx, field);
  long v = -1;
  if (!lua_isnil(L, -1)) {
    int ok;
    lua_Integer n = lua_tointegerx(L, -1, &ok);
    if (!ok || n < 0 || n > INT_MAX) luaL_error(L, "spawn: '%s' must be an id", field);
    v = (long)n;
  }
  lua_pop(L, 1);
  return v;
}

static void close_pair(int p[2]) {
  if (p[0] >= 0) close_retry(p[0]);
  if (p[1] >= 0) close_retry(p[1]);
  p[0] = p[1] = -1;
}

/* core.spawn{path=, script=, argv={}, env={"K=V"}, cwd=, uid=, gid=, silent=,
 *            detached=}
 *   -> pid, channel_fd, stdout_fd|false, stderr_fd|false
 *   | nil, err, ENAME */
static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  struct spawn_request req;
  req.path = opt_string_field(L, 1, "path");
  req.script = opt_string_field(L, 1, "script");
  if (!req.path || !req.script) return luaL_error(L, "spawn: 'path' and 'script' are required");
  req.cwd = opt_string_field(L, 1, "cwd");
  req.uid = opt_id_field(L, 1, "uid");
  req.gid = opt_id_field(L, 1, "gid");
  lua_getfield(L, 1, "silent");
  req.silent = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "detached");
  req.detached = lua_toboolean(L, -1);
  lua_pop(L, 1);
  req.argv = check_string_array(L, 1, "argv");
  req.envp = check_string_array(L, 1, "env");

  int chan[2] = {-1, -1}, status[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
  const char *failed = NULL;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, chan) != 0) failed = "socketpair";
  else if (pipe2(status, O_CLOEXEC) != 0) failed = "pipe2";
  else if (req.silent && (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0))
    failed = "pipe2";
  if (failed) {
    int e = errno;
    close_pair(chan), close_pair(status), close_pair(out), close_pair(err);
    return core_push_errno(L, failed, e);
  }

  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close_pair(chan), close_pair(status), close_pair(out), close_pair(err);
    return core_push_errno(L, "fork", e);
  }
  if (pid == 0) child_main(&req, parent, chan[1], status[1], out[1], err[1]);

  close_retry(chan[1]), close_retry(status[1]);
  if (req.silent) close_retry(out[1]), close_retry(err[1]);

  /* EOF: the exec succeeded (the pipe is CLOEXEC). A report: it did not. */
  struct child_report report;
  ssize_t n;
  do n = read(status[0], &report, sizeof report);
  while (n < 0 && errno == EINTR);
  int read_errno = errno;
  close_retry(status[0]);
  if (n != 0) {
    int wstatus;
    while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {}
    close_retry(chan[0]);
    if (req.silent) close_retry(out[0]), close_retry(err[0]);
    if (n == (ssize_t)sizeof report) return push_child_error(L, &req, &report);
    if (n < 0) return core_push_errno(L, "reading the worker's start status", read_errno);
    return core_push_errno(L, "the worker failed before exec", EPROTO);
  }

  lua_pushinteger(L, pid);
  lua_pushinteger(L, chan[0]);
  if (req.silent) {
    lua_pushinteger(L, out[0]);
    lua_pushinteger(L, err[0]);
  } else {
    lua_pushboolean(L, 0);
    lua_pushboolean(L, 0);
  }
  return 4;
}

/* core.exe_path() -> absolute path of the running interpreter | nil */
static int l_exe_path(lua_State *L) {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return core_push_errno(L, "readlink /proc/self/exe", errno);
  lua_pushlstring(L, buf, (size_t)n);
  return 1;
}

void spawn_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"spawn", l_spawn}, {"exe_path", l_exe_path}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
  lua_pushinteger(L, CHANNEL_FD);
  lua_setfield(L, -2, "CHANNEL_FD");
}
