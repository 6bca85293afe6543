/*
 * sinkctl eval: the reference logits file. The recompute oracle costs a
 * prefill of C tokens per position; a sweep over policies and budgets
 * compares all of them with the same reference, so it is computed once and
 * read back for the others. The header pins the stream (model, reference,
 * context, token ids), so a file is never used for a stream it was not made
 * for.
 */
#include "sinkctl_eval.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define REFCACHE_MAGIC "SKEVREF1"

typedef struct refcache_head {
    char magic[8];
    char model[64];
    char ref[16];
    uint32_t n_vocab;
    uint32_t ref_ctx;
    uint64_t n_tokens;
    uint64_t ids_hash;
} refcache_head;

_Static_assert(sizeof(refcache_head) == 112, "no padding in the file header");

static uint64_t refcache__hash(const int32_t *ids, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)ids[i];
        for (int b = 0; b < 4; b++) {
            h ^= (v >> (8 * b)) & 0xff;
            h *= 0x100000001b3ull;
        }
    }
    return h;
}

int sinkctl_eval_refcache_open(sinkctl_eval_refcache *c, const char *path,
                               const char *model, const char *ref, uint32_t ref_ctx,
                               uint32_t n_vocab, const int32_t *ids, size_t n,
                               char *err, size_t errlen)
{
    if (c == NULL || path == NULL || model == NULL || ref == NULL || ids == NULL ||
        n_vocab == 0 || c->f != NULL)
        return -EINVAL;
    refcache_head want = { .n_vocab = n_vocab, .ref_ctx = ref_ctx, .n_tokens = n,
                           .ids_hash = refcache__hash(ids, n) };
    memcpy(want.magic, REFCACHE_MAGIC, sizeof(want.magic));
    strncpy(want.model, model, sizeof(want.model) - 1);
    strncpy(want.ref, ref, sizeof(want.ref) - 1);
    if ((size_t)snprintf(c->path, sizeof(c->path), "%s", path) >= sizeof(c->path) ||
        (size_t)snprintf(c->tmp, sizeof(c->tmp), "%s.%ld.tmp", path, (long)getpid()) >=
            sizeof(c->tmp)) {
        c->path[0] = c->tmp[0] = '\0';
        return -ENAMETOOLONG;
    }

    FILE *f = fopen(path, "rb");
    if (f != NULL) {
        refcache_head got;
        bool same = fread(&got, sizeof(got), 1, f) == 1 && memcmp(&got, &want, sizeof(got)) == 0;
        if (!same) {
            fclose(f);
            snprintf(err, errlen, "%s was made for another stream, model or reference "
                     "(remove it to recompute)", path);
            c->path[0] = c->tmp[0] = '\0';
            return -EINVAL;
        }
        c->f = f;
        c->writing = false;
    } else if (errno != ENOENT) {
        int e = errno;
        c->path[0] = c->tmp[0] = '\0';
        return -e;
    } else {
        f = fopen(c->tmp, "wb");
        if (f == NULL || fwrite(&want, sizeof(want), 1, f) != 1) {
            int e = f != NULL ? EIO : errno;
            if (f != NULL) {
                fclose(f);
                unlink(c->tmp);
            }
            c->path[0] = c->tmp[0] = '\0';
            return -e;
        }
        c->f = f;
        c->writing = true;
    }
    c->n_vocab = n_vocab;
    return 0;
}

int sinkctl_eval_refcache_read(sinkctl_eval_refcache *c, float *logits)
{
    if (c->f == NULL || c->writing)
        return -EINVAL;
    return fread(logits, sizeof(float), c->n_vocab, c->f) == c->n_vocab ? 0 : -EIO;
}

int sinkctl_eval_refcache_write(sinkctl_eval_refcache *c, const float *logits)
{
    if (c->f == NULL || !c->writing)
        return -EINVAL;
    return fwrite(logits, sizeof(float), c->n_vocab, c->f) == c->n_vocab ? 0 : -EIO;
}

int sinkctl_eval_refcache_finish(sinkctl_eval_refcache *c, bool keep)
{
    int rc = 0;
    if (c->f != NULL) {
        if (fclose(c->f) != 0)
            rc = -EIO;
        if (c->writing) {
            if (keep && rc == 0 && rename(c->tmp, c->path) != 0)
                rc = -errno;
            if (!keep || rc != 0)
                unlink(c->tmp);
        }
    }
    *c = (sinkctl_eval_refcache)SINKCTL_EVAL_REFCACHE_INIT;
    return rc;
}
