/* Message serialization: one Lua value <-> bytes. The format is described
 * at the top of codec.c. */
#ifndef CLUSTER_CODEC_H
#define CLUSTER_CODEC_H

#include "compat.h"

#include "buffer.h"

/* Nested tables deeper than this are refused by both ends. */
#define CODEC_MAX_DEPTH 128

/* What codec_encode returns. */
enum codec_status {
  CODEC_OK = 0,
  CODEC_UNSENDABLE = -1, /* a function, a cycle, too deep, a bad key... */
  CODEC_TOO_BIG = -2,    /* the encoding would pass `limit` */
  CODEC_NOMEM = -3       /* the output buffer could not grow */
};

/* Append the encoding of the value at stack index idx to out. The encoding
 * may not grow out past `limit` bytes of this value. Returns CODEC_OK on
 * success. On failure returns one of the other codec_status values, leaves
 * out->len as it was on entry (nothing half written) and pushes an error
 * message string onto the stack. Never raises except for Lua's own memory
 * errors. The time and size of an encoding follow the entries a table
 * really has, never its border #t (see enc_table). */
int codec_encode(lua_State *L, int idx, buffer *out, size_t limit);

/* The most bytes codec_string_head writes. */
#define CODEC_STRING_HEAD_MAX 11

/* Write the bytes that come before the contents of a string of len bytes
 * in its encoding (its tag and length) to out; returns how many. The
 * encoding of the string is these bytes, then the string's own. */
size_t codec_string_head(unsigned char *out, size_t len);

/* Decode exactly len bytes as one value. Returns 0 and pushes the value,
 * or returns -1 and pushes an error message string. Any input is safe:
 * malformed bytes give -1, never a crash or an unbounded allocation. */
int codec_decode(lua_State *L, const char *data, size_t len);

/* Adds core.encode(value[, limit]) -> string and core.decode(s) -> value |
 * nil, err to the module table at the top of the stack. */
void codec_open(lua_State *L);

#endif
