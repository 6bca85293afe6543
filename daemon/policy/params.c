/*
 * Policy parameters ("budget=256 window=64") and the services a plugin gets
 * through sinkd_policy_host: typed, range-checked reads with messages that
 * name the key, so every policy reports bad input the same way.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static _Atomic(void (*)(int, const char *)) policy__log_fn;

void sinkd_policy_set_log(void (*fn)(int prio, const char *line))
{
    atomic_store(&policy__log_fn, fn);
}

void policy__log(int prio, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    void (*fn)(int, const char *) = atomic_load(&policy__log_fn);
    if (fn != NULL) {
        fn(prio, line);
        return;
    }
    char out[1100];
    int n = snprintf(out, sizeof out, "<%d>policy: %s\n", prio, line);
    if (n > 0) {
        ssize_t w = write(STDERR_FILENO, out, (size_t)n < sizeof out ? (size_t)n : sizeof out - 1);
        (void)w;
    }
}

static int params__key_ok(const char *k, size_t n)
{
    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(islower((unsigned char)k[i]) || isdigit((unsigned char)k[i]) || k[i] == '_'))
            return 0;
    return 1;
}

int policy__params_parse(sinkd_policy_params *p, const char *text, char *err, size_t errlen)
{
    memset(p, 0, offsetof(sinkd_policy_params, buf));
    p->buf[0] = '\0';
    if (text == NULL)
        return 0;
    size_t len = strlen(text);
    if (len > POLICY__PARAMS_LEN) {
        snprintf(err, errlen, "parameters longer than %d bytes", POLICY__PARAMS_LEN);
        return -EINVAL;
    }
    memcpy(p->buf, text, len + 1);
    char *save = NULL;
    for (char *tok = strtok_r(p->buf, " \t\n", &save); tok != NULL;
         tok = strtok_r(NULL, " \t\n", &save)) {
        char *eq = strchr(tok, '=');
        if (eq == NULL || !params__key_ok(tok, (size_t)(eq - tok)) || eq[1] == '\0') {
            snprintf(err, errlen, "parameter '%.64s' is not key=value", tok);
            return -EINVAL;
        }
        *eq = '\0';
        for (int32_t i = 0; i < p->n; i++) {
            if (strcmp(p->kv[i].key, tok) == 0) {
                snprintf(err, errlen, "parameter '%s' given twice", tok);
                return -EINVAL;
            }
        }
        if (p->n == POLICY__PARAMS_MAX) {
            snprintf(err, errlen, "more than %d parameters", POLICY__PARAMS_MAX);
            return -EINVAL;
        }
        p->kv[p->n].key = tok;
        p->kv[p->n].value = eq + 1;
        p->n++;
    }
    return 0;
}

static int params__find(const sinkd_policy_params *p, const char *key)
{
    for (int32_t i = 0; i < p->n; i++)
        if (strcmp(p->kv[i].key, key) == 0)
            return i;
    return -1;
}

int policy__params_take(sinkd_policy_params *p, const char *key, char *value, size_t valuelen)
{
    int i = params__find(p, key);
    int n = snprintf(value, valuelen, "%s", i < 0 ? "" : p->kv[i].value);
    if (i < 0)
        return 0;
    p->kv[i] = p->kv[--p->n];
    return n >= 0 && (size_t)n < valuelen ? 1 : -E2BIG;
}

static int32_t params__fail(const sinkd_policy_params *cp, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The params object is const to the plugin but the host records errors in
 * it: it is always one the host allocated writable. */
static int32_t params__fail(const sinkd_policy_params *cp, const char *fmt, ...)
{
    sinkd_policy_params *p = (sinkd_policy_params *)cp;
    if (p->err[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err, sizeof p->err, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* Look up @key, marking it read. NULL when absent. */
static const char *params__get(const sinkd_policy_params *cp, const char *key)
{
    sinkd_policy_params *p = (sinkd_policy_params *)cp;
    int i = key != NULL ? params__find(p, key) : -1;
    if (i < 0)
        return NULL;
    p->kv[i].used = 1;
    return p->kv[i].value;
}

/* The typed readers' prologue: 1 with *v when @key is present, 0 when it is
 * absent (the caller stores its default), -EINVAL for NULL arguments. */
static int params__value(const sinkd_policy_params *p, const char *key, const void *out,
                         const char **v)
{
    if (p == NULL || out == NULL)
        return -EINVAL;
    *v = params__get(p, key);
    errno = 0;
    return *v != NULL;
}

static int32_t params__int(const sinkd_policy_params *p, const char *key, int64_t def,
                           int64_t min, int64_t max, int64_t *out)
{
    const char *v;
    char *end;
    int rc = params__value(p, key, out, &v);
    if (rc == 0)
        *out = def;
    if (rc <= 0)
        return rc;
    long long x = strtoll(v, &end, 10);
    if (errno != 0 || *end != '\0' || end == v || x < min || x > max)
        return params__fail(p, "%s: expected an integer in [%" PRId64 ", %" PRId64 "], got '%.40s'",
                            key, min, max, v);
    *out = x;
    return 0;
}

static int32_t params__float(const sinkd_policy_params *p, const char *key, double def,
                             double min, double max, double *out)
{
    const char *v;
    char *end;
    int rc = params__value(p, key, out, &v);
    if (rc == 0)
        *out = def;
    if (rc <= 0)
        return rc;
    double x = strtod(v, &end);
    if (errno != 0 || *end != '\0' || end == v || !isfinite(x) || x < min || x > max)
        return params__fail(p, "%s: expected a number in [%g, %g], got '%.40s'", key, min, max, v);
    *out = x;
    return 0;
}

static int32_t params__str(const sinkd_policy_params *p, const char *key, const char **out)
{
    if (p == NULL || out == NULL)
        return -EINVAL;
    *out = params__get(p, key);
    return 0;
}

static int32_t params__choice(const sinkd_policy_params *p, const char *key,
                              const char *const *choices, int32_t n, int32_t def, int32_t *out)
{
    if (p == NULL || choices == NULL || n < 1 || out == NULL)
        return -EINVAL;
    const char *v = params__get(p, key);
    if (v == NULL) {
        *out = def;
        return 0;
    }
    char list[256] = "";
    for (int32_t i = 0; i < n; i++) {
        if (strcmp(v, choices[i]) == 0) {
            *out = i;
            return 0;
        }
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", choices[i]);
    }
    return params__fail(p, "%s: expected one of %s, got '%.40s'", key, list, v);
}

static int32_t params__plugin_fail(const sinkd_policy_params *p, const char *msg)
{
    if (p == NULL)
        return -EINVAL;
    return params__fail(p, "%s", msg != NULL ? msg : "invalid parameters");
}

int policy__params_finish(const sinkd_policy_params *p, const char *policy, int rc,
                          char *err, size_t errlen)
{
    if (p->err[0] != '\0') {
        snprintf(err, errlen, "%s: %s", policy, p->err);
        return rc < 0 ? rc : -EINVAL;
    }
    if (rc < 0) {
        snprintf(err, errlen, "%s: create failed: %s", policy, strerror(-rc));
        return rc;
    }
    for (int32_t i = 0; i < p->n; i++) {
        if (!p->kv[i].used) {
            snprintf(err, errlen, "%s: unknown parameter '%s'", policy, p->kv[i].key);
            return -EINVAL;
        }
    }
    return 0;
}

static void host__log(const sinkd_policy_host *host, int32_t level, const char *msg)
{
    if (level < SINKD_POLICY_LOG_ERR || level > SINKD_POLICY_LOG_DEBUG)
        level = SINKD_POLICY_LOG_INFO;
    policy__log(level, "%s: %s", (const char *)host->ctx, msg != NULL ? msg : "");
}

void policy__host_init(sinkd_policy_host *host, const char *name)
{
    memset(host, 0, sizeof *host);
    host->struct_size = sizeof *host;
    host->abi_minor = SINKD_POLICY_ABI_MINOR;
    host->log = host__log;
    host->param_int = params__int;
    host->param_float = params__float;
    host->param_str = params__str;
    host->param_choice = params__choice;
    host->param_fail = params__plugin_fail;
    host->ctx = (void *)name;
}
