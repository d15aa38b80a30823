/* libFuzzer harness for codec_decode: any bytes must decode or fail cleanly,
 * and whatever decodes must survive encode -> decode unchanged. */
#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(lua_State *L, const char *what) {
  fprintf(stderr, "fuzz_decode: %s\n", what);
  if (lua_gettop(L) > 0 && lua_type(L, -1) == LUA_TSTRING)
    fprintf(stderr, "  top of stack: %s\n", lua_tostring(L, -1));
  abort();
}

/* Same kind and value; -0.0 and 0.0 differ, nan equals nan. */
static int same_scalar(lua_State *L, int a, int b) {
  int ta = lua_type(L, a);
  if (ta != lua_type(L, b)) return 0;
  switch (ta) {
  case LUA_TNIL: return 1;
  case LUA_TBOOLEAN: return lua_toboolean(L, a) == lua_toboolean(L, b);
  case LUA_TNUMBER: {
    if (lua_isinteger(L, a) != lua_isinteger(L, b)) return 0;
    if (lua_isinteger(L, a)) return lua_tointeger(L, a) == lua_tointeger(L, b);
    double x = lua_tonumber(L, a), y = lua_tonumber(L, b);
    return memcmp(&x, &y, sizeof x) == 0 || (x != x && y != y);
  }
  case LUA_TSTRING: {
    size_t la, lb;
    const char *sa = lua_tolstring(L, a, &la), *sb = lua_tolstring(L, b, &lb);
    return la == lb && memcmp(sa, sb, la) == 0;
  }
  default: return 0;
  }
}

/* Whether every table in the values at a and b (compared in step, as
 * same_value walks them) has the same border; 0 too when that cannot be
 * told (a table used as a key has no counterpart to compare with). */
static int same_borders(lua_State *L, int a, int b) {
  if (lua_type(L, a) != LUA_TTABLE || lua_type(L, b) != LUA_TTABLE) return 1;
  if (!lua_checkstack(L, 6)) fail(L, "stack overflow in compare");
  if (lua_rawlen(L, a) != lua_rawlen(L, b)) return 0;
  int top = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, a)) {
    if (lua_type(L, -2) == LUA_TTABLE) { /* cannot be paired up: unknown */
      lua_settop(L, top);
      return 0;
    }
    lua_pushvalue(L, -2);
    lua_rawget(L, b);
    if (!same_borders(L, top + 2, top + 3)) {
      lua_settop(L, top);
      return 0;
    }
    lua_pop(L, 2);
  }
  return 1;
}

/* Deep equality of the values at absolute indices a and b. Entries under
 * table keys cannot be looked up in the other table (keys compare by
 * identity), so for those only the number of entries is compared. */
static int same_value(lua_State *L, int a, int b) {
  if (lua_type(L, a) != LUA_TTABLE) return same_scalar(L, a, b);
  if (lua_type(L, b) != LUA_TTABLE) return 0;
  if (!lua_checkstack(L, 6)) fail(L, "stack overflow in compare");
  /* No border comparison: a table with holes has several borders, and
   * one decoded from key/value pairs (the encoder's form for a mostly
   * empty array part) may report another than the original did. */
  int top = lua_gettop(L);
  size_t na = 0, nb = 0;
  lua_pushnil(L);
  while (lua_next(L, a)) {
    na++;
    if (lua_type(L, -2) != LUA_TTABLE) {
      lua_pushvalue(L, -2);
      lua_rawget(L, b);
      if (!same_value(L, top + 2, top + 3)) {
        lua_settop(L, top);
        return 0;
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  lua_pushnil(L);
  while (lua_next(L, b)) {
    nb++;
    lua_pop(L, 1);
  }
  return na == nb;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lua_State *L;
  if (!L) L = luaL_newstate();

  if (codec_decode(L, (const char *)data, size) != 0) {
    if (lua_gettop(L) != 1 || lua_type(L, 1) != LUA_TSTRING)
      fail(L, "failed decode did not leave exactly one error string");
    lua_settop(L, 0);
    return 0;
  }
  if (lua_gettop(L) != 1) fail(L, "decode did not push exactly one value");

  /* Re-encode after 3 bytes already in the buffer: only ours may change. */
  buffer first = {0};
  if (buffer_reserve(&first, 3) != 0) fail(L, "out of memory");
  memcpy(first.data, "abc", 3);
  first.len = 3;
  if (codec_encode(L, 1, &first, SIZE_MAX) != 0) fail(L, "re-encode failed");
  if (lua_gettop(L) != 1) fail(L, "encode changed the stack");
  if (memcmp(first.data, "abc", 3) != 0) fail(L, "encode overwrote the buffer");
  size_t len1 = first.len - 3;

  if (codec_decode(L, first.data + 3, len1) != 0) fail(L, "re-decode failed");
  if (!same_value(L, 1, 2)) fail(L, "round trip changed the value");

  /* Same value, so the same encoded size, as long as every table kept
   * its border (see same_value); a second round trip must then be stable. */
  buffer second = {0};
  if (codec_encode(L, 2, &second, SIZE_MAX) != 0)
    fail(L, "second encode failed");
  if (second.len != len1 && same_borders(L, 1, 2)) fail(L, "second encoding has a different size");

  /* One byte under the limit must fail and leave the buffer as it was. */
  if (codec_encode(L, 2, &first, second.len - 1) == 0) fail(L, "limit not enforced");
  if (first.len != 3 + len1) fail(L, "failed encode changed out->len");
  if (lua_gettop(L) != 3 || lua_type(L, 3) != LUA_TSTRING)
    fail(L, "failed encode did not push one error string");

  buffer_free(&first);
  buffer_free(&second);
  lua_settop(L, 0);
  return 0;
}
