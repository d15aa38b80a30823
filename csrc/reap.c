/* Waiting for one worker at a time. Never waitpid(-1) and never a SIGCHLD
 * handler of our own: libuv reaps its own uv.spawn children by pid, and
 * either would steal their exit status. */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "core.h"

/* core.pidfd_open(pid) -> fd | nil, err, ENAME. The fd turns readable when
 * the process ends; ENOSYS on kernels before 5.3 (use SIGCHLD then). */
static int l_pidfd_open(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  luaL_argcheck(L, pid > 0, 1, "not a process id");
#ifdef SYS_pidfd_open
  /* pidfds are always close-on-exec. */
  long fd = syscall(SYS_pidfd_open, (pid_t)pid, 0);
  if (fd >= 0) {
    lua_pushinteger(L, fd);
    return 1;
  }
  return core_push_errno(L, "pidfd_open", errno);
#else
  return core_push_errno(L, "pidfd_open", ENOSYS);
#endif
}

/* core.waitpid(pid[, block]) -> false (still running)
 *                            | true, code|nil, signal|nil (reaped now)
 *                            | nil, err, ENAME
 * block: wait for it to end (only for a child just sent SIGKILL). */
static int l_waitpid(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  luaL_argcheck(L, pid > 0, 1, "not a process id");
  int flags = lua_toboolean(L, 2) ? 0 : WNOHANG;
  int status;
  pid_t r;
  do r = waitpid((pid_t)pid, &status, flags);
  while (r < 0 && errno == EINTR);
  if (r < 0) return core_push_errno(L, "waitpid", errno);
  if (r == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushboolean(L, 1);
  if (WIFEXITED(status)) {
    lua_pushinteger(L, WEXITSTATUS(status));
    lua_pushnil(L);
  } else {
    lua_pushnil(L);
    lua_pushinteger(L, WTERMSIG(status));
  }
  return 3;
}

/* core.close(fd) -> true | nil, err, ENAME */
static int l_close(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_argcheck(L, fd >= 0, 1, "not a file descriptor");
  /* No retry on EINTR: Linux has closed the fd already. */
  if (close((int)fd) != 0 && errno != EINTR) return core_push_errno(L, "close", errno);
  lua_pushboolean(L, 1);
  return 1;
}

void reap_open(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"pidfd_open", l_pidfd_open}, {"waitpid", l_waitpid}, {"close", l_close}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
