/*
 * Who may run admin ops: root, and members of the configured admin_group
 * (the peer's primary gid, or a supplementary group of the peer's user as
 * getgrouplist(3) lists it).
 */
#ifndef SINKD_AUTH_H
#define SINKD_AUTH_H

#include <stdbool.h>
#include <sys/types.h>

#include "config.h"

/* True when a peer with credentials @uid/@gid is an admin under
 * @admin_group (a group with a NULL name: nobody but root). A user the
 * password database does not know is judged by @gid alone. Can't fail. */
bool sinkd_auth_is_admin(uid_t uid, gid_t gid, const sinkd_cfg_group *admin_group);

#endif /* SINKD_AUTH_H */
