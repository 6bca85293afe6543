/* Decode batch selection: which generating sessions the next step runs.
 *
 * Fairness is per uid first, then per session: each round of the fill takes
 * at most one session of every uid, so a uid with a hundred generating
 * sessions and a uid with one share the batch slot for slot, and within a
 * uid its sessions take turns. Order inside a round, and which of a uid's
 * sessions goes next, is least recently served first (each session carries
 * the step number that last served it), so nobody waits more than
 * ceil(sessions of its uid / slots its uid gets) steps. */
#include "engine_internal.h"

#include <stdlib.h>

typedef struct eng_sched_cand {
    eng_session *s;
    uint64_t stamp;
    uint64_t id;
} eng_sched_cand;

static int sched__cmp(const void *pa, const void *pb)
{
    const eng_sched_cand *a = pa, *b = pb;

    if (a->stamp != b->stamp)
        return a->stamp < b->stamp ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* Grow the candidate scratch to @n entries; false when out of memory. */
static bool sched__reserve(eng_sched *sc, size_t n)
{
    eng_sched_cand *p;
    size_t cap;

    if (sc->cap >= n)
        return true;
    cap = n < 64 ? 64 : n + n / 2;
    p = realloc(sc->cand, cap * sizeof *p);
    if (!p)
        return false;
    sc->cand = p;
    sc->cap = cap;
    return true;
}

/* True when a session of @uid is among the @n of this round in @taken. */
static bool sched__uid_taken(uint32_t uid, eng_session *const *taken, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        if (taken[i]->uid == uid)
            return true;
    return false;
}

int32_t eng_sched_fill(sinkd_engine *e)
{
    eng_sched *sc = &e->sched;
    size_t nc = 0;
    int32_t n = 0;

    /* Cancelled generations end first (finishing removes no session). */
    for (size_t i = 0; i < e->n_sess; i++)
        if (e->sess[i]->gen && e->sess[i]->cancel)
            eng_gen_finish(e, e->sess[i], "cancelled", false);
    if (!sched__reserve(sc, e->n_sess)) {
        for (size_t i = 0; i < e->n_sess && n < e->max_batch; i++)
            if (e->sess[i]->gen && e->sess[i]->feed >= 0)
                e->batch[n++] = e->sess[i];
        return n;
    }
    for (size_t i = 0; i < e->n_sess; i++) {
        eng_session *s = e->sess[i];
        if (s->gen && s->feed >= 0)
            sc->cand[nc++] = (eng_sched_cand){ s, s->sched_stamp, s->id };
    }
    qsort(sc->cand, nc, sizeof *sc->cand, sched__cmp);
    sc->step++;
    /* Rounds: walk the candidates oldest first, one per uid per round. A
     * taken candidate's slot is cleared so later rounds skip it. */
    while (n < e->max_batch) {
        int32_t round = n;
        for (size_t i = 0; i < nc && n < e->max_batch; i++) {
            eng_session *s = sc->cand[i].s;
            if (!s || sched__uid_taken(s->uid, e->batch + round, n - round))
                continue;
            s->sched_stamp = sc->step;
            e->batch[n++] = s;
            sc->cand[i].s = NULL;
        }
        if (n == round)
            break;
    }
    return n;
}

void eng_sched_free(sinkd_engine *e)
{
    free(e->sched.cand);
    e->sched.cand = NULL;
    e->sched.cap = 0;
}
