/* Message codec: one Lua value <-> bytes.
 *
 * Format. Every value starts with one tag byte:
 *
 *   0x00        nil
 *   0x01        false
 *   0x02        true
 *   0x03        float: 8 bytes, IEEE-754 double, little endian
 *   0x04        integer: zigzag varint (1..10 bytes)
 *   0x05        string: varint byte length, then the bytes
 *   0x06        table: varint narr, varint nhash, then narr values (the
 *               keys 1..narr, nil at holes), then nhash key/value pairs
 *   0x40..0x5f  short string of tag - 0x40 (0..31) bytes, then the bytes
 *   0x60..0xff  small integer tag - 0x80 (-32..127)
 *   other tags  malformed
 *
 * Numbers across Lua versions: where every number is a double (5.1, 5.2,
 * LuaJIT), one with an integral value within +-2^53 (not -0.0) is written
 * with an integer tag, so a 5.3+ peer reads an integer; other doubles are
 * floats. There an integer tag decodes to the nearest double. See
 * compat.h's lua_isinteger.
 *
 * A varint is LEB128: 7 bits per byte, least significant group first, high
 * bit set on every byte but the last; at most 10 bytes for 64 bits. Zigzag
 * maps 0,-1,1,-2.. to 0,1,2,3.. so small negative integers stay short.
 *
 * The encoder always picks the shortest form (small integer, short string,
 * minimal varints), so equal values with the same table iteration order
 * encode to the same bytes. The decoder also accepts longer forms.
 *
 * Decoding rules beyond the grammar: no trailing bytes after the value; a
 * hash key may not be nil or nan and a hash value may not be nil (the
 * encoder never writes them); duplicate keys are not checked, the last one
 * wins; tables nest at most CODEC_MAX_DEPTH deep; and every count or length
 * must fit in the bytes left, counting one byte for each element still
 * owed to the enclosing tables, which bounds what the decoder allocates by
 * the input size. Error positions are 0-based byte offsets. */
#include "codec.h"

#include <lauxlib.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum {
  TAG_NIL = 0x00,
  TAG_FALSE = 0x01,
  TAG_TRUE = 0x02,
  TAG_FLOAT = 0x03,
  TAG_INT = 0x04,
  TAG_STR = 0x05,
  TAG_TABLE = 0x06,
  TAG_SHORTSTR = 0x40, /* 0x40..0x5f */
  TAG_SMALLINT = 0x60, /* 0x60..0xff: value = tag - 0x80 */
};

#define SHORTSTR_MAX 31
#define SMALLINT_MIN (-32)
#define SMALLINT_MAX 127
#define SMALLINT_BIAS 0x80
#define VARINT_MAX 10

#define DEFAULT_LIMIT ((size_t)64 << 20)

/* Lua refuses bigger array/hash parts with an error; refuse them first. */
#define MAX_TABLE_PART ((uint64_t)1 << 28)

static inline size_t put_varint(unsigned char *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (unsigned char)v;
  return n;
}

static inline size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

static inline uint64_t zigzag(lua_Integer i) {
  uint64_t u = (uint64_t)i;
  return (u << 1) ^ (i < 0 ? UINT64_MAX : 0);
}

static inline lua_Integer unzigzag(uint64_t u) {
  return (lua_Integer)((u >> 1) ^ (0 - (u & 1)));
}

/* ------------------------------------------------------------------------
 * Encoder */

#define PATH_MAX_CHARS 200

/* What the key path of an error report points at, if anything. */
enum { PATH_NONE = 0, PATH_OF_VALUE = 1, PATH_OF_TABLE = 2 };

typedef struct encoder {
  lua_State *L;
  buffer *out;
  size_t start; /* out->len on entry */
  size_t limit;
  int status;                          /* enum codec_status of a failure */
  int depth;                           /* tables on the current path */
  const void *tables[CODEC_MAX_DEPTH]; /* for cycle detection */
  /* Error report, filled only on failure. The key path is built while
   * unwinding, innermost key first, so it grows leftwards from the end. */
  char msg[128];
  int want_path;  /* PATH_* */
  size_t path_at; /* path text is path[path_at .. PATH_MAX_CHARS) */
  int path_cut;   /* outer keys did not fit */
  char path[PATH_MAX_CHARS + 1];
} encoder;

static int enc_value(encoder *e, int idx, int type);

static int enc_fail(encoder *e, int want_path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int enc_fail(encoder *e, int want_path, const char *fmt, ...) {
  e->status = CODEC_UNSENDABLE;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  e->want_path = want_path;
  e->path_at = PATH_MAX_CHARS;
  e->path_cut = 0;
  e->path[PATH_MAX_CHARS] = '\0';
  return -1;
}

static int enc_over_limit(encoder *e, size_t size) {
  enc_fail(e, PATH_NONE, "message is %zu+ bytes, over the limit of %zu", size, e->limit);
  e->status = CODEC_TOO_BIG;
  return -1;
}

static int enc_oom(encoder *e) {
  enc_fail(e, PATH_NONE, "out of memory while encoding a message");
  e->status = CODEC_NOMEM;
  return -1;
}

/* Pointer to room for `need` more bytes at the end of the output. */
static inline unsigned char *enc_room(encoder *e, size_t need) {
  buffer *b = e->out;
  if (b->cap - b->len < need && buffer_reserve(b, need) != 0) return NULL;
  return (unsigned char *)b->data + b->len;
}

/* Commit n bytes written at enc_room(); checks the limit afterwards. */
static inline int enc_commit(encoder *e, size_t n) {
  e->out->len += n;
  size_t size = e->out->len - e->start;
  if (size > e->limit) return enc_over_limit(e, size);
  return 0;
}

static int enc_byte(encoder *e, unsigned char c) {
  unsigned char *p = enc_room(e, 1);
  if (!p) return enc_oom(e);
  *p = c;
  return enc_commit(e, 1);
}

static int enc_integer(encoder *e, lua_Integer i) {
  unsigned char *p = enc_room(e, 1 + VARINT_MAX);
  if (!p) return enc_oom(e);
  if (i >= SMALLINT_MIN && i <= SMALLINT_MAX) {
    *p = (unsigned char)(i + SMALLINT_BIAS);
    return enc_commit(e, 1);
  }
  *p = TAG_INT;
  return enc_commit(e, 1 + put_varint(p + 1, zigzag(i)));
}

static int enc_float(encoder *e, lua_Number x) {
  unsigned char *p = enc_room(e, 9);
  if (!p) return enc_oom(e);
  double d = (double)x;
  uint64_t bits;
  memcpy(&bits, &d, 8);
  p[0] = TAG_FLOAT;
  for (int k = 0; k < 8; k++) p[1 + k] = (unsigned char)(bits >> (8 * k));
  return enc_commit(e, 9);
}

static int enc_string(encoder *e, const char *s, size_t len) {
  size_t head = len <= SHORTSTR_MAX ? 1 : 1 + varint_size(len);
  size_t size = e->out->len - e->start;
  /* Check before copying so a huge string fails without a huge reserve. */
  if (len > e->limit || head + len > e->limit - size)
    return enc_over_limit(e, size + head + len);
  unsigned char *p = enc_room(e, head + len);
  if (!p) return enc_oom(e);
  codec_string_head(p, len);
  memcpy(p + head, s, len);
  e->out->len += head + len;
  return 0;
}

size_t codec_string_head(unsigned char *out, size_t len) {
  if (len <= SHORTSTR_MAX) {
    out[0] = (unsigned char)(TAG_SHORTSTR + len);
    return 1;
  }
  out[0] = TAG_STR;
  return 1 + put_varint(out + 1, len);
}

/* Prepend text to the key path of an error report. */
static void path_prepend(encoder *e, const char *s, size_t n) {
  if (e->path_cut) return;
  if (n > e->path_at) {
    e->path_cut = 1;
    return;
  }
  e->path_at -= n;
  memcpy(e->path + e->path_at, s, n);
}

static int is_identifier(const char *s, size_t n) {
  if (n == 0 || n > 40 || (s[0] >= '0' && s[0] <= '9')) return 0;
  for (size_t k = 0; k < n; k++) {
    unsigned char c = (unsigned char)s[k];
    if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9')))
      return 0;
  }
  return 1;
}

/* Record the key at stack index key as the next outer step of the path. */
static void path_add_key(encoder *e, int key) {
  lua_State *L = e->L;
  char seg[96];
  int n;
  switch (lua_type(L, key)) {
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, key, &len);
    if (is_identifier(s, len)) {
      n = snprintf(seg, sizeof seg, ".%.*s", (int)len, s);
      break;
    }
    /* Quote it, keeping a readable prefix of printable bytes. */
    n = 0;
    seg[n++] = '[';
    seg[n++] = '"';
    for (size_t k = 0; k < len && n < 40; k++) {
      unsigned char c = (unsigned char)s[k];
      if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
        seg[n++] = (char)c;
      else
        n += snprintf(seg + n, sizeof seg - (size_t)n, "\\x%02x", c);
    }
    if (n >= 40) n += snprintf(seg + n, sizeof seg - (size_t)n, "...");
    seg[n++] = '"';
    seg[n++] = ']';
    break;
  }
  case LUA_TNUMBER:
    if (lua_isinteger(L, key))
      n = snprintf(seg, sizeof seg, "[%lld]", (long long)lua_tointeger(L, key));
    else
      n = snprintf(seg, sizeof seg, "[%.14g]", (double)lua_tonumber(L, key));
    break;
  case LUA_TBOOLEAN:
    n = snprintf(seg, sizeof seg, "[%s]",
                 lua_toboolean(L, key) ? "true" : "false");
    break;
  default:
    n = snprintf(seg, sizeof seg, "[<%s key>]",
                 lua_typename(L, lua_type(L, key)));
    break;
  }
  if (n > (int)sizeof seg - 1) n = (int)sizeof seg - 1;
  path_prepend(e, seg, (size_t)n);
}

static void path_add_index(encoder *e, lua_Unsigned i) {
  char seg[32];
  int n = snprintf(seg, sizeof seg, "[%llu]", (unsigned long long)i);
  path_prepend(e, seg, (size_t)n);
}

static const char *unsendable_kind(lua_State *L, int idx) {
  switch (lua_type(L, idx)) {
  case LUA_TFUNCTION: return "a function";
  case LUA_TTHREAD: return "a coroutine (thread)";
  case LUA_TUSERDATA: return "a userdata";
  case LUA_TLIGHTUSERDATA: return "a light userdata";
  default: return "a value of an unknown type";
  }
}

/* Write the count of hash pairs at `at`, where one byte was set aside; a
 * count over 127 needs a longer varint, so the pairs move to make room. */
static int enc_patch_count(encoder *e, size_t at, uint64_t count) {
  if (count < 0x80) {
    e->out->data[at] = (char)count;
    return 0;
  }
  size_t grow = varint_size(count) - 1;
  if (!enc_room(e, grow)) return enc_oom(e);
  char *d = e->out->data;
  memmove(d + at + 1 + grow, d + at + 1, e->out->len - at - 1);
  put_varint((unsigned char *)d + at, count);
  return enc_commit(e, grow);
}

/* A sparse table's border #t can be far beyond its entries (keys 1, 2, 4,
 * ..., 2^40 give #t = 2^40): its array part is given up once more than
 * this many of the slots seen so far, and more than half of them, are nil,
 * and the table is sent as key/value pairs instead. The work wasted before
 * that is bounded by twice the entries seen. */
#define SPARSE_NILS_MIN 64

/* Write a table header: tag, varint narr, and one byte set aside for the
 * hash pair count. Returns the offset of that byte, or 0 on failure. */
static size_t enc_table_header(encoder *e, lua_Unsigned narr) {
  unsigned char *p = enc_room(e, 2 + VARINT_MAX);
  if (!p) {
    enc_oom(e);
    return 0;
  }
  p[0] = TAG_TABLE;
  size_t n = 1 + put_varint(p + 1, narr);
  size_t count_at = e->out->len + n;
  p[n++] = 0; /* hash pair count, patched at the end */
  if (enc_commit(e, n) != 0) return 0;
  return count_at;
}

/* The array index a key of a table with border narr stands for (1..narr),
 * or 0 when it is a key/value pair's key. */
static lua_Unsigned array_index(lua_State *L, int key, int kt,
                                lua_Unsigned narr) {
  if (kt != LUA_TNUMBER || !lua_isinteger(L, key)) return 0;
  lua_Integer k = lua_tointeger(L, key);
  return k >= 1 && (lua_Unsigned)k <= narr ? (lua_Unsigned)k : 0;
}

/* Write one key/value pair (the key at stack index key, its value just
 * above it). */
static int enc_pair(encoder *e, int key, int kt) {
  lua_State *L = e->L;
  if (kt != LUA_TBOOLEAN && kt != LUA_TNUMBER && kt != LUA_TSTRING &&
      kt != LUA_TTABLE)
    return enc_fail(e, PATH_OF_TABLE, "cannot send %s as a table key",
                    unsendable_kind(L, key));
  if (enc_value(e, key, kt) != 0 ||
      enc_value(e, key + 1, lua_type(L, key + 1)) != 0) {
    path_add_key(e, key);
    return -1;
  }
  return 0;
}

static int enc_table(encoder *e, int idx) {
  lua_State *L = e->L;
  const void *self = lua_topointer(L, idx);
  for (int k = 0; k < e->depth; k++)
    if (e->tables[k] == self)
      return enc_fail(e, PATH_OF_VALUE,
                      "cannot send a table that contains itself (cycle)");
  if (e->depth >= CODEC_MAX_DEPTH)
    return enc_fail(e, PATH_NONE, "cannot send tables nested more than %d deep",
                    CODEC_MAX_DEPTH);
  if (!lua_checkstack(L, 4))
    return enc_fail(e, PATH_NONE,
                    "Lua stack overflow while encoding a message");

  size_t table_at = e->out->len;
  lua_Unsigned narr = lua_rawlen(L, idx);
  size_t count_at = enc_table_header(e, narr);
  if (!count_at) return -1;

  e->tables[e->depth++] = self;
  int top = lua_gettop(L);
  uint64_t count = 0;

  /* One traversal: lua_next nearly always yields the keys 1..narr first
   * and in order (a table's array part), so they are written as they come,
   * then the pairs. A table whose traversal does not start that way (a
   * hole, array keys kept in the hash part, a key 0) is written again, in
   * two passes: the same bytes either way. */
  lua_Unsigned done = 0; /* array entries written */
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int key = top + 1, val = top + 2;
    int kt = lua_type(L, key);
    lua_Unsigned k = array_index(L, key, kt, narr);
    if (k) {
      if (k != done + 1) goto two_passes;
      if (enc_value(e, val, lua_type(L, val)) != 0) {
        path_add_index(e, k);
        return -1;
      }
      done++;
      lua_settop(L, key);
      continue;
    }
    if (done < narr) goto two_passes;
    if (enc_pair(e, key, kt) != 0) return -1;
    count++;
    lua_settop(L, key);
  }
  if (done == narr) {
    e->depth--;
    return enc_patch_count(e, count_at, count);
  }

two_passes:
  lua_settop(L, top);
  e->out->len = count_at + 1; /* back to just after the header */
  count = 0;
  lua_Unsigned nils = 0;
  for (lua_Unsigned i = 1; i <= narr; i++) {
    int type = lua_rawgeti(L, idx, (lua_Integer)i);
    if (type == LUA_TNIL && ++nils > SPARSE_NILS_MIN && nils > i / 2) {
      /* Sparse: start again with every entry as a key/value pair. */
      lua_settop(L, top);
      e->out->len = table_at;
      narr = 0;
      count_at = enc_table_header(e, 0);
      if (!count_at) return -1;
      break;
    }
    if (enc_value(e, top + 1, type) != 0) {
      path_add_index(e, i);
      return -1;
    }
    lua_settop(L, top);
  }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int key = top + 1;
    int kt = lua_type(L, key);
    if (array_index(L, key, kt, narr)) { /* sent in the array part */
      lua_settop(L, key);
      continue;
    }
    if (enc_pair(e, key, kt) != 0) return -1;
    count++;
    lua_settop(L, key);
  }
  e->depth--;
  return enc_patch_count(e, count_at, count);
}

static int enc_value(encoder *e, int idx, int type) {
  lua_State *L = e->L;
  switch (type) {
  case LUA_TNIL: return enc_byte(e, TAG_NIL);
  case LUA_TBOOLEAN:
    return enc_byte(e, lua_toboolean(L, idx) ? TAG_TRUE : TAG_FALSE);
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) return enc_integer(e, lua_tointeger(L, idx));
    return enc_float(e, lua_tonumber(L, idx));
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    return enc_string(e, s, len);
  }
  case LUA_TTABLE: return enc_table(e, idx);
  default:
    return enc_fail(e, PATH_OF_VALUE, "cannot send %s",
                    unsendable_kind(L, idx));
  }
}

int codec_encode(lua_State *L, int idx, buffer *out, size_t limit) {
  encoder e;
  e.L = L;
  e.out = out;
  e.start = out->len;
  e.limit = limit;
  e.status = CODEC_OK;
  e.depth = 0;
  int top = lua_gettop(L);
  idx = lua_absindex(L, idx);
  if (enc_value(&e, idx, lua_type(L, idx)) == 0) return CODEC_OK;
  out->len = e.start;
  lua_settop(L, top);
  const char *path = e.path + e.path_at;
  if (e.want_path != PATH_NONE && *path) {
    if (*path == '.') path++;
    lua_pushfstring(L, "%s (%s %s%s)", e.msg,
                    e.want_path == PATH_OF_TABLE ? "in the table at key"
                                                 : "at key",
                    e.path_cut ? "..." : "", path);
  } else {
    lua_pushstring(L, e.msg);
  }
  return e.status;
}

/* ------------------------------------------------------------------------
 * Decoder */

typedef struct decoder {
  lua_State *L;
  const unsigned char *start, *p, *end;
  size_t owed; /* elements of open tables not started yet, >= 1 byte each */
  int depth;
  const char *err;
  size_t err_at;
} decoder;

static int dec_fail(decoder *d, const char *reason, const unsigned char *at) {
  d->err = reason;
  d->err_at = (size_t)(at - d->start);
  return -1;
}

/* Bytes left for the value being read, after what the open tables owe.
 * Multi-byte headers (varints, floats) are only checked against the end,
 * so what is owed may already exceed what is left: then there is no room. */
static inline size_t dec_room(const decoder *d) {
  size_t left = (size_t)(d->end - d->p);
  return left > d->owed ? left - d->owed : 0;
}

static int dec_varint_slow(decoder *d, uint64_t *v) {
  const unsigned char *at = d->p;
  uint64_t r = 0;
  for (int shift = 0; shift < 7 * VARINT_MAX; shift += 7) {
    if (d->p >= d->end) return dec_fail(d, "truncated varint", at);
    unsigned c = *d->p++;
    if (shift == 63 && c > 1)
      return dec_fail(d, "varint overflows 64 bits", at);
    r |= (uint64_t)(c & 0x7f) << shift;
    if (c < 0x80) {
      *v = r;
      return 0;
    }
  }
  return dec_fail(d, "varint longer than 10 bytes", at);
}

static inline int dec_varint(decoder *d, uint64_t *v) {
  if (d->p < d->end && *d->p < 0x80) { /* the common one-byte case */
    *v = *d->p++;
    return 0;
  }
  return dec_varint_slow(d, v);
}

/* What dec_value pushed, so that its callers need no lua_type(): -1 is an
 * error (nothing pushed). Only a float can be nan. */
enum { DEC_NIL = 0, DEC_VALUE = 1, DEC_FLOAT = 2 };

static int dec_value(decoder *d);

static int dec_string(decoder *d, size_t len, const unsigned char *at) {
  if (len > dec_room(d)) return dec_fail(d, "string longer than the input", at);
  lua_pushlstring(d->L, (const char *)d->p, len);
  d->p += len;
  return DEC_VALUE;
}

static int dec_table(decoder *d, const unsigned char *at) {
  lua_State *L = d->L;
  uint64_t narr, nhash;
  if (dec_varint(d, &narr) != 0 || dec_varint(d, &nhash) != 0) return -1;
  if (d->depth >= CODEC_MAX_DEPTH)
    return dec_fail(d, "tables nested too deep", at);
  size_t room = dec_room(d);
  if (narr > room || nhash > (room - narr) / 2)
    return dec_fail(d, "table larger than the input", at);
  if (narr > MAX_TABLE_PART || nhash > COMPAT_MAX_HASH_PART)
    return dec_fail(d, "table too large", at);
  if (!lua_checkstack(L, 4))
    return dec_fail(d, "Lua stack overflow while decoding", at);
  d->owed += narr + 2 * nhash;
  d->depth++;
  lua_createtable(L, (int)narr, (int)nhash);
  for (uint64_t i = 1; i <= narr; i++) {
    d->owed--;
    int got = dec_value(d);
    if (got < 0) return -1;
    if (got == DEC_NIL)
      lua_pop(L, 1);
    else
      lua_rawseti(L, -2, (lua_Integer)i);
  }
  for (uint64_t i = 0; i < nhash; i++) {
    const unsigned char *key_at = d->p;
    d->owed--;
    int got = dec_value(d);
    if (got < 0) return -1;
    if (got == DEC_NIL) return dec_fail(d, "nil table key", key_at);
    if (got == DEC_FLOAT) {
      lua_Number k = lua_tonumber(L, -1);
      if (k != k) return dec_fail(d, "nan table key", key_at);
    }
    const unsigned char *val_at = d->p;
    d->owed--;
    got = dec_value(d);
    if (got < 0) return -1;
    if (got == DEC_NIL) return dec_fail(d, "nil table value", val_at);
    lua_rawset(L, -3);
  }
  d->depth--;
  return DEC_VALUE;
}

static int dec_value(decoder *d) {
  lua_State *L = d->L;
  const unsigned char *at = d->p;
  if (at >= d->end) return dec_fail(d, "truncated value", at);
  unsigned tag = *d->p++;
  if (tag >= TAG_SMALLINT) {
    lua_pushinteger(L, (lua_Integer)tag - SMALLINT_BIAS);
    return DEC_VALUE;
  }
  if (tag >= TAG_SHORTSTR) return dec_string(d, tag - TAG_SHORTSTR, at);
  switch (tag) {
  case TAG_NIL: lua_pushnil(L); return DEC_NIL;
  case TAG_FALSE: lua_pushboolean(L, 0); return DEC_VALUE;
  case TAG_TRUE: lua_pushboolean(L, 1); return DEC_VALUE;
  case TAG_FLOAT: {
    if (d->end - d->p < 8) return dec_fail(d, "truncated float", at);
    uint64_t bits = 0;
    for (int k = 0; k < 8; k++) bits |= (uint64_t)d->p[k] << (8 * k);
    d->p += 8;
    double x;
    memcpy(&x, &bits, 8);
    lua_pushnumber(L, (lua_Number)x);
    return DEC_FLOAT;
  }
  case TAG_INT: {
    uint64_t u;
    if (dec_varint(d, &u) != 0) return -1;
    lua_pushinteger(L, unzigzag(u));
    return DEC_VALUE;
  }
  case TAG_STR: {
    uint64_t len;
    if (dec_varint(d, &len) != 0) return -1;
    if (len > SIZE_MAX) return dec_fail(d, "string longer than the input", at);
    return dec_string(d, (size_t)len, at);
  }
  case TAG_TABLE: return dec_table(d, at);
  default: return dec_fail(d, "unknown tag", at);
  }
}

int codec_decode(lua_State *L, const char *data, size_t len) {
  decoder d;
  d.L = L;
  d.start = d.p = (const unsigned char *)data;
  d.end = d.start + len;
  d.owed = 0;
  d.depth = 0;
  int top = lua_gettop(L);
  if (dec_value(&d) >= 0) {
    if (d.p == d.end) return 0;
    dec_fail(&d, "trailing bytes after the value", d.p);
  }
  lua_settop(L, top);
  lua_pushfstring(L, "malformed message: %s at byte " COMPAT_FMT_INTEGER, d.err,
                  COMPAT_ARG_INTEGER(d.err_at));
  return -1;
}

/* ------------------------------------------------------------------------
 * Lua functions */

/* core.encode keeps one output buffer per module instance so a call does
 * not malloc; it is given back when it grew past this. */
#define KEEP_BUFFER_MAX ((size_t)1 << 20)

static int l_buffer_gc(lua_State *L) {
  buffer_free((buffer *)lua_touserdata(L, 1));
  return 0;
}

static int l_encode(lua_State *L) {
  lua_Integer limit = luaL_optinteger(L, 2, (lua_Integer)DEFAULT_LIMIT);
  luaL_argcheck(L, limit >= 0, 2, "limit must be >= 0");
  lua_settop(L, 1);
  buffer *b = (buffer *)lua_touserdata(L, lua_upvalueindex(1));
  b->len = 0;
  if (codec_encode(L, 1, b, (size_t)limit) != 0) return lua_error(L);
  lua_pushlstring(L, b->data, b->len);
  if (b->cap > KEEP_BUFFER_MAX) buffer_free(b);
  return 1;
}

static int l_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_settop(L, 1);
  if (codec_decode(L, s, len) == 0) return 1;
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

void codec_open(lua_State *L) {
  buffer *b = (buffer *)lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, l_buffer_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_pushcclosure(L, l_encode, 1);
  lua_setfield(L, -2, "encode");
  lua_pushcfunction(L, l_decode);
  lua_setfield(L, -2, "decode");
}
