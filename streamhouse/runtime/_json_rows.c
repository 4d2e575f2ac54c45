/* Rows of Arrow columns written as JSON objects in one pass in C: see
 * streamhouse/runtime/json_rows.py, which loads this library with ctypes (the GIL is released
 * while it runs) and falls back to DuckDB's to_json for any column type not written here.
 *
 * The text is DuckDB's to_json's, byte for byte (a sink's records read as they did):
 * - integers in decimal; booleans true/false; NULL null;
 * - doubles (and floats, widened) as their shortest round-trip digits, in decimal notation
 *   when the decimal point falls within 21 digits after or 6 before the first digit (an
 *   integral value ends in ".0"), else as d.ddde[-]x; NaN, Infinity, -Infinity;
 * - strings quoted; '"' and '\' escaped, \b \t \n \f \r, the other bytes below 0x20 as
 *   \u00XX (upper-case hex), every other byte as it is (UTF-8 kept, '/' not escaped);
 * - timestamps without a time zone as "YYYY-MM-DD HH:MM:SS" and, when not whole seconds, a
 *   '.' and the fraction without its trailing zeros; dates as "YYYY-MM-DD". Years outside
 *   1..9999 (written otherwise by DuckDB) stop the call: the caller then uses DuckDB.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    K_INT8 = 0,
    K_INT16 = 1,
    K_INT32 = 2,
    K_INT64 = 3,
    K_UINT8 = 4,
    K_UINT16 = 5,
    K_UINT32 = 6,
    K_UINT64 = 7,
    K_FLOAT32 = 8,
    K_FLOAT64 = 9,
    K_BOOL = 10,
    K_STRING = 11,      /* int32 offsets */
    K_LARGE_STRING = 12, /* int64 offsets */
    K_STRING_VIEW = 13, /* 16-byte views; data: the array of the data buffers' addresses */
    K_TIMESTAMP_S = 14,
    K_TIMESTAMP_MS = 15,
    K_TIMESTAMP_US = 16,
    K_TIMESTAMP_NS = 17,
    K_DATE32 = 18,
};

/* A column: its kind, values buffer, offsets (strings) or views, validity bitmap (0: none
 * null), the array's offset in its buffers, and the text before its value ('{' or ',', the
 * quoted name, ':'). */
enum { SPEC_KIND, SPEC_DATA, SPEC_OFFSETS, SPEC_VALID, SPEC_OFFSET, SPEC_PREFIX, SPEC_PREFIX_LEN,
       SPEC_WORDS };

#define ERR_SPACE (-1)
#define ERR_RANGE (-2)
#define ERR_SIZE (-3)
#define ERR_KIND (-4)

#define MAX_SCALAR 48 /* the longest scalar written (a timestamp, a double), with room */

static const char DIGIT_PAIRS[201] = "00010203040506070809"
                                     "10111213141516171819"
                                     "20212223242526272829"
                                     "30313233343536373839"
                                     "40414243444546474849"
                                     "50515253545556575859"
                                     "60616263646566676869"
                                     "70717273747576777879"
                                     "80818283848586878889"
                                     "90919293949596979899";

static inline uint8_t *put_u64(uint8_t *out, uint64_t v)
{
    uint8_t tmp[20];
    uint8_t *p = tmp + 20;
    while (v >= 100) {
        unsigned pair = (unsigned)(v % 100);
        v /= 100;
        p -= 2;
        memcpy(p, DIGIT_PAIRS + 2 * pair, 2);
    }
    if (v >= 10) {
        p -= 2;
        memcpy(p, DIGIT_PAIRS + 2 * v, 2);
    } else {
        *--p = (uint8_t)('0' + v);
    }
    size_t len = (size_t)(tmp + 20 - p);
    memcpy(out, p, len);
    return out + len;
}

static inline uint8_t *put_i64(uint8_t *out, int64_t v)
{
    if (v < 0) {
        *out++ = '-';
        return put_u64(out, (uint64_t)0 - (uint64_t)v);
    }
    return put_u64(out, (uint64_t)v);
}

static inline uint8_t *put_2(uint8_t *out, unsigned v)
{
    memcpy(out, DIGIT_PAIRS + 2 * v, 2);
    return out + 2;
}

/* ---- doubles ------------------------------------------------------------------------ */

/* `len` digits (no trailing zero, first not zero) times 10^exp, as DuckDB writes it. */
static uint8_t *put_decimal(uint8_t *out, const char *digits, int len, int exp)
{
    int dot = len + exp; /* where the point is, counted from the first digit */
    if (-6 < dot && dot <= 21) {
        if (dot <= 0) {
            *out++ = '0';
            *out++ = '.';
            for (int i = 0; i < -dot; i++)
                *out++ = '0';
            memcpy(out, digits, (size_t)len);
            return out + len;
        }
        if (dot >= len) {
            memcpy(out, digits, (size_t)len);
            out += len;
            for (int i = len; i < dot; i++)
                *out++ = '0';
            *out++ = '.';
            *out++ = '0';
            return out;
        }
        memcpy(out, digits, (size_t)dot);
        out += dot;
        *out++ = '.';
        memcpy(out, digits + dot, (size_t)(len - dot));
        return out + (len - dot);
    }
    *out++ = (uint8_t)digits[0];
    if (len > 1) {
        *out++ = '.';
        memcpy(out, digits + 1, (size_t)(len - 1));
        out += len - 1;
    }
    *out++ = 'e';
    return put_i64(out, (int64_t)(dot - 1));
}

/* The digits of v (> 0, finite) correctly rounded to `precision` significant digits, trailing
 * zeros dropped, and their exponent: whether they read back as v. */
static int rounded_digits(double v, int precision, char *digits, int *len, int *exp)
{
    char text[40];
    snprintf(text, sizeof text, "%.*e", precision - 1, v);
    if (strtod(text, NULL) != v)
        return 0;
    /* text: d[.ddd]e[+-]xx */
    int n = 0;
    const char *p = text;
    for (; *p != 'e'; p++)
        if (*p != '.')
            digits[n++] = *p;
    int e = atoi(p + 1);
    while (n > 1 && digits[n - 1] == '0')
        n--;
    *len = n;
    *exp = e - (n - 1);
    return 1;
}

typedef unsigned __int128 u128;

static const uint64_t POW10_U64[20] = {1ull,
                                       10ull,
                                       100ull,
                                       1000ull,
                                       10000ull,
                                       100000ull,
                                       1000000ull,
                                       10000000ull,
                                       100000000ull,
                                       1000000000ull,
                                       10000000000ull,
                                       100000000000ull,
                                       1000000000000ull,
                                       10000000000000ull,
                                       100000000000000ull,
                                       1000000000000000ull,
                                       10000000000000000ull,
                                       100000000000000000ull,
                                       1000000000000000000ull,
                                       10000000000000000000ull};

/* `u`'s decimal digits, trailing zeros dropped: their count; *zeros gets how many dropped. */
static int u128_digits(u128 u, char *digits, int *zeros)
{
    char tmp[48];
    int n = 0;
    *zeros = 0;
    while (u % 10 == 0 && u) {
        u /= 10;
        (*zeros)++;
    }
    while (u >> 64) {
        tmp[n++] = (char)('0' + (int)(u % 10));
        u /= 10;
    }
    uint64_t small = (uint64_t)u; /* the rest in 64 bits: cheaper divisions */
    do {
        tmp[n++] = (char)('0' + (int)(small % 10));
        small /= 10;
    } while (small);
    for (int i = 0; i < n; i++)
        digits[i] = tmp[n - 1 - i];
    return n;
}

/* The shortest digits that read back as v (> 0, normal), the nearest to v of those, found
 * with exact integer arithmetic: 1, or 0 when v is outside what 128 bits hold here (below
 * 1e-4 or above 2^127) or two such decimals are equally near (the caller then asks printf).
 *
 * v = m 2^e. A decimal reads back as v when it lies within v's rounding interval: half the
 * gap to each neighbouring double (the gap below a power of two is half the gap above), the
 * ends included when m is even (a tie reads as the even neighbour). Scaled by 10^p / 2^-e
 * (4 times finer, to hold the half gaps), the interval's integers [lo, hi] are the decimals
 * of 18 or 19 digits that read back; the shortest has the most trailing zeros. */
static int exact_shortest(double v, char *digits, int *len, int *exp)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    int field = (int)(bits >> 52);
    uint64_t m = (bits & 0x000FFFFFFFFFFFFFull) | (1ull << 52);
    int e = field - 1075;
    int uneven = (bits & 0x000FFFFFFFFFFFFFull) == 0 && field > 1;
    u128 below = 4 * (u128)m - (uneven ? 1 : 2), above = 4 * (u128)m + 2;
    int inclusive = (m & 1) == 0;
    int p = 0;
    u128 lo, hi, exact_lo, exact_hi, center_q, center_r = 0;
    int shift = 0;
    if (e <= 2) {
        if (v < 1e-4)
            return 0;
        p = 17 - (int)floor(log10(v));
        if (p < 0)
            p = 0;
        if (p > 21)
            return 0;
        u128 scale = p <= 19 ? (u128)POW10_U64[p] : (u128)POW10_U64[p - 2] * 100;
        shift = 2 - e; /* at most 69 */
        u128 mask = ((u128)1 << shift) - 1;
        u128 a = below * scale, b = above * scale, c = 4 * (u128)m * scale;
        lo = a >> shift;
        exact_lo = (a & mask) == 0;
        if (!exact_lo)
            lo += 1; /* ceil */
        hi = b >> shift;
        exact_hi = (b & mask) == 0;
        center_q = c >> shift;
        center_r = c & mask;
    } else {
        if (e > 74)
            return 0;
        lo = below << (e - 2);
        hi = above << (e - 2);
        exact_lo = exact_hi = 1;
        center_q = (u128)m << e;
    }
    if (exact_lo && !inclusive)
        lo += 1;
    if (exact_hi && !inclusive)
        hi -= 1;
    /* the most trailing zeros t of a number in [lo, hi] */
    u128 step = 1;
    int t = 0;
    if (hi < ((u128)1 << 64)) { /* always with e <= 2: 64-bit divisions by 10 are cheaper */
        uint64_t h = (uint64_t)hi, l = (uint64_t)lo - 1;
        while (h / 10 > l / 10) { /* a multiple of 10^t lies in it iff h/10^t > l/10^t */
            h /= 10;
            l /= 10;
            step *= 10;
            t++;
        }
    } else {
        u128 h = hi, l = lo - 1;
        while (h / 10 > l / 10) {
            h /= 10;
            l /= 10;
            step *= 10;
            t++;
        }
    }
    /* the multiples of 10^t on either side of the exact value: the nearer one in [lo, hi] */
    u128 floor_c = center_q / step * step, ceil_c = floor_c + step;
    u128 d1 = center_q - floor_c; /* the exact value is floor_c + d1 + center_r / 2^shift */
    int nearer; /* -1: floor_c, 1: ceil_c, 0: a tie (frac: center_r / 2^shift, below 1) */
    if (2 * d1 + 2 <= step) {
        nearer = -1; /* 2 (d1 + frac) < step */
    } else if (2 * d1 > step) {
        nearer = 1;
    } else if (2 * d1 == step) {
        nearer = center_r == 0 ? 0 : 1;
    } else { /* 2 d1 + 1 == step: compare 2 frac with 1 */
        u128 twice = center_r << 1, one = (u128)1 << shift;
        nearer = twice < one ? -1 : (twice == one ? 0 : 1);
    }
    int floor_in = floor_c >= lo, ceil_in = ceil_c <= hi;
    u128 chosen;
    if (floor_in && ceil_in) {
        if (nearer == 0)
            return 0;
        chosen = nearer < 0 ? floor_c : ceil_c;
    } else if (floor_in) {
        chosen = floor_c;
    } else if (ceil_in) {
        chosen = ceil_c;
    } else {
        return 0; /* not reached: some multiple of 10^t lies in [lo, hi] */
    }
    int zeros;
    *len = u128_digits(chosen, digits, &zeros);
    *exp = zeros - p;
    return 1;
}

/* The shortest digits that read back as v (> 0, finite), the nearest to v of those. */
static void shortest_digits(double v, char *digits, int *len, int *exp)
{
    if (v < 2.2250738585072014e-308) {
        /* subnormal: fewer bits than 15 digits; the first precision that reads back */
        for (int precision = 1; precision < 17; precision++)
            if (rounded_digits(v, precision, digits, len, exp))
                return;
        rounded_digits(v, 17, digits, len, exp);
        return;
    }
    if (exact_shortest(v, digits, len, exp))
        return;
    /* A decimal of at most 15 digits that reads back as v is v rounded to 15 digits (v is
     * within half a unit in its 17th digit of it), trailing zeros dropped. */
    if (rounded_digits(v, 15, digits, len, exp))
        return;
    if (rounded_digits(v, 16, digits, len, exp))
        return;
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    if ((bits & 0x000FFFFFFFFFFFFFull) == 0 && (bits >> 52) > 1) {
        /* A power of two: the doubles below it are closer than those above, so a 16-digit
         * decimal above v, farther than the nearest one below, may still read back as v. */
        char text[40];
        snprintf(text, sizeof text, "%.15e", v);
        char up[40];
        int n = 0;
        const char *p = text;
        for (; *p != 'e'; p++)
            if (*p != '.')
                up[n++] = *p;
        int e = atoi(p + 1);
        int i = n - 1;
        while (i >= 0 && up[i] == '9')
            up[i--] = '0';
        if (i >= 0) {
            up[i]++;
            char again[48];
            snprintf(again, sizeof again, "%c.%.*se%d", up[0], n - 1, up + 1, e);
            if (strtod(again, NULL) == v) {
                while (n > 1 && up[n - 1] == '0')
                    n--;
                memcpy(digits, up, (size_t)n);
                *len = n;
                *exp = e - (n - 1);
                return;
            }
        }
    }
    rounded_digits(v, 17, digits, len, exp); /* 17 digits always read back */
}

static const double POW10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8};

static uint8_t *put_double(uint8_t *out, double v)
{
    if (isnan(v)) {
        memcpy(out, "NaN", 3);
        return out + 3;
    }
    if (isinf(v)) {
        if (v < 0) {
            memcpy(out, "-Infinity", 9);
            return out + 9;
        }
        memcpy(out, "Infinity", 8);
        return out + 8;
    }
    if (signbit(v)) {
        *out++ = '-';
        v = -v;
    }
    if (v == 0) {
        memcpy(out, "0.0", 3);
        return out + 3;
    }
    char digits[24];
    int len, exp;
    if (v < 9007199254740992.0 && v == floor(v)) {
        out = put_u64(out, (uint64_t)v);
        memcpy(out, ".0", 2);
        return out + 2;
    }
    /* A value of at most 8 decimals in fewer than 16 digits (prices): the decimal m / 10^k
     * that reads back as v with the fewest decimals k is the shortest (the next such
     * decimals are further apart than the doubles near v, so it is the only one). */
    if (v >= 1e-6) {
        for (int k = 1; k <= 8; k++) {
            double scaled = v * POW10[k];
            if (scaled >= 1125899906842624.0) /* 2^50 */
                break;
            double m = nearbyint(scaled);
            if (m / POW10[k] == v) {
                uint64_t u = (uint64_t)m;
                uint8_t text[24];
                uint8_t *end = put_u64(text, u);
                len = (int)(end - text);
                exp = -k;
                while (len > 1 && text[len - 1] == '0') {
                    len--;
                    exp++;
                }
                memcpy(digits, text, (size_t)len);
                return put_decimal(out, digits, len, exp);
            }
        }
    }
    shortest_digits(v, digits, &len, &exp);
    return put_decimal(out, digits, len, exp);
}

/* ---- strings ------------------------------------------------------------------------ */

static const uint8_t HEX[] = "0123456789ABCDEF";

/* Whether any of the 8 bytes is below 0x20, '"' or '\'. */
static inline int needs_escape8(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t below = (x - ones * 0x20) & ~x & highs;
    uint64_t q = x ^ (ones * '"');
    uint64_t b = x ^ (ones * '\\');
    uint64_t quote = (q - ones) & ~q & highs;
    uint64_t slash = (b - ones) & ~b & highs;
    return (below | quote | slash) != 0;
}

/* `s` (len bytes) quoted and escaped at out, within `end`; NULL if it did not fit. */
static uint8_t *put_string(uint8_t *out, const uint8_t *end, const uint8_t *s, int64_t len)
{
    if (end - out < len + 2 + MAX_SCALAR)
        return NULL;
    *out++ = '"';
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t x;
        memcpy(&x, s + i, 8);
        if (needs_escape8(x))
            break;
    }
    memcpy(out, s, (size_t)i);
    out += i;
    for (; i < len; i++) {
        uint8_t c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *out++ = c;
            continue;
        }
        if (end - out < (len - i) + 6 + 1 + MAX_SCALAR)
            return NULL;
        *out++ = '\\';
        switch (c) {
        case '"':
            *out++ = '"';
            break;
        case '\\':
            *out++ = '\\';
            break;
        case '\b':
            *out++ = 'b';
            break;
        case '\t':
            *out++ = 't';
            break;
        case '\n':
            *out++ = 'n';
            break;
        case '\f':
            *out++ = 'f';
            break;
        case '\r':
            *out++ = 'r';
            break;
        default:
            memcpy(out, "u00", 3);
            out[3] = HEX[c >> 4];
            out[4] = HEX[c & 15];
            out += 5;
        }
    }
    *out++ = '"';
    return out;
}

/* ---- timestamps ------------------------------------------------------------------------ */

/* The civil date of a day count from 1970-01-01 (the proleptic Gregorian calendar). */
static void civil_date(int64_t days, int64_t *year, unsigned *month, unsigned *day)
{
    days += 719468; /* from 0000-03-01 */
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    unsigned doe = (unsigned)(days - era * 146097);                      /* [0, 146096] */
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* [0, 399] */
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);               /* [0, 365] */
    unsigned mp = (5 * doy + 2) / 153;                                    /* [0, 11] */
    *day = doy - (153 * mp + 2) / 5 + 1;
    *month = mp < 10 ? mp + 3 : mp - 9;
    *year = (int64_t)yoe + era * 400 + (*month <= 2);
}

static uint8_t *put_date(uint8_t *out, int64_t days)
{
    int64_t year;
    unsigned month, day;
    civil_date(days, &year, &month, &day);
    if (year < 1 || year > 9999)
        return NULL;
    out = put_2(out, (unsigned)(year / 100));
    out = put_2(out, (unsigned)(year % 100));
    *out++ = '-';
    out = put_2(out, month);
    *out++ = '-';
    return put_2(out, day);
}

static const int64_t PER_SECOND[] = {1, 1000, 1000000, 1000000000};

/* A timestamp of `unit` (0: s, 1: ms, 2: us, 3: ns) ticks, quoted; NULL out of range. */
static uint8_t *put_timestamp(uint8_t *out, int64_t ticks, int unit)
{
    int64_t per = PER_SECOND[unit];
    int64_t seconds = ticks / per, fraction = ticks % per;
    if (fraction < 0) {
        fraction += per;
        seconds -= 1;
    }
    int64_t days = seconds / 86400, in_day = seconds % 86400;
    if (in_day < 0) {
        in_day += 86400;
        days -= 1;
    }
    *out++ = '"';
    out = put_date(out, days);
    if (out == NULL)
        return NULL;
    *out++ = ' ';
    out = put_2(out, (unsigned)(in_day / 3600));
    *out++ = ':';
    out = put_2(out, (unsigned)(in_day / 60 % 60));
    *out++ = ':';
    out = put_2(out, (unsigned)(in_day % 60));
    if (fraction) {
        int width = 3 * unit;
        *out++ = '.';
        for (int i = width - 1; i >= 0; i--) {
            out[i] = (uint8_t)('0' + fraction % 10);
            fraction /= 10;
        }
        while (out[width - 1] == '0')
            width--;
        out += width;
    }
    *out++ = '"';
    return out;
}

/* ---- rows --------------------------------------------------------------------------- */

static inline int is_valid(const uint8_t *bitmap, int64_t i)
{
    return bitmap == NULL || (bitmap[i >> 3] >> (i & 7)) & 1;
}

/* The `n` rows of `columns` columns described by `spec` (SPEC_WORDS int64 each) as JSON
 * objects written at out + pos (out holds `capacity` bytes); offsets[i] (n + 1 of them) gets
 * where row i starts, offsets[n] where the last ends. Returns the position after the rows, or
 * ERR_SPACE (out is too small), ERR_RANGE (a date outside years 1..9999), ERR_SIZE (past
 * 2 GiB), ERR_KIND (a kind not written here). */
int64_t encode_json_rows(int64_t n, int64_t columns, const int64_t *spec, uint8_t *out,
                         int64_t pos, int64_t capacity, int32_t *offsets)
{
    uint8_t *at = out + pos;
    const uint8_t *end = out + (capacity < INT32_MAX ? capacity : INT32_MAX);
    const int64_t full = capacity < INT32_MAX ? ERR_SPACE : ERR_SIZE; /* when out of room */
    for (int64_t c = 0; c < columns; c++) {
        int64_t kind = spec[c * SPEC_WORDS + SPEC_KIND];
        if (kind < K_INT8 || kind > K_DATE32)
            return ERR_KIND;
    }
    for (int64_t i = 0; i < n; i++) {
        offsets[i] = (int32_t)(at - out);
        for (int64_t c = 0; c < columns; c++) {
            const int64_t *col = spec + c * SPEC_WORDS;
            const uint8_t *prefix = (const uint8_t *)(intptr_t)col[SPEC_PREFIX];
            int64_t prefix_len = col[SPEC_PREFIX_LEN];
            if (end - at < prefix_len + MAX_SCALAR)
                return full;
            memcpy(at, prefix, (size_t)prefix_len);
            at += prefix_len;
            int64_t j = i + col[SPEC_OFFSET];
            if (!is_valid((const uint8_t *)(intptr_t)col[SPEC_VALID], j)) {
                memcpy(at, "null", 4);
                at += 4;
                continue;
            }
            const void *data = (const void *)(intptr_t)col[SPEC_DATA];
            switch (col[SPEC_KIND]) {
            case K_INT8:
                at = put_i64(at, ((const int8_t *)data)[j]);
                break;
            case K_INT16:
                at = put_i64(at, ((const int16_t *)data)[j]);
                break;
            case K_INT32:
                at = put_i64(at, ((const int32_t *)data)[j]);
                break;
            case K_INT64:
                at = put_i64(at, ((const int64_t *)data)[j]);
                break;
            case K_UINT8:
                at = put_u64(at, ((const uint8_t *)data)[j]);
                break;
            case K_UINT16:
                at = put_u64(at, ((const uint16_t *)data)[j]);
                break;
            case K_UINT32:
                at = put_u64(at, ((const uint32_t *)data)[j]);
                break;
            case K_UINT64:
                at = put_u64(at, ((const uint64_t *)data)[j]);
                break;
            case K_FLOAT32:
                at = put_double(at, (double)((const float *)data)[j]);
                break;
            case K_FLOAT64:
                at = put_double(at, ((const double *)data)[j]);
                break;
            case K_BOOL:
                if (is_valid((const uint8_t *)data, j)) {
                    memcpy(at, "true", 4);
                    at += 4;
                } else {
                    memcpy(at, "false", 5);
                    at += 5;
                }
                break;
            case K_STRING: {
                const int32_t *o = (const int32_t *)(intptr_t)col[SPEC_OFFSETS];
                at = put_string(at, end, (const uint8_t *)data + o[j], o[j + 1] - o[j]);
                break;
            }
            case K_LARGE_STRING: {
                const int64_t *o = (const int64_t *)(intptr_t)col[SPEC_OFFSETS];
                at = put_string(at, end, (const uint8_t *)data + o[j], o[j + 1] - o[j]);
                break;
            }
            case K_STRING_VIEW: {
                const uint8_t *view = (const uint8_t *)(intptr_t)col[SPEC_OFFSETS] + 16 * j;
                int32_t len, buffer, start;
                memcpy(&len, view, 4);
                if (len <= 12) {
                    at = put_string(at, end, view + 4, len);
                } else {
                    memcpy(&buffer, view + 8, 4);
                    memcpy(&start, view + 12, 4);
                    const uint8_t *base = (const uint8_t *)(intptr_t)((const int64_t *)data)[buffer];
                    at = put_string(at, end, base + start, len);
                }
                break;
            }
            case K_TIMESTAMP_S:
            case K_TIMESTAMP_MS:
            case K_TIMESTAMP_US:
            case K_TIMESTAMP_NS:
                at = put_timestamp(at, ((const int64_t *)data)[j], (int)(col[SPEC_KIND] - K_TIMESTAMP_S));
                if (at == NULL)
                    return ERR_RANGE;
                break;
            case K_DATE32:
                *at++ = '"';
                at = put_date(at, ((const int32_t *)data)[j]);
                if (at == NULL)
                    return ERR_RANGE;
                *at++ = '"';
                break;
            }
            if (at == NULL)
                return full;
        }
        if (end - at < 1)
            return full;
        *at++ = '}';
    }
    offsets[n] = (int32_t)(at - out);
    return at - out;
}
