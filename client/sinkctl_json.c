/*
 * sinkctl: msgpack objects as JSON. Map keys that are not strings are
 * written as their JSON text in a string, so the output is always valid
 * JSON; bin becomes base64, ext and non-finite floats become null.
 */
#include "sinkctl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sinkctl_json_str(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
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
