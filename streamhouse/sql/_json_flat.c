/* Named fields of flat JSON objects, in one pass in C: see streamhouse/sql/json_flat.py, which
 * loads this library with ctypes (the GIL is released while it runs).
 *
 * Only what is plainly valid JSON and reads one way is read here: an object whose values are
 * strings without escapes, numbers, true, false or null, in ASCII, each wanted field at most
 * once, and a wanted field's value of its own kind (an integer for an integer field, any
 * number for a float, a string for text, true or false for a boolean, for a millisecond
 * timestamp an integer of at most 15 digits (epoch milliseconds) or a text
 * YYYY-MM-DD[ T]HH:MM:SS[.f[f[f]]][Z] of a real date (UTC); null for any). Every
 * other value is left for the general reader (DuckDB, then pyarrow), which decides what it
 * means; so a row read here is read as that reader would read it.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum { INT64 = 0, INT32 = 1, FLOAT64 = 2, TEXT = 3, BOOL = 4, TIMESTAMP_MS = 5 };

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
#ifdef __SSE2__
    /* 16 bytes at a time to the first that is not plain text: a quote, a backslash, or below
     * 0x20 or from 0x80 as a signed byte (both are less than 0x20 signed); the loop below
     * then judges that byte. Long texts (URLs, descriptions) are most of a row's bytes. */
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    while (e - p >= 16) {
        __m128i chunk = _mm_loadu_si128((const __m128i *)p);
        __m128i stop = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(chunk, quote), _mm_cmpeq_epi8(chunk, backslash)),
            _mm_cmplt_epi8(chunk, space));
        int mask = _mm_movemask_epi8(stop);
        if (mask != 0) {
            p += __builtin_ctz((unsigned)mask);
            break;
        }
        p += 16;
    }
#endif
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

/* n ASCII digits at p as a number; -1 if one is not a digit. */
static int digits(const uint8_t *p, int n)
{
    int value = 0;
    for (int k = 0; k < n; k++) {
        if (p[k] < '0' || p[k] > '9')
            return -1;
        value = value * 10 + (p[k] - '0');
    }
    return value;
}

/* Days from 1970-01-01 to a proleptic Gregorian date (Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* Text [p, e) as UTC epoch milliseconds: only YYYY-MM-DD, a space or T, HH:MM:SS, then up to
 * three fraction digits after a point and an optional Z, of a date and time that exist (year
 * 1 to 9999, second below 60). Any other form (a zone offset, more digits, a date alone) is
 * the general reader's to judge. */
static int parse_timestamp(const uint8_t *p, const uint8_t *e, int64_t *out)
{
    static const int DAYS[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    size_t size = (size_t)(e - p);
    if (size < 19 || p[4] != '-' || p[7] != '-' || (p[10] != ' ' && p[10] != 'T') ||
        p[13] != ':' || p[16] != ':')
        return 0;
    int year = digits(p, 4), month = digits(p + 5, 2), day = digits(p + 8, 2);
    int hour = digits(p + 11, 2), minute = digits(p + 14, 2), second = digits(p + 17, 2);
    if (year < 1 || month < 1 || month > 12 || day < 1 || hour < 0 || hour > 23 ||
        minute < 0 || minute > 59 || second < 0 || second > 59)
        return 0;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > DAYS[month - 1] + (month == 2 && leap))
        return 0;
    const uint8_t *q = p + 19;
    int millis = 0;
    if (q < e && *q == '.') {
        int count = 0;
        for (q++; q < e && *q >= '0' && *q <= '9'; q++, count++) {
            if (count == 3)
                return 0;
            millis = millis * 10 + (*q - '0');
        }
        if (count == 0)
            return 0;
        for (; count < 3; count++)
            millis *= 10;
    }
    if (q < e && *q == 'Z')
        q++;
    if (q != e)
        return 0;
    *out = days_from_civil(year, month, day) * 86400000 +
           (int64_t)(hour * 3600 + minute * 60 + second) * 1000 + millis;
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
                    if (types[f] == TEXT)
                        write_view(views + 16 * at, base, text, p);
                    else if (types[f] != TIMESTAMP_MS || !parse_timestamp(text, p, &values[at]))
                        return 0;
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
                    } else if (type == TIMESTAMP_MS) {
                        /* epoch milliseconds: an integer of 1 to 15 digits */
                        int64_t count = (int64_t)(end - p) - (*p == '-');
                        if (!integral || count > 15 || !parse_integer(p, end, &values[at]))
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
