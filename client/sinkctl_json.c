/*
 * sinkctl: msgpack objects as JSON. Map keys that are not strings are
 * written as their JSON text in a string, so the output is always valid
 * JSON; bin becomes base64, ext and non-finite floats become null, and the
 * bytes of a string that are not UTF-8 become U+FFFD.
 */
#include "sinkctl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Bytes in the well-formed UTF-8 sequence at @p (at most @n bytes): 1-4,
 * or 0 when it is not one (a stray continuation byte, a truncated or
 * overlong sequence, a surrogate, past U+10FFFF). */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    if (p[0] < 0x80)
        return 1;
    size_t len = p[0] >= 0xf0 ? 4 : p[0] >= 0xe0 ? 3 : p[0] >= 0xc2 ? 2 : 0;
    if (len == 0 || len > n || p[0] > 0xf4)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    /* the second byte's range rules out overlongs, surrogates and > U+10FFFF */
    if ((p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xed && p[1] > 0x9f) ||
        (p[0] == 0xf0 && p[1] < 0x90) || (p[0] == 0xf4 && p[1] > 0x8f))
        return 0;
    return len;
}

/* JSON text is UTF-8: a byte that starts no well-formed sequence (a token
 * piece holding part of a character, say) is written as U+FFFD. */
void sinkctl_json_str(FILE *f, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;

    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned char ch = u[i];
        size_t len = utf8_seq(u + i, n - i);
        if (len == 0) {
            fputs("\\ufffd", f);
            i++;
            continue;
        }
        if (len > 1) {
            fwrite(u + i, 1, len, f);
            i += len;
            continue;
        }
        switch (ch) {
        case '"':  fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (ch < 0x20 || ch == 0x7f)
                fprintf(f, "\\u%04x", ch);
            else
                fputc(ch, f);
        }
        i++;
    }
    fputc('"', f);
}

static void json_base64(FILE *f, const unsigned char *p, size_t n)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    fputc('"', f);
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        fputc(tab[v >> 18 & 63], f);
        fputc(tab[v >> 12 & 63], f);
        fputc(i + 1 < n ? tab[v >> 6 & 63] : '=', f);
        fputc(i + 2 < n ? tab[v & 63] : '=', f);
    }
    fputc('"', f);
}

/* Shortest %g that reads back as the same double. */
static void json_double(FILE *f, double d)
{
    if (!isfinite(d)) {
        fputs("null", f);
        return;
    }
    char buf[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    /* Keep floats recognisable as such: 3 -> 3.0. */
    if (strpbrk(buf, ".eE") == NULL)
        strcat(buf, ".0");
    fputs(buf, f);
}

void sinkctl_json_write(FILE *f, const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        fputs("null", f);
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        fputs(o->via.boolean ? "true" : "false", f);
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        fprintf(f, "%llu", (unsigned long long)o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        fprintf(f, "%lld", (long long)o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        json_double(f, o->via.f64);
        break;
    case MSGPACK_OBJECT_STR:
        sinkctl_json_str(f, o->via.str.ptr, o->via.str.size);
        break;
    case MSGPACK_OBJECT_BIN:
        json_base64(f, (const unsigned char *)o->via.bin.ptr, o->via.bin.size);
        break;
    case MSGPACK_OBJECT_ARRAY:
        fputc('[', f);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i > 0)
                fputc(',', f);
            sinkctl_json_write(f, &o->via.array.ptr[i]);
        }
        fputc(']', f);
        break;
    case MSGPACK_OBJECT_MAP:
        fputc('{', f);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (i > 0)
                fputc(',', f);
            if (kv->key.type == MSGPACK_OBJECT_STR) {
                sinkctl_json_str(f, kv->key.via.str.ptr, kv->key.via.str.size);
            } else {
                /* Rare: render the key as JSON, then quote that text. */
                char *text = NULL;
                size_t len = 0;
                FILE *mem = open_memstream(&text, &len);
                if (mem != NULL) {
                    sinkctl_json_write(mem, &kv->key);
                    fclose(mem);
                }
                sinkctl_json_str(f, text != NULL ? text : "", text != NULL ? len : 0);
                free(text);
            }
            fputc(':', f);
            sinkctl_json_write(f, &kv->val);
        }
        fputc('}', f);
        break;
    default:
        fputs("null", f);
        break;
    }
}
