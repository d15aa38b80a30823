/* Signal names and kill(2). luv 1.44's uv.kill() silently sends signal 0
 * for an upper-case name, so the Lua layer translates names here. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include <lauxlib.h>
#include <lua.h>

#include "core.h"

static const struct {
  const char *name;
  int num;
} signal_names[] = {
    {"SIGHUP", SIGHUP},       {"SIGINT", SIGINT},       {"SIGQUIT", SIGQUIT},
    {"SIGILL", SIGILL},       {"SIGTRAP", SIGTRAP},     {"SIGABRT", SIGABRT},
    {"SIGBUS", SIGBUS},       {"SIGFPE", SIGFPE},       {"SIGKILL", SIGKILL},
    {"SIGUSR1", SIGUSR1},     {"SIGSEGV", SIGSEGV},     {"SIGUSR2", SIGUSR2},
    {"SIGPIPE", SIGPIPE},     {"SIGALRM", SIGALRM},     {"SIGTERM", SIGTERM},
    {"SIGCHLD", SIGCHLD},     {"SIGCONT", SIGCONT},     {"SIGSTOP", SIGSTOP},
    {"SIGTSTP", SIGTSTP},     {"SIGTTIN", SIGTTIN},     {"SIGTTOU", SIGTTOU},
    {"SIGURG", SIGURG},       {"SIGXCPU", SIGXCPU},     {"SIGXFSZ", SIGXFSZ},
    {"SIGVTALRM", SIGVTALRM}, {"SIGPROF", SIGPROF},     {"SIGWINCH", SIGWINCH},
    {"SIGIO", SIGIO},         {"SIGSYS", SIGSYS},
};
#define N_SIGNALS (sizeof signal_names / sizeof signal_names[0])

int core_push_errno(lua_State *L, const char *what, int err) {
  const char *name = strerrorname_np(err);
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", what, strerror(err));
  lua_pushstring(L, name ? name : "EUNKNOWN");
  return 3;
}

/* A signal given as a number or a name in any case, with or without the
 * SIG prefix ("SIGTERM", "sigterm", "term"). */
static int check_signal(lua_State *L, int arg) {
  if (lua_type(L, arg) == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, arg);
    luaL_argcheck(L, n >= 0 && n < NSIG, arg, "not a signal number");
    return (int)n;
  }
  const char *s = luaL_checkstring(L, arg);
  if (strncasecmp(s, "SIG", 3) == 0) s += 3;
  for (size_t i = 0; i < N_SIGNALS; i++)
    if (strcasecmp(s, signal_names[i].name + 3) == 0) return signal_names[i].num;
  return luaL_argerror(L, arg, lua_pushfstring(L, "unknown signal '%s'", s));
}

/* core.signum(sig) -> number */
static int l_signum(lua_State *L) {
  lua_pushinteger(L, check_signal(L, 1));
  return 1;
}

/* core.signame(num) -> "SIGTERM" | nil */
static int l_signame(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  for (size_t i = 0; i < N_SIGNALS; i++)
    if (signal_names[i].num == n) {
      lua_pushstring(L, signal_names[i].name);
      return 1;
    }
  lua_pushnil(L);
  return 1;
}

/* core.kill(pid, sig) -> true | nil, err, ENAME */
static int l_kill(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  luaL_argcheck(L, pid > 0, 1, "not a process id");
  int sig = check_signal(L, 2);
  if (kill((pid_t)pid, sig) != 0) return core_push_errno(L, "kill", errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* The handler installed for a signal, as a number that can only be
 * compared (0 for SIG_DFL, 1 for SIG_IGN). */
static lua_Integer handler_token(void (*h)(int)) {
  if (h == SIG_DFL) return 0;
  if (h == SIG_IGN) return 1;
  return (lua_Integer)(uintptr_t)h;
}

/* core.signal_handler(sig) -> token | nil, err, ENAME */
static int l_signal_handler(lua_State *L) {
  int sig = check_signal(L, 1);
  struct sigaction sa;
  if (sigaction(sig, NULL, &sa) != 0) return core_push_errno(L, "sigaction", errno);
  lua_pushinteger(L, handler_token(sa.sa_handler));
  return 1;
}

/* core.default_signal(sig[, token]) -> true (now SIG_DFL) | false
 *                                   | nil, err, ENAME
 * With token, only when the installed handler is still that one (a
 * function, not SIG_IGN): a handler installed since then is kept. */
static int l_default_signal(lua_State *L) {
  int sig = check_signal(L, 1);
  struct sigaction sa;
  if (!lua_isnoneornil(L, 2)) {
    lua_Integer token = luaL_checkinteger(L, 2);
    if (sigaction(sig, NULL, &sa) != 0) return core_push_errno(L, "sigaction", errno);
    lua_Integer now = handler_token(sa.sa_handler);
    if (now != token || now == 0 || now == 1) {
      lua_pushboolean(L, 0);
      return 1;
    }
  }
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_DFL;
  sigemptyset(&sa.sa_mask);
  if (sigaction(sig, &sa, NULL) != 0) return core_push_errno(L, "sigaction", errno);
  lua_pushboolean(L, 1);
  return 1;
}

void signals_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"signum", l_signum},
                                 {"signame", l_signame},
                                 {"kill", l_kill},
                                 {"signal_handler", l_signal_handler},
                                 {"default_signal", l_default_signal},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
