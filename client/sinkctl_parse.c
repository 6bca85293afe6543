/*
 * sinkctl: parsing numbers and policy parameters from the command line.
 */
#include "sinkctl.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int sinkctl_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (s == NULL || !isdigit((unsigned char)s[0]))
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

int sinkctl_parse_double(const char *s, double min, double max, double *out)
{
    if (s == NULL || s[0] == '\0')
        return -EINVAL;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v) || v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

bool sinkctl_is_param(const char *s)
{
    if (!isalpha((unsigned char)s[0]) && s[0] != '_')
        return false;
    size_t i = 1;
    while (isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '.' || s[i] == '-')
        i++;
    return s[i] == '=';
}

int sinkctl_join_params(char *const *words, int n, char **out)
{
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        if (!sinkctl_is_param(words[i]))
            return -EINVAL;
        len += strlen(words[i]) + 1;
    }
    *out = NULL;
    if (n == 0)
        return 0;
    char *s = malloc(len);
    if (s == NULL)
        return -ENOMEM;
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        size_t w = strlen(words[i]);
        memcpy(s + off, words[i], w);
        off += w;
        s[off++] = i + 1 < n ? ' ' : '\0';
    }
    *out = s;
    return 0;
}
