/* Typed field access: each getter's success, -ENOENT and -EINVAL paths. */
#include "proto.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

static sinkd_msg msg;
static msgpack_sbuffer sb;

/* The message the getters read, packed by msgpack-c (not by sinkd). */
static void setup(void)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 15);
#define KEY(k) msgpack_pack_str_with_body(&pk, k, strlen(k))
    KEY("s");   msgpack_pack_str_with_body(&pk, "hi", 2);
    KEY("e");   msgpack_pack_str_with_body(&pk, "", 0);
    KEY("u");   msgpack_pack_uint64(&pk, 5);
    KEY("umax"); msgpack_pack_uint64(&pk, UINT64_MAX);
    KEY("n");   msgpack_pack_int64(&pk, -3);
    KEY("f32"); msgpack_pack_float(&pk, 1.5f);
    KEY("f");   msgpack_pack_double(&pk, -0.125);
    KEY("t");   msgpack_pack_true(&pk);
    KEY("nil"); msgpack_pack_nil(&pk);
    KEY("arr"); msgpack_pack_array(&pk, 2); msgpack_pack_int(&pk, 1); msgpack_pack_int(&pk, 2);
    KEY("m");   msgpack_pack_map(&pk, 1); KEY("x"); msgpack_pack_int(&pk, 1);
    KEY("b");   msgpack_pack_bin_with_body(&pk, "\x01\x02", 2);
    KEY("eb");  msgpack_pack_bin(&pk, 0);
    KEY("dup"); msgpack_pack_int(&pk, 1);
    KEY("dup"); msgpack_pack_int(&pk, 2);
#undef KEY
    const char *why = NULL;
    cr_assert_eq(sinkd_msg_decode((const uint8_t *)sb.data, sb.size, &msg, &why), 0, "%s", why);
}

static void teardown(void)
{
    sinkd_msg_free(&msg);
    sinkd_msg_free(&msg); /* twice is safe */
    msgpack_sbuffer_destroy(&sb);
}

TestSuite(getters, .init = setup, .fini = teardown);

Test(getters, str)
{
    const char *s;
    size_t n;
    cr_assert_eq(sinkd_map_str(&msg.root, "s", &s, &n), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(memcmp(s, "hi", 2), 0);
    cr_assert_eq(sinkd_map_str(&msg.root, "e", &s, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_not_null(s, "an empty str must not come back as NULL");
    cr_assert_eq(sinkd_map_str(&msg.root, "absent", &s, &n), -ENOENT);
    cr_assert_eq(sinkd_map_str(&msg.root, "nil", &s, &n), -ENOENT);
    cr_assert_eq(sinkd_map_str(&msg.root, "u", &s, &n), -EINVAL);
    cr_assert_eq(sinkd_map_str(&msg.root, "b", &s, &n), -EINVAL);
}

Test(getters, u64)
{
    uint64_t v;
    cr_assert_eq(sinkd_map_u64(&msg.root, "u", &v), 0);
    cr_assert_eq(v, 5);
    cr_assert_eq(sinkd_map_u64(&msg.root, "umax", &v), 0);
    cr_assert_eq(v, UINT64_MAX);
    cr_assert_eq(sinkd_map_u64(&msg.root, "n", &v), -EINVAL);
    cr_assert_eq(sinkd_map_u64(&msg.root, "f", &v), -EINVAL);
    cr_assert_eq(sinkd_map_u64(&msg.root, "s", &v), -EINVAL);
    cr_assert_eq(sinkd_map_u64(&msg.root, "absent", &v), -ENOENT);
    cr_assert_eq(sinkd_map_u64(&msg.root, "nil", &v), -ENOENT);
}

Test(getters, i64)
{
    int64_t v;
    cr_assert_eq(sinkd_map_i64(&msg.root, "n", &v), 0);
    cr_assert_eq(v, -3);
    cr_assert_eq(sinkd_map_i64(&msg.root, "u", &v), 0);
    cr_assert_eq(v, 5);
    cr_assert_eq(sinkd_map_i64(&msg.root, "umax", &v), -EINVAL, "over INT64_MAX");
    cr_assert_eq(sinkd_map_i64(&msg.root, "t", &v), -EINVAL);
    cr_assert_eq(sinkd_map_i64(&msg.root, "absent", &v), -ENOENT);
}

Test(getters, f64)
{
    double v;
    cr_assert_eq(sinkd_map_f64(&msg.root, "f", &v), 0);
    cr_assert_float_eq(v, -0.125, 0.0);
    cr_assert_eq(sinkd_map_f64(&msg.root, "f32", &v), 0);
    cr_assert_float_eq(v, 1.5, 0.0);
    cr_assert_eq(sinkd_map_f64(&msg.root, "u", &v), 0);
    cr_assert_float_eq(v, 5.0, 0.0);
    cr_assert_eq(sinkd_map_f64(&msg.root, "n", &v), 0);
    cr_assert_float_eq(v, -3.0, 0.0);
    cr_assert_eq(sinkd_map_f64(&msg.root, "s", &v), -EINVAL);
    cr_assert_eq(sinkd_map_f64(&msg.root, "nil", &v), -ENOENT);
}

Test(getters, bool_array_map_bin)
{
    bool b = false;
    const msgpack_object_array *a;
    const msgpack_object *m;
    const void *p;
    size_t n;
    uint64_t x;

    cr_assert_eq(sinkd_map_bool(&msg.root, "t", &b), 0);
    cr_assert(b);
    cr_assert_eq(sinkd_map_bool(&msg.root, "u", &b), -EINVAL);
    cr_assert_eq(sinkd_map_bool(&msg.root, "absent", &b), -ENOENT);

    cr_assert_eq(sinkd_map_array(&msg.root, "arr", &a), 0);
    cr_assert_eq(a->size, 2);
    cr_assert_eq(a->ptr[1].via.u64, 2);
    cr_assert_eq(sinkd_map_array(&msg.root, "m", &a), -EINVAL);
    cr_assert_eq(sinkd_map_array(&msg.root, "absent", &a), -ENOENT);

    cr_assert_eq(sinkd_map_map(&msg.root, "m", &m), 0);
    cr_assert_eq(sinkd_map_u64(m, "x", &x), 0);
    cr_assert_eq(x, 1);
    cr_assert_eq(sinkd_map_map(&msg.root, "arr", &m), -EINVAL);
    cr_assert_eq(sinkd_map_map(&msg.root, "nil", &m), -ENOENT);

    cr_assert_eq(sinkd_map_bin(&msg.root, "b", &p, &n), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(memcmp(p, "\x01\x02", 2), 0);
    cr_assert_eq(sinkd_map_bin(&msg.root, "eb", &p, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_not_null(p);
    cr_assert_eq(sinkd_map_bin(&msg.root, "s", &p, &n), -EINVAL);
    cr_assert_eq(sinkd_map_bin(&msg.root, "absent", &p, &n), -ENOENT);
}

Test(getters, not_a_map_and_null_outputs)
{
    uint64_t v;
    const msgpack_object *arr = sinkd_map_get(&msg.root, "arr");
    cr_assert_not_null(arr);
    cr_assert_eq(sinkd_map_u64(arr, "u", &v), -EINVAL);
    cr_assert_eq(sinkd_map_u64(NULL, "u", &v), -EINVAL);
    cr_assert_eq(sinkd_map_u64(&msg.root, NULL, &v), -EINVAL);
    cr_assert_eq(sinkd_map_u64(&msg.root, "u", NULL), -EINVAL);
    cr_assert_null(sinkd_map_get(arr, "u"));
    cr_assert_null(sinkd_map_get(&msg.root, "absent"));
}

Test(getters, first_duplicate_wins)
{
    uint64_t v;
    cr_assert_eq(sinkd_map_u64(&msg.root, "dup", &v), 0);
    cr_assert_eq(v, 1);
}

Test(getters, obj_streq)
{
    const msgpack_object *s = sinkd_map_get(&msg.root, "s");
    const msgpack_object *e = sinkd_map_get(&msg.root, "e");
    cr_assert(sinkd_obj_streq(s, "hi"));
    cr_assert_not(sinkd_obj_streq(s, "h"));
    cr_assert_not(sinkd_obj_streq(s, "hii"));
    cr_assert(sinkd_obj_streq(e, ""));
    cr_assert_not(sinkd_obj_streq(sinkd_map_get(&msg.root, "u"), "5"));
    cr_assert_not(sinkd_obj_streq(NULL, "hi"));
    cr_assert_not(sinkd_obj_streq(s, NULL));
}
