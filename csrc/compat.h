/* The one place that knows Lua versions. The core is written against the
 * Lua 5.4 C API; on 5.1, 5.2, 5.3 and LuaJIT 2.1 (which has the 5.1 API
 * and a few 5.2 additions) this header supplies what is missing under the
 * 5.4 names, so no other file needs an #if on LUA_VERSION_NUM. Every
 * source file includes it instead of <lua.h> and <lauxlib.h>.
 *
 * Numbers: before 5.3 every number is a double (lua_Integer is ptrdiff_t
 * and only a type of the C API). There, an "integer" is a number with an
 * integral value within +-2^53 (every such value is exact in a double;
 * -0.0 is not one, it would lose its sign): lua_isinteger tells it, and
 * lua_tointeger(x), luaL_checkinteger and friends accept only it, as 5.3+
 * accept only the integer subtype or a float with an exact integer value.
 * The codec relies on this to send such numbers with its integer tag (see
 * codec.c). */
#ifndef CLUSTER_COMPAT_H
#define CLUSTER_COMPAT_H

#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>

#if !defined(LUA_VERSION_NUM) || LUA_VERSION_NUM < 501 || LUA_VERSION_NUM > 504
#error "luv-cluster needs the headers of Lua 5.1, 5.2, 5.3, 5.4 or LuaJIT 2.1 (set LUA_INC)"
#endif

/* The codec and the channel carry 64-bit integers through lua_Integer. */
_Static_assert(sizeof(lua_Integer) >= 8, "luv-cluster needs a 64-bit lua_Integer");

/* lua_pushfstring's conversion for a lua_Integer: 5.1 and 5.2 have no
 * %I, only %f (a lua_Number, printed without a fraction when integral). */
#if LUA_VERSION_NUM >= 503
#define COMPAT_FMT_INTEGER "%I"
#define COMPAT_ARG_INTEGER(x) ((lua_Integer)(x))
#else
#define COMPAT_FMT_INTEGER "%f"
#define COMPAT_ARG_INTEGER(x) ((lua_Number)(x))
#endif

/* The largest hash part a decoded table may ask for: LuaJIT refuses more
 * than 2^26 hash slots (raising "table overflow"), and a core built for 5.1
 * is also loaded by LuaJIT. */
#if LUA_VERSION_NUM < 502
#define COMPAT_MAX_HASH_PART ((uint64_t)1 << 26)
#else
#define COMPAT_MAX_HASH_PART ((uint64_t)1 << 28)
#endif

/* ---- 5.3: userdata have no user values in the 5.4 sense; the core never
 * asks for any (nuv is always 0). */
#if LUA_VERSION_NUM < 504
static inline void *compat_newuserdatauv(lua_State *L, size_t size, int nuv) {
  (void)nuv;
  return lua_newuserdata(L, size);
}
#define lua_newuserdatauv compat_newuserdatauv

static inline int compat_typeerror(lua_State *L, int arg, const char *tname) {
  const char *got = luaL_typename(L, arg);
  return luaL_argerror(L, arg, lua_pushfstring(L, "%s expected, got %s", tname, got));
}
#define luaL_typeerror compat_typeerror
#endif

/* ---- 5.2, 5.1 and LuaJIT: numbers are doubles. */
#if LUA_VERSION_NUM < 503

/* 5.2 has a 32-bit lua_Unsigned; table lengths and counts want 64. */
typedef uint64_t compat_unsigned;
#define lua_Unsigned compat_unsigned

#define COMPAT_MAX_EXACT 9007199254740992.0 /* 2^53 */

/* 1 and *out set when the value at idx is a number with an integral value
 * within +-2^53, other than -0.0. */
static inline int compat_integer_value(lua_State *L, int idx, lua_Integer *out) {
  if (lua_type(L, idx) != LUA_TNUMBER) return 0;
  lua_Number x = lua_tonumber(L, idx);
  if (!(x >= -COMPAT_MAX_EXACT && x <= COMPAT_MAX_EXACT)) return 0; /* or nan */
  lua_Integer i = (lua_Integer)x;
  if ((lua_Number)i != x || (i == 0 && 1 / x < 0)) return 0;
  *out = i;
  return 1;
}

static inline int compat_isinteger(lua_State *L, int idx) {
  lua_Integer i;
  return compat_integer_value(L, idx, &i);
}
#define lua_isinteger compat_isinteger

/* As 5.3: strings convertible to numbers count, fractions do not. */
static inline lua_Integer compat_tointegerx(lua_State *L, int idx, int *isnum) {
  lua_Integer i = 0;
  int ok = 0;
  if (lua_isnumber(L, idx)) {
    lua_pushnumber(L, lua_tonumber(L, idx));
    ok = compat_integer_value(L, -1, &i);
    lua_pop(L, 1);
  }
  if (isnum) *isnum = ok;
  return ok ? i : 0;
}
#undef lua_tointeger
#define lua_tointegerx compat_tointegerx
#define lua_tointeger(L, idx) compat_tointegerx(L, idx, NULL)

static inline lua_Integer compat_checkinteger(lua_State *L, int arg) {
  int ok;
  lua_Integer i = compat_tointegerx(L, arg, &ok);
  if (!ok) {
    if (lua_isnumber(L, arg))
      luaL_argerror(L, arg, "number has no integer representation");
    else
      compat_typeerror(L, arg, "number");
  }
  return i;
}
#define luaL_checkinteger compat_checkinteger

static inline lua_Integer compat_optinteger(lua_State *L, int arg, lua_Integer dflt) {
  return lua_isnoneornil(L, arg) ? dflt : compat_checkinteger(L, arg);
}
#define luaL_optinteger compat_optinteger

/* 5.3's getters return the type of the value they push. */
static inline int compat_getfield(lua_State *L, int idx, const char *k) {
  lua_getfield(L, idx, k);
  return lua_type(L, -1);
}
#define lua_getfield compat_getfield

static inline int compat_rawgeti(lua_State *L, int idx, lua_Integer n) {
  lua_rawgeti(L, idx, (int)n);
  return lua_type(L, -1);
}
#define lua_rawgeti compat_rawgeti

static inline int compat_geti(lua_State *L, int idx, lua_Integer n) {
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  lua_pushnumber(L, (lua_Number)n);
  lua_gettable(L, idx);
  return lua_type(L, -1);
}
#define lua_geti compat_geti

static inline void compat_rawseti(lua_State *L, int idx, lua_Integer n) {
  lua_rawseti(L, idx, (int)n);
}
#define lua_rawseti compat_rawseti
#endif

/* ---- 5.1 and LuaJIT. */
#if LUA_VERSION_NUM < 502
#ifndef LUA_OK
#define LUA_OK 0
#endif

static inline int compat_absindex(lua_State *L, int idx) {
  return idx > 0 || idx <= LUA_REGISTRYINDEX ? idx : lua_gettop(L) + idx + 1;
}
#define lua_absindex compat_absindex

#define lua_rawlen(L, idx) lua_objlen(L, idx)
#define luaL_len(L, idx) ((lua_Integer)lua_objlen(L, idx))

/* LuaJIT has these three; PUC 5.1 does not. Ours serve both. */
static inline void compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  for (; l->name; l++) {
    for (int k = 0; k < nup; k++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}
#undef luaL_setfuncs
#define luaL_setfuncs compat_setfuncs

static inline void compat_setmetatable(lua_State *L, const char *tname) {
  luaL_getmetatable(L, tname);
  lua_setmetatable(L, -2);
}
#undef luaL_setmetatable
#define luaL_setmetatable compat_setmetatable

#undef luaL_newlib
#define luaL_newlib(L, l) \
  (lua_createtable(L, 0, (int)(sizeof(l) / sizeof((l)[0])) - 1), compat_setfuncs(L, l, 0))
#endif

#endif
