#include "auth.h"

#include <grp.h>
#include <pwd.h>
#include <stdlib.h>

#define AUTH__GROUPS_MAX 4096

bool sinkd_auth_is_admin(uid_t uid, gid_t gid, const sinkd_cfg_group *admin_group)
{
    struct passwd pw, *res = NULL;
    char buf[4096];
    gid_t *groups;
    int n = 64;
    bool found = false;

    if (uid == 0)
        return true;
    if (!admin_group || !admin_group->name)
        return false;
    if (gid == admin_group->gid)
        return true;
    if (getpwuid_r(uid, &pw, buf, sizeof buf, &res) != 0 || !res)
        return false;
    for (;;) {
        int want = n;
        groups = malloc((size_t)n * sizeof *groups);
        if (!groups)
            return false;
        if (getgrouplist(pw.pw_name, gid, groups, &n) >= 0)
            break;
        free(groups);
        /* n now holds the number needed; refuse absurd answers. */
        if (n <= want || n > AUTH__GROUPS_MAX)
            return false;
    }
    for (int i = 0; i < n && !found; i++)
        found = groups[i] == admin_group->gid;
    free(groups);
    return found;
}
