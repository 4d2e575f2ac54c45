/* The records section of a Kafka record batch (v2) written in one pass in C, from Arrow binary
 * columns of values and keys: see streamhouse/log/records/build.py, which loads this library
 * with ctypes (so the GIL is released while it runs) and builds the section with numpy and
 * Arrow without it (varint matrices, then a join of the columns, which copies every value
 * twice).
 *
 * A record: length (zigzag varint), attributes (1 byte, 0), timestamp delta (zigzag varint),
 * offset delta (zigzag varint), key length (zigzag varint, -1: null) and key, value length
 * and value, header count (0: no headers).
 */
#include <stdint.h>
#include <string.h>

static inline uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }

static inline int varint_size(uint64_t u)
{
    int size = 1;
    while (u >= 0x80) {
        u >>= 7;
        size++;
    }
    return size;
}

static inline uint8_t *put_varint(uint8_t *out, uint64_t u)
{
    while (u >= 0x80) {
        *out++ = (uint8_t)(u | 0x80);
        u >>= 7;
    }
    *out++ = (uint8_t)u;
    return out;
}

/* The `n` records, offset deltas 0 to n - 1, written to `out` (at least the data of the
 * values and keys plus 32 bytes a record); returns the bytes written.
 *
 * Values: Arrow binary offsets `voff` (n + 1 entries, int32, the array's own offset applied)
 * into `vdata`; `vnull` (NULL: none null) a byte a record, 1 for a null value. Keys likewise
 * when `kdata`/`koff` are given (else every key is null). `ts_delta` (NULL: all 0) the
 * timestamp deltas.
 */
int64_t encode_records(int64_t n, const uint8_t *vdata, const int32_t *voff,
                       const uint8_t *vnull, const uint8_t *kdata, const int32_t *koff,
                       const uint8_t *knull, const int64_t *ts_delta, uint8_t *out)
{
    uint8_t *start = out;
    for (int64_t i = 0; i < n; i++) {
        int64_t vlen = (vnull != NULL && vnull[i]) ? -1 : (int64_t)(voff[i + 1] - voff[i]);
        int64_t klen = -1;
        if (koff != NULL && !(knull != NULL && knull[i]))
            klen = (int64_t)(koff[i + 1] - koff[i]);
        uint64_t ts = zigzag(ts_delta != NULL ? ts_delta[i] : 0);
        uint64_t off = zigzag(i), ku = zigzag(klen), vu = zigzag(vlen);
        int64_t body = 1 + varint_size(ts) + varint_size(off) + varint_size(ku)
                       + (klen > 0 ? klen : 0) + varint_size(vu) + (vlen > 0 ? vlen : 0) + 1;
        out = put_varint(out, zigzag(body));
        *out++ = 0; /* attributes */
        out = put_varint(out, ts);
        out = put_varint(out, off);
        out = put_varint(out, ku);
        if (klen > 0) {
            memcpy(out, kdata + koff[i], (size_t)klen);
            out += klen;
        }
        out = put_varint(out, vu);
        if (vlen > 0) {
            memcpy(out, vdata + voff[i], (size_t)vlen);
            out += vlen;
        }
        *out++ = 0; /* header count */
    }
    return (int64_t)(out - start);
}
