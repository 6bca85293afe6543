/*
 * Token sampling on the host from one row of logits: repetition penalty,
 * then greedy (temperature <= 0) or temperature, top-k, top-p and min-p
 * filtering and a draw from the renormalised distribution.
 *
 * The random numbers come from xoshiro256** (Blackman and Vigna, 2018),
 * seeded through splitmix64: the same seed, parameters and logits give the
 * same tokens on every machine. The generator state is four words in the
 * sampler (sinkd_sampler_state_get/set) so that a session can be saved and
 * resumed with the same stream.
 */
#ifndef SINKD_SAMPLE_H
#define SINKD_SAMPLE_H

#include <stdint.h>

typedef struct sinkd_sample_params {
    float temperature;      /* <= 0: greedy (argmax; ties to the lowest id) */
    int32_t top_k;          /* keep the k most likely; 0 = all */
    float top_p;            /* keep the smallest set with mass >= top_p; 1 = all */
    float min_p;            /* drop tokens with p < min_p * p_max; 0 = none */
    float repeat_penalty;   /* CTRL-style penalty on recent tokens; 1 = none */
    int32_t repeat_last_n;  /* how many recent tokens the penalty looks at */
    uint64_t seed;
} sinkd_sample_params;

#define SINKD_SAMPLE_PARAMS_INIT {0.0f, 0, 1.0f, 0.0f, 1.0f, 64, 0}

typedef struct sinkd_sampler {
    sinkd_sample_params p;
    int32_t n_vocab;
    uint64_t rng[4];        /* xoshiro256** state */
    int32_t *recent;        /* ring of the last repeat_last_n accepted tokens */
    int32_t n_recent, head;
    int32_t *idx;           /* [n_vocab] candidate ids (scratch) */
    float *prob;            /* [n_vocab] candidate probabilities (scratch) */
    uint8_t *seen;          /* [n_vocab] penalty marks (scratch, kept zero) */
} sinkd_sampler;

#define SINKD_SAMPLER_INIT {SINKD_SAMPLE_PARAMS_INIT, 0, {0, 0, 0, 0}, 0, 0, 0, 0, 0, 0}

/* Set up @s for a vocabulary of @n_vocab with parameters @p (copied), the
 * generator seeded from p->seed. Errors: -EINVAL (n_vocab < 1, top_p or
 * min_p outside [0, 1], repeat_penalty <= 0, top_k or repeat_last_n < 0,
 * a non-finite temperature), -ENOMEM; @s is then left as SINKD_SAMPLER_INIT. */
int sinkd_sampler_init(sinkd_sampler *s, int32_t n_vocab, const sinkd_sample_params *p);

/* Release the buffers; @s is back to SINKD_SAMPLER_INIT. */
void sinkd_sampler_free(sinkd_sampler *s);

/* Choose a token from @logits[n_vocab] (modified in place: penalties and
 * temperature are applied to it) and write it to *@out. It is not added to
 * the penalty history: call sinkd_sampler_accept. Errors: -EINVAL (NULL
 * arguments, a NaN logit). */
int sinkd_sampler_sample(sinkd_sampler *s, float *logits, int32_t *out);

/* Record @tok (a prompt or generated token) in the penalty history. */
void sinkd_sampler_accept(sinkd_sampler *s, int32_t tok);

/* Save / restore the generator state (not the history). */
void sinkd_sampler_state_get(const sinkd_sampler *s, uint64_t state[4]);
void sinkd_sampler_state_set(sinkd_sampler *s, const uint64_t state[4]);

/* The next 64 random bits of @state (xoshiro256**). */
uint64_t sinkd_xoshiro_next(uint64_t state[4]);

#endif /* SINKD_SAMPLE_H */
