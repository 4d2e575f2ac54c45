/* The fields of every record in the records sections of Kafka record batches (v2), found in
 * one pass in C: see streamhouse/log/records/framing.py, which loads this library with ctypes
 * (so the GIL is released while it runs) and falls back to the numpy path without it.
 *
 * A record: length (zigzag varint), attributes (1 byte), timestamp delta (varint), offset
 * delta (varint), key length (varint, -1: null) and key, value length and value, header
 * count (varint) and headers. Every read stays within the record, and the record within its
 * section; anything else is reported by index and the caller's numpy path names it.
 */
#include <stdint.h>
#include <string.h>

/* A zigzag varint of at most `width` bytes at buf[*pos] (before `end`): 0 if it does not
 * end in time, else 1 with the value in *out and *pos past it. */
static int read_varint(const uint8_t *buf, int64_t *pos, int64_t end, int width, int64_t *out)
{
    uint64_t u = 0;
    int64_t p = *pos;
    for (int k = 0; k < width; k++) {
        if (p >= end)
            return 0;
        uint8_t b = buf[p++];
        u |= (uint64_t)(b & 0x7F) << (7 * k);
        if (b < 0x80) {
            *out = (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
            *pos = p;
            return 1;
        }
    }
    return 0;
}

/* The records of `sections` sections (section i: bytes [starts[i], ends[i]) of buf, holding
 * counts[i] records) written to the output arrays, one entry a record in order: where it
 * starts and ends, its timestamp and offset deltas, where its key and value start and their
 * lengths (-1: null), and its header count. With `views` (16 bytes a record, buf shorter
 * than 2**31), each value is also written as an Arrow binary-view entry over buffer 0 (buf):
 * the length, then the bytes inlined (12 or fewer) or a 4-byte prefix, 0 and the offset.
 *
 * Returns -1 when every record is well formed, else the index of the first record that is
 * not (or, when a section holds fewer or more bytes than its records, the index of its
 * last record).
 */
int64_t frame_records(const uint8_t *buf, int64_t sections, const int64_t *starts,
                      const int64_t *ends, const int64_t *counts, int64_t *rec_start,
                      int64_t *rec_end, int64_t *ts_delta, int64_t *off_delta,
                      int64_t *key_start, int64_t *key_len, int64_t *value_start,
                      int64_t *value_len, int64_t *header_count, uint8_t *views)
{
    int64_t i = 0;
    for (int64_t s = 0; s < sections; s++) {
        int64_t pos = starts[s], section_end = ends[s];
        for (int64_t r = 0; r < counts[s]; r++, i++) {
            int64_t length, v, body;
            rec_start[i] = pos;
            if (!read_varint(buf, &pos, section_end, 5, &length) || length < 0)
                return i;
            body = pos;
            if (length > section_end - body || length < 1)
                return i;
            int64_t end = body + length;
            rec_end[i] = end;
            pos = body + 1; /* the attributes byte */
            if (!read_varint(buf, &pos, end, 10, &ts_delta[i]))
                return i;
            if (!read_varint(buf, &pos, end, 5, &off_delta[i]))
                return i;
            if (!read_varint(buf, &pos, end, 5, &v) || v < -1 || (v > 0 && v > end - pos))
                return i;
            key_len[i] = v;
            key_start[i] = pos;
            pos += v > 0 ? v : 0;
            if (!read_varint(buf, &pos, end, 5, &v) || v < -1 || (v > 0 && v > end - pos))
                return i;
            value_len[i] = v;
            value_start[i] = pos;
            pos += v > 0 ? v : 0;
            if (!read_varint(buf, &pos, end, 5, &v) || v < 0)
                return i;
            header_count[i] = v;
            if (v == 0 ? pos != end : pos >= end)
                return i;
            if (views != NULL) {
                uint8_t *view = views + 16 * i;
                int32_t size = value_len[i] > 0 ? (int32_t)value_len[i] : 0;
                memset(view, 0, 16);
                memcpy(view, &size, 4);
                if (size <= 12) {
                    memcpy(view + 4, buf + value_start[i], (size_t)size);
                } else {
                    int32_t offset = (int32_t)value_start[i];
                    memcpy(view + 4, buf + value_start[i], 4);
                    memcpy(view + 12, &offset, 4);
                }
            }
            pos = end;
        }
        if (pos != section_end)
            return i > 0 ? i - 1 : 0;
    }
    return -1;
}
