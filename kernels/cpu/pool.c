/*
 * A minimal fork-join thread pool: cpu__pool_run hands out the task indices
 * of one parallel loop through an atomic counter to n_threads - 1 workers and
 * the calling thread, and returns when every task has finished. One loop at a
 * time (the backend has one stream, so ops never overlap).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "cpu.h"

struct cpu__pool {
    pthread_mutex_t mu;
    pthread_cond_t wake;   /* workers: a new generation or stop */
    pthread_cond_t done;   /* caller: the last worker left the loop */
    pthread_t *threads;
    int n_workers;
    int stop;
    uint64_t gen;
    int busy;              /* workers still inside the current loop */
    cpu__task_fn fn;
    void *ctx;
    int64_t n_tasks;
    _Atomic int64_t next;
};

typedef struct worker_arg {
    cpu__pool *p;
    int tid;
} worker_arg;

static void run_tasks(cpu__pool *p, int tid)
{
    int64_t t;
    while ((t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed)) < p->n_tasks)
        p->fn(p->ctx, t, tid);
}

static void *worker_main(void *arg)
{
    cpu__pool *p = ((worker_arg *)arg)->p;
    int tid = ((worker_arg *)arg)->tid;
    uint64_t seen = 0;

    free(arg);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->gen == seen)
            pthread_cond_wait(&p->wake, &p->mu);
        if (p->stop)
            break;
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        run_tasks(p, tid);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int cpu__pool_init(cpu__pool **out, int n_threads)
{
    if (!out || n_threads < 1)
        return -EINVAL;
    cpu__pool *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return -ENOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 1; i < n_threads; i++) {
        worker_arg *a = malloc(sizeof *a);
        int rc = a ? 0 : ENOMEM;
        if (a) {
            a->p = p;
            a->tid = i;
            rc = pthread_create(&p->threads[p->n_workers], NULL, worker_main, a);
            if (rc)
                free(a);
        }
        if (rc) {
            cpu__pool_free(p);
            return -rc;
        }
        p->n_workers++;
    }
    *out = p;
    return 0;
}

void cpu__pool_free(cpu__pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_workers; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->done);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}

void cpu__pool_run(cpu__pool *p, int64_t n_tasks, cpu__task_fn fn, void *ctx)
{
    if (n_tasks <= 0)
        return;
    if (p->n_workers == 0 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; t++)
            fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    p->busy = p->n_workers;
    p->gen++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    run_tasks(p, 0);

    pthread_mutex_lock(&p->mu);
    while (p->busy > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
