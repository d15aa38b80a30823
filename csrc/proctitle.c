/* Process titles: what `ps` shows for a worker or a runner's master.
 *
 * Linux keeps no title apart from the command line: /proc/<pid>/cmdline is
 * read from the process's own memory, the area between arg_start and
 * arg_end (fields 48 and 49 of /proc/self/stat), where the kernel put the
 * argv strings. A title is written over that area in place, truncated to
 * its size and zero-filled to its end, so nothing outside it is touched
 * (the environment strings follow it). The interpreter copied argv into
 * Lua strings (`arg`) before any Lua code ran; what else still points into
 * the area (the interpreter's and libc's program name, argv[0]) then reads
 * a prefix of the title, which stays NUL-terminated inside the area.
 * lua.c still reads the script's name from argv when it loads the script:
 * set a title only once the script runs, never from a -e chunk before it.
 *
 * The short name (`comm`: `ps -e`, top, pgrep and killall without -f) is
 * the calling thread's, set with prctl(PR_SET_NAME), 15 bytes at most. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <lauxlib.h>
#include <lua.h>

#include "core.h"

#ifdef __linux__

/* More than any argv area the kernel sets up (ARG_MAX is a quarter of an
 * 8 MiB stack by default): a larger one is not what we think it is. */
#define MAX_AREA ((uintptr_t)64 << 20)

/* Read /proc/self/stat into buf (NUL-terminated); 0 or an errno. */
static int read_stat(char *buf, size_t size) {
  int fd;
  do fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return errno;
  size_t got = 0;
  int err = 0;
  while (got < size - 1) {
    ssize_t n = read(fd, buf + got, size - 1 - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = errno;
      break;
    }
    if (n == 0) break;
    got += (size_t)n;
  }
  close(fd); /* read-only: nothing to lose; never retried (Linux closes it) */
  buf[got] = '\0';
  return err;
}

/* arg_start and arg_end of this process, from /proc/self/stat. 0, or an
 * errno: ENOENT and the like without /proc, EPROTO when the line does
 * not parse (a kernel before 3.5 has no such fields). */
static int argv_area(uintptr_t *start, uintptr_t *end) {
  char buf[4096];
  int err = read_stat(buf, sizeof buf);
  if (err) return err;
  /* "pid (comm) state ppid ...": comm may hold spaces and parentheses,
   * so fields are counted from the last ')'. The one after it is 3. */
  char *p = strrchr(buf, ')');
  if (!p) return EPROTO;
  p++;
  unsigned long long v[2] = {0, 0};
  for (int field = 3; field <= 49; field++) {
    while (*p == ' ') p++;
    if (*p == '\0' || *p == '\n') return EPROTO;
    if (field < 48) { /* state, then numbers (some may be negative) */
      while (*p && *p != ' ') p++;
      continue;
    }
    if (*p < '0' || *p > '9') return EPROTO;
    char *next;
    errno = 0;
    unsigned long long n = strtoull(p, &next, 10);
    if (errno || (*next != ' ' && *next != '\n' && *next != '\0')) return EPROTO;
    v[field - 48] = n;
    p = next;
  }
  if (v[0] == 0 || v[1] <= v[0] || v[1] > UINTPTR_MAX) return EPROTO;
  *start = (uintptr_t)v[0];
  *end = (uintptr_t)v[1];
  return 0;
}

/* core.set_proctitle(title) -> bytes kept | nil, err, ENAME
 * Writes title over the command line (see above); a title longer than the
 * area is cut to fit. Fails without raising where the area cannot be
 * found or is not this program's argv (no /proc, not Linux, a process
 * whose argv[0] is elsewhere, as under valgrind). */
static int l_set_proctitle(lua_State *L) {
  size_t len;
  const char *title = luaL_checklstring(L, 1, &len);
  uintptr_t start, end;
  int err = argv_area(&start, &end);
  if (err) return core_push_errno(L, "set_proctitle: /proc/self/stat", err);
  /* The area must be where this program's argv[0] is (libc keeps a
   * pointer to it: program_invocation_name) and of a plausible size;
   * otherwise it is not ours to write. */
  if ((uintptr_t)program_invocation_name != start || end - start > MAX_AREA)
    return core_push_errno(L, "set_proctitle: the argv area is not this program's", EINVAL);
  char *area = (char *)start;
  size_t size = (size_t)(end - start);
  size_t keep = len < size - 1 ? len : size - 1; /* the last byte stays NUL */
  memmove(area, title, keep);
  memset(area + keep, 0, size - keep);
  lua_pushinteger(L, (lua_Integer)keep);
  return 1;
}

/* core.set_comm(name) -> true | nil, err, ENAME
 * The calling thread's name (the process's `comm` when called from the
 * main thread), cut to 15 bytes by the kernel. */
static int l_set_comm(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  if (prctl(PR_SET_NAME, (unsigned long)name, 0UL, 0UL, 0UL) != 0)
    return core_push_errno(L, "set_comm: prctl(PR_SET_NAME)", errno);
  lua_pushboolean(L, 1);
  return 1;
}

#else /* not Linux: no argv area to find */

static int l_set_proctitle(lua_State *L) {
  luaL_checkstring(L, 1);
  return core_push_errno(L, "set_proctitle", ENOSYS);
}

static int l_set_comm(lua_State *L) {
  luaL_checkstring(L, 1);
  return core_push_errno(L, "set_comm", ENOSYS);
}

#endif

void proctitle_open(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"set_proctitle", l_set_proctitle}, {"set_comm", l_set_comm}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
