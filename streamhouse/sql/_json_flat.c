/* Named fields of flat JSON objects, in one pass in C: see streamhouse/sql/json_flat.py, which
 * loads this library with ctypes (the GIL is released while it runs).
 *
 * Only what is plainly valid JSON and reads one way is read here: an object whose values are
 * strings without escapes, numbers, true, false or null, in ASCII, each wanted field at most
 * once, and a wanted field's value of its own kind (an integer for an integer field, any
 * number for a float, a string for text, true or false for a boolean; null for any). Every
 * other value is left for the general reader (DuckDB, then pyarrow), which decides what it
 * means; so a row read here is read as that reader would read it.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { INT64 = 0, INT32 = 1, FLOAT64 = 2, TEXT = 3, BOOL = 4 };

static int is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static const uint8_t *skip_ws(const uint8_t *p, const uint8_t *e)
{
    while (p < e && is_ws(*p))
        p++;
    return p;
}

/* Past whitespace, the byte c and the whitespace after it; NULL if c is not next. */
static const uint8_t *past(const uint8_t *p, const uint8_t *e, uint8_t c)
{
    p = skip_ws(p, e);
    return p < e && *p == c ? skip_ws(p + 1, e) : NULL;
}

/* A JSON number at p (before e): its end, or NULL if not one. *integral: no fraction or
 * exponent. */
static const uint8_t *scan_number(const uint8_t *p, const uint8_t *e, int *integral)
{
    *integral = 1;
    if (p < e && *p == '-')
        p++;
    if (p >= e)
        return NULL;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < e && *p >= '0' && *p <= '9')
            p++;
    } else {
        return NULL;
    }
    if (p < e && *p == '.') {
        *integral = 0;
        p++;
        if (p >= e || *p < '0' || *p > '9')
            return NULL;
        while (p < e && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        *integral = 0;
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            p++;
        if (p >= e || *p < '0' || *p > '9')
            return NULL;
        while (p < e && *p >= '0' && *p <= '9')
            p++;
    }
    return p;
}

/* A string's body from p (just past its opening quote): its closing quote, or NULL if it
 * holds an escape, a control character or a byte outside ASCII, or does not end. */
static const uint8_t *scan_string(const uint8_t *p, const uint8_t *e)
{
    while (p < e) {
        uint8_t c = *p;
        if (c == '"')
            return p;
        if (c == '\\' || c < 0x20 || c >= 0x80)
            return NULL;
        p++;
    }
    return NULL;
}

static int parse_integer(const uint8_t *p, const uint8_t *e, int64_t *out)
{
    int negative = *p == '-';
    uint64_t u = 0, limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (p += negative; p < e; p++) {
        uint64_t digit = (uint64_t)(*p - '0');
        if (u > (limit - digit) / 10)
            return 0;
        u = u * 10 + digit;
    }
    *out = negative ? (int64_t)(0 - u) : (int64_t)u;
    return 1;
}

/* 10**0 .. 10**22: exact as doubles. */
static const double POWERS[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A JSON number (already checked) as the nearest double. Digits that make an integer below
 * 2**53, scaled by at most 10**22, need one exact operation on two exact doubles, which IEEE
 * arithmetic rounds correctly (Clinger's fast path); the rest go to strtod. */
static int parse_float(const uint8_t *p, const uint8_t *e, double *out)
{
    const uint8_t *q = p;
    int negative = *q == '-';
    uint64_t digits = 0;
    int count = 0, scale = 0;
    for (q += negative; q < e && *q >= '0' && *q <= '9'; q++, count++)
        digits = digits * 10 + (uint64_t)(*q - '0');
    if (q < e && *q == '.') {
        for (q++; q < e && *q >= '0' && *q <= '9'; q++, count++, scale--)
            digits = digits * 10 + (uint64_t)(*q - '0');
    }
    if (q == e && count <= 19 && digits <= ((uint64_t)1 << 53) && scale >= -22) {
        double value = (double)digits;
        value = scale < 0 ? value / POWERS[-scale] : value;
        /* An integer is read as one, then made a double: -0 is 0 (but -0.0 is -0.0). */
        *out = negative && (digits != 0 || scale < 0) ? -value : value;
        return 1;
    }
    char text[64];
    size_t size = (size_t)(e - p);
    if (size >= sizeof text)
        return 0;
    memcpy(text, p, size);
    text[size] = 0;
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (end != text + size || isinf(value) || errno == ERANGE)
        return 0;
    *out = value;
    return 1;
}

/* An Arrow binary-view entry of [text, end) within base: the length, then the bytes inlined
 * (12 or fewer) or a 4-byte prefix, buffer 0 and the offset. */
static void write_view(uint8_t *view, const uint8_t *base, const uint8_t *text,
                       const uint8_t *end)
{
    int32_t size = (int32_t)(end - text);
    memset(view, 0, 16);
    memcpy(view, &size, 4);
    if (size <= 12) {
        memcpy(view + 4, text, (size_t)size);
    } else {
        int32_t offset = (int32_t)(text - base);
        memcpy(view + 4, text, 4);
        memcpy(view + 12, &offset, 4);
    }
}

/* One object at [p, e): 1 if read (outputs of row i written), 0 if left for the general
 * reader. */
static int read_object(const uint8_t *base, const uint8_t *p, const uint8_t *e, int64_t i,
                       int64_t n, int32_t fields, const uint8_t *names, const int32_t *name_at,
                       const int32_t *types, int64_t *values, uint8_t *views, uint8_t *valid)
{
    uint64_t seen = 0;
    p = past(p, e, '{');
    if (p == NULL)
        return 0;
    if (p < e && *p == '}') {
        p++;
    } else {
        for (;;) {
            if (p >= e || *p++ != '"')
                return 0;
            const uint8_t *key = p;
            p = scan_string(p, e);
            if (p == NULL)
                return 0;
            size_t key_size = (size_t)(p - key);
            p = past(p + 1, e, ':');
            if (p == NULL || p >= e)
                return 0;
            int32_t f = -1;
            for (int32_t k = 0; k < fields; k++) {
                size_t size = (size_t)(name_at[k + 1] - name_at[k]);
                /* the first byte before a call: most keys differ there, or are that short */
                if (size == key_size && (size == 0 || names[name_at[k]] == key[0]) &&
                    memcmp(names + name_at[k], key, size) == 0) {
                    f = k;
                    break;
                }
            }
            if (f >= 0) {
                if (seen >> f & 1)
                    return 0; /* a field twice: the general reader takes the first */
                seen |= (uint64_t)1 << f;
            }
            int64_t at = (int64_t)f * n + i;
            uint8_t c = *p;
            if (c == '"') {
                const uint8_t *text = ++p;
                p = scan_string(p, e);
                if (p == NULL)
                    return 0;
                if (f >= 0) {
                    if (types[f] != TEXT)
                        return 0;
                    write_view(views + 16 * at, base, text, p);
                    valid[at] = 1;
                }
                p++;
            } else if (c == '-' || (c >= '0' && c <= '9')) {
                int integral;
                const uint8_t *end = scan_number(p, e, &integral);
                if (end == NULL)
                    return 0;
                if (f >= 0) {
                    int type = types[f];
                    if (type == INT64 || type == INT32) {
                        if (!integral || !parse_integer(p, end, &values[at]))
                            return 0;
                        if (type == INT32 && (values[at] < INT32_MIN || values[at] > INT32_MAX))
                            return 0;
                    } else if (type == FLOAT64) {
                        double value;
                        if (!parse_float(p, end, &value))
                            return 0;
                        memcpy(&values[at], &value, sizeof value);
                    } else {
                        return 0;
                    }
                    valid[at] = 1;
                }
                p = end;
            } else if (c == 't' || c == 'f') {
                int truth = c == 't';
                size_t size = truth ? 4 : 5;
                if ((size_t)(e - p) < size || memcmp(p, truth ? "true" : "false", size) != 0)
                    return 0;
                if (f >= 0) {
                    if (types[f] != BOOL)
                        return 0;
                    values[at] = truth;
                    valid[at] = 1;
                }
                p += size;
            } else if (c == 'n') {
                if (e - p < 4 || memcmp(p, "null", 4) != 0)
                    return 0;
                p += 4; /* a wanted field stays null */
            } else {
                return 0; /* nested, or not JSON */
            }
            p = skip_ws(p, e);
            if (p >= e)
                return 0;
            if (*p == ',') {
                p = skip_ws(p + 1, e);
                continue;
            }
            if (*p++ != '}')
                return 0;
            break;
        }
    }
    return skip_ws(p, e) == e;
}

/* Rows [start[i], end[i]) of base (start[i] < 0: left for the general reader). Field f
 * (names[name_at[f]:name_at[f + 1]], of type types[f]) of row i goes to values[f * n + i]
 * (an integer, a double's bits, 0 or 1) or, for text, to views[16 * (f * n + i)] (an Arrow
 * binary-view entry over base, which is shorter than 2**31 bytes), valid[f * n + i] set when
 * not null. read[i]: whether row i was read here.
 * Returns how many rows were. At most 64 fields. */
int64_t read_flat_objects(const uint8_t *base, int64_t n, const int64_t *start,
                          const int64_t *end, int32_t fields, const uint8_t *names,
                          const int32_t *name_at, const int32_t *types, int64_t *values,
                          uint8_t *views, uint8_t *valid, uint8_t *read)
{
    int64_t count = 0;
    if (fields > 64)
        return 0;
    memset(valid, 0, (size_t)(fields * n));
    for (int64_t i = 0; i < n; i++) {
        read[i] = start[i] >= 0 && read_object(base, base + start[i], base + end[i], i, n,
                                                fields, names, name_at, types, values, views,
                                                valid);
        if (!read[i]) {
            for (int32_t f = 0; f < fields; f++)
                valid[(int64_t)f * n + i] = 0;
        }
        count += read[i];
    }
    return count;
}
