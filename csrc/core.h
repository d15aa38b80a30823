/* Entry points of the topic files that make up cluster.core. Each adds its
 * functions to the module table at the top of the stack. */
#ifndef CLUSTER_CORE_H
#define CLUSTER_CORE_H

#include "compat.h"

/* The module's only exported symbol. */
__attribute__((visibility("default"))) int luaopen_cluster_core(lua_State *L);

void spawn_open(lua_State *L);
void reap_open(lua_State *L);
void channel_open(lua_State *L);
void signals_open(lua_State *L);
void listen_open(lua_State *L);
void systemd_open(lua_State *L);
void limits_open(lua_State *L);
void proctitle_open(lua_State *L);

/* Push nil, "<what>: <strerror(err)>", "<ENAME>" and return 3: the luv and
 * luaposix shape of a failed system call. */
int core_push_errno(lua_State *L, const char *what, int err);

#endif
