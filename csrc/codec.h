/* Message serialization: one Lua value <-> bytes. The format is described
 * at the top of codec.c. */
#ifndef CLUSTER_CODEC_H
#define CLUSTER_CODEC_H

#include "compat.h"

#include "buffer.h"

/* Nested tables deeper than this are refused by both ends. */
#define CODEC_MAX_DEPTH 128

/* Append the encoding of the value at stack index idx to out. The encoding
 * may not grow out past `limit` bytes of this value. Returns 0 on success.
 * On failure returns -1, leaves out->len as it was on entry (nothing half
 * written) and pushes an error message string onto the stack. Never raises
 * except for Lua's own memory errors. */
int codec_encode(lua_State *L, int idx, buffer *out, size_t limit);

/* Decode exactly len bytes as one value. Returns 0 and pushes the value,
 * or returns -1 and pushes an error message string. Any input is safe:
 * malformed bytes give -1, never a crash or an unbounded allocation. */
int codec_decode(lua_State *L, const char *data, size_t len);

/* Adds core.encode(value[, limit]) -> string and core.decode(s) -> value |
 * nil, err to the module table at the top of the stack. */
void codec_open(lua_State *L);

#endif
