/* Native CPU kernels of the exact mode's fixed-point sub-flows (ode_momentum/gradients/fixed_point.py).
 *
 * Each function is one pass over a contiguous int64 state and returns the same integers as the eager
 * torch kernels of fixed_point_kernels.py: every result is defined exactly (floor semantics; the
 * derivations are in fixed_point.py), so only speed differs. The loops are branch-free (the inverse multiply
 * picks one of two loops per block of 256) so that the compiler vectorises them; on x86-64 each is cloned
 * for AVX-512 / AVX2 / baseline and the best clone the CPU supports is picked at load time. Built on first
 * use by native.py (no fast-math, no FMA contraction: the few float operations must round exactly as
 * torch's do) and called through ctypes.
 *
 * Shared contracts: arrays hold `len` elements, are contiguous and do not alias; k is the dyadic exponent
 * of the damping factor n / 2^k with 2^12 <= n < 2^k <= 2^30 (the fast path of fixed_point.py: blocks of
 * one or two inputs); s in [0, 2^k) is the multiply's dither. States satisfy |X|, |V| < 2^62 (the range
 * guard); `flags` outputs are 0.0 where every checked value was in range and +inf otherwise.
 */
#include <math.h>
#include <stdint.h>

typedef int64_t i64;
typedef uint64_t u64;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define RANGE 4611686018427387904.0 /* 2^62 = fixed_point.RANGE */
#define TWO52 4503599627370496.0

/* Round to nearest, ties to even (torch.round), without libm: below 2^52 adding and subtracting 2^52
 * rounds the magnitude once; from 2^52 on a double is already an integer. */
static inline double round_even(double x) {
    const double a = fabs(x);
    return a < TWO52 ? copysign((a + TWO52) - TWO52, x) : x;
}

/* |v| as unsigned (2^63 for INT64_MIN): OR-ed over a loop, it reaches 2^62 iff some |v| does. */
static inline u64 magnitude(i64 v) {
    const i64 sign = v >> 63;
    return (u64)((v ^ sign) - sign);
}

static inline double flag(int bad, u64 acc) { return (bad || acc >= ((u64)1 << 62)) ? INFINITY : 0.0; }

/* floor(num / n) for |num| < 2^62 and 2^12 <= n < 2^32 (inv = 1 / n), and num - n floor(num / n).
 * The truncated estimate num * inv lies within [Q - 1, Q + 2] of Q = floor(num / n) (|num / n| < 2^50 and
 * three roundings of relative size 2^-53 move it by less than 3/8, truncation by less than 1): two
 * downward corrections and one upward, branch-free. */
static inline i64 floor_divmod(i64 num, i64 n, double inv, i64 *rem) {
    i64 q = (i64)((double)num * inv);
    i64 r = num - q * n;
    i64 low = -(i64)(r < 0); /* all ones or zero: a mask, not a multiply */
    q += low, r += low & n;
    low = -(i64)(r < 0);
    q += low, r += low & n;
    const i64 high = -(i64)(r >= n);
    q -= high, r -= high & n;
    *rem = r;
    return q;
}

/* W = floor((V n + s) / 2^k), split as (V >> k) n + floor(((V & mask) n + s) / 2^k) so no product exceeds
 * 2^61; the block of W holds two inputs iff r >= n or r < 2^k - n (r the remainder), and then
 * word' = 2 word + [r >= n]. */
CLONES void damp_push2(const i64 *V, const i64 *word, i64 *W, i64 *word_out, i64 len, i64 n, i64 s, int k) {
    const i64 mask = ((i64)1 << k) - 1, top = ((i64)1 << k) - n;
    for (i64 i = 0; i < len; i++) {
        const i64 v = V[i];
        const i64 P = (v & mask) * n + s;
        const i64 r = P & mask;
        const i64 upper = r >= n, two = upper | (r < top);
        W[i] = (v >> k) * n + (P >> k);
        word_out[i] = two ? ((word[i] << 1) | upper) : word[i];
    }
}

/* The value of damp_push2 alone (inference). */
CLONES void damp_only(const i64 *V, i64 *W, i64 len, i64 n, i64 s, int k) {
    const i64 mask = ((i64)1 << k) - 1;
    for (i64 i = 0; i < len; i++) {
        const i64 v = V[i];
        W[i] = (v >> k) * n + (((v & mask) * n + s) >> k);
    }
}

/* --- the inverse multiply ----------------------------------------------------------------------------------
 * Inverse of damp_push2: the first input of W's block is lo = ceil((W 2^k - s) / n), and the forward's
 * remainder there, e = (lo n + s) mod 2^k, says whether the block holds two inputs (e < 2^k - n); if so the
 * popped bit says which. Two ways to find lo, with the same result: */

/* Any |W| < 2^62: W = a n + b, so lo = a 2^k - floor((s - b 2^k) / n) (|s - b 2^k| < 2^60), and e is that
 * division's remainder (lo n + s = W 2^k + rem). */
static inline i64 first_input_split(i64 W, i64 n, i64 s, int k, double inv, i64 *e) {
    i64 b;
    const i64 a = floor_divmod(W, n, inv, &b);
    const i64 c = floor_divmod(s - (i64)((u64)b << k), n, inv, e);
    return (i64)((u64)a << k) - c;
}

/* |W| < 2^49 (FAST_LIMIT): t = W 2^k - s, estimated in double as (W 2^k - s) / n with three roundings of
 * relative size 2^-53 on |t / n| <= 2 |W| + 2, is within 3/8 of t / n, so the truncated estimate q lies in
 * [Q - 1, Q + 2] (Q = floor(t / n)); r = t - q n is computed modulo 2^64 (its true value lies in (-2n, 2n),
 * so the wrap is exact), then corrected like floor_divmod's. lo = Q + [r > 0], e = lo n - t. */
#define FAST_LIMIT ((u64)1 << 49)
static inline i64 first_input_fast(i64 W, i64 n, i64 s, int k, double inv, double two_k, i64 *e) {
    i64 q = (i64)(((double)W * two_k - (double)s) * inv);
    i64 r = (i64)((((u64)W << k) - (u64)s) - (u64)q * (u64)n);
    i64 low = -(i64)(r < 0);
    q += low, r += low & n;
    low = -(i64)(r < 0);
    q += low, r += low & n;
    const i64 high = -(i64)(r >= n);
    q -= high, r -= high & n;
    const i64 up = -(i64)(r > 0);
    *e = up & (n - r);
    return q - up;
}

/* The inverse multiply and pop over one block of m <= BLOCK elements whose magnitudes OR to `acc`: the fast
 * loop where every |U| < 2^49, the split one otherwise. Returns the wrapping sum of V. */
#define BLOCK 256
#define POP_LOOP(first_input)                                                                                 \
    for (i64 j = 0; j < m; j++) {                                                                              \
        i64 e;                                                                                                 \
        const i64 lo = first_input;                                                                            \
        const i64 w = word[j], two = e < top, v = lo + (two & w);                                              \
        V[j] = v;                                                                                              \
        word_out[j] = two ? w >> 1 : w;                                                                        \
        sum += (u64)v;                                                                                         \
    }
static inline u64 undamp_pop_block(const i64 *U, const i64 *word, i64 *V, i64 *word_out, i64 m, u64 acc, i64 n,
                                   i64 s, int k) {
    const i64 top = ((i64)1 << k) - n;
    const double inv = 1.0 / (double)n, two_k = (double)((i64)1 << k);
    u64 sum = 0;
    if (acc < FAST_LIMIT) {
        POP_LOOP(first_input_fast(U[j], n, s, k, inv, two_k, &e))
    } else {
        POP_LOOP(first_input_split(U[j], n, s, k, inv, &e))
    }
    return sum;
}

static inline i64 block_end(i64 start, i64 len) { return len - start < BLOCK ? len : start + BLOCK; }

CLONES void undamp_pop2(const i64 *W, const i64 *word, i64 *V, i64 *word_out, i64 len, i64 n, i64 s, int k) {
    for (i64 b0 = 0; b0 < len; b0 += BLOCK) {
        const i64 m = block_end(b0, len) - b0;
        u64 acc = 0;
        for (i64 j = 0; j < m; j++)
            acc |= magnitude(W[b0 + j]);
        undamp_pop_block(W + b0, word + b0, V + b0, word_out + b0, m, acc, n, s, k);
    }
}

/* Whether an increment cannot be cast: |x| not below 2^62, or x nan. */
static inline int out_of_range(double x) { return !(fabs(x) < RANGE); }

/* The int64 increment round(x); 0 where out_of_range(x) (the cast would be undefined there; the caller's
 * flag makes the range guard report the step). Branch-free, so the loops vectorise. */
static inline i64 increment(double x) { return (i64)round_even(fabs(x) < RANGE ? x : 0.0); }

/* A loop over i with `fi` the i-th residual value as double, for float32 (f32 = 1) or float64 `f`. */
#define FOR_EACH_F(f, f32, ...)                                                                               \
    if (f32) {                                                                                                 \
        const float *ff_ = (const float *)(f);                                                                 \
        for (i64 i = 0; i < len; i++) {                                                                        \
            const double fi = (double)ff_[i];                                                                  \
            __VA_ARGS__                                                                                        \
        }                                                                                                      \
    } else {                                                                                                   \
        const double *fd_ = (const double *)(f);                                                               \
        for (i64 i = 0; i < len; i++) {                                                                        \
            const double fi = fd_[i];                                                                          \
            __VA_ARGS__                                                                                        \
        }                                                                                                      \
    }

/* V' = V + round(scale f); flags[0]: some |scale f| >= 2^62 or nan; flags[1]: some |V'| >= 2^62.
 * f is float32 (f32 = 1) or float64. */
CLONES void kick(const i64 *V, const void *f, int f32, double scale, i64 *out, i64 len, double *flags) {
    int bad = 0;
    u64 acc = 0;
    FOR_EACH_F(f, f32, {
        const double inc = fi * scale;
        bad |= out_of_range(inc);
        const i64 v = V[i] + increment(inc);
        out[i] = v;
        acc |= magnitude(v);
    })
    flags[0] = flag(bad, 0);
    flags[1] = flag(0, acc);
}

/* V' = V - round(scale f): the inverse of kick, on values the forward guarded. */
CLONES void unkick(const i64 *V, const void *f, int f32, double scale, i64 *out, i64 len) {
    FOR_EACH_F(f, f32, { out[i] = V[i] - increment(fi * scale); })
}

/* X' = X + d with d = V (h == 1) or round(h V); flags[0]: some |d| >= 2^62; flags[1]: some |X'| >= 2^62. */
CLONES void drift(const i64 *X, const i64 *V, double h, i64 *out, i64 len, double *flags) {
    int bad = 0;
    u64 acc_d = 0, acc_x = 0;
    if (h == 1.0) {
        for (i64 i = 0; i < len; i++) {
            const i64 x = X[i] + V[i];
            out[i] = x;
            acc_d |= magnitude(V[i]);
            acc_x |= magnitude(x);
        }
    } else {
        for (i64 i = 0; i < len; i++) {
            const double inc = (double)V[i] * h;
            bad |= out_of_range(inc);
            const i64 x = X[i] + increment(inc);
            out[i] = x;
            acc_x |= magnitude(x);
        }
    }
    flags[0] = flag(bad, acc_d);
    flags[1] = flag(0, acc_x);
}

/* X' = X - d: the inverse of drift. */
CLONES void undrift(const i64 *X, const i64 *V, double h, i64 *out, i64 len) {
    if (h == 1.0) {
        for (i64 i = 0; i < len; i++)
            out[i] = X[i] - V[i];
    } else {
        for (i64 i = 0; i < len; i++)
            out[i] = X[i] - increment((double)V[i] * h);
    }
}

/* x = X / 2^R in float32 (f32 = 1) or float64: one rounding of X, then an exact power-of-two scaling. */
CLONES void decode(const i64 *X, void *out, int f32, double scale, i64 len) {
    if (f32) {
        const float sc = (float)scale;
        float *o = (float *)out;
        for (i64 i = 0; i < len; i++)
            o[i] = (float)X[i] * sc;
    } else {
        double *o = (double *)out;
        for (i64 i = 0; i < len; i++)
            o[i] = (double)X[i] * scale;
    }
}

/* 3 sum(X) + sum(V) modulo 2^64 (an order-free checksum of a state). */
CLONES i64 checksum(const i64 *X, const i64 *V, i64 len) {
    u64 sx = 0, sv = 0;
    for (i64 i = 0; i < len; i++) {
        sx += (u64)X[i];
        sv += (u64)V[i];
    }
    return (i64)(3 * sx + sv);
}

/* --- fused sub-flows: one memory pass where the unfused kernels take two or three ------------------------
 * Every integrator damps and kicks together (v <- g v + c f) and undoes both together; a drift's output is
 * decoded for the next residual evaluation and summed for the checksum. On states larger than the cache
 * the kernels are memory-bound, so each pass saved is time saved. Results are those of the unfused kernels.
 * sums[] receive wrapping int64 sums of the named arrays (for the checksum 3 sum(X) + sum(V)). */

/* kick(damp_push2(V)): W = floor((V n + s) / 2^k) + round(scale f), the one-bit push, flags as kick's,
 * sums[0] = sum(W). */
CLONES void damp_kick2(const i64 *V, const i64 *word, const void *f, int f32, double scale, i64 *W, i64 *word_out,
                       i64 len, i64 n, i64 s, int k, double *flags, i64 *sums) {
    const i64 mask = ((i64)1 << k) - 1, top = ((i64)1 << k) - n;
    int bad = 0;
    u64 acc = 0, sum = 0;
    FOR_EACH_F(f, f32, {
        const i64 v = V[i];
        const i64 P = (v & mask) * n + s;
        const i64 r = P & mask;
        const i64 upper = r >= n, two = upper | (r < top);
        const double inc = fi * scale;
        bad |= out_of_range(inc);
        const i64 w = (v >> k) * n + (P >> k) + increment(inc);
        W[i] = w;
        word_out[i] = two ? ((word[i] << 1) | upper) : word[i];
        acc |= magnitude(w);
        sum += (u64)w;
    })
    flags[0] = flag(bad, 0);
    flags[1] = flag(0, acc);
    sums[0] = (i64)sum;
}

/* The value of damp_kick2 alone (inference): no push, no sum. */
CLONES void damp_kick_only(const i64 *V, const void *f, int f32, double scale, i64 *W, i64 len, i64 n, i64 s,
                           int k, double *flags) {
    const i64 mask = ((i64)1 << k) - 1;
    int bad = 0;
    u64 acc = 0;
    FOR_EACH_F(f, f32, {
        const i64 v = V[i];
        const double inc = fi * scale;
        bad |= out_of_range(inc);
        const i64 w = (v >> k) * n + (((v & mask) * n + s) >> k) + increment(inc);
        W[i] = w;
        acc |= magnitude(w);
    })
    flags[0] = flag(bad, 0);
    flags[1] = flag(0, acc);
}

/* undamp_pop2(unkick(W)): the inverse of damp_kick2; sums[0] = sum(V). Blocked so that the unkicked values,
 * and the choice of the inverse multiply's loop, stay in L1. */
CLONES void unkick_undamp2(const i64 *W, const i64 *word, const void *f, int f32, double scale, i64 *V,
                           i64 *word_out, i64 len, i64 n, i64 s, int k, i64 *sums) {
    i64 U[BLOCK];
    u64 sum = 0;
    for (i64 b0 = 0; b0 < len; b0 += BLOCK) {
        const i64 m = block_end(b0, len) - b0;
        u64 acc = 0;
        if (f32) {
            const float *ff = (const float *)f + b0;
            for (i64 j = 0; j < m; j++) {
                U[j] = W[b0 + j] - increment((double)ff[j] * scale);
                acc |= magnitude(U[j]);
            }
        } else {
            const double *fd = (const double *)f + b0;
            for (i64 j = 0; j < m; j++) {
                U[j] = W[b0 + j] - increment(fd[j] * scale);
                acc |= magnitude(U[j]);
            }
        }
        sum += undamp_pop_block(U, word + b0, V + b0, word_out + b0, m, acc, n, s, k);
    }
    sums[0] = (i64)sum;
}

/* A loop over i writing the decoded x = X' / 2^R into `decoded` (float32 if f32, else float64). */
#define FOR_EACH_DECODED(decoded, f32, dscale, ...)                                                           \
    if (f32) {                                                                                                 \
        float *xf_ = (float *)(decoded);                                                                       \
        const float fs_ = (float)(dscale);                                                                     \
        for (i64 i = 0; i < len; i++) {                                                                        \
            __VA_ARGS__ xf_[i] = (float)x * fs_;                                                               \
        }                                                                                                      \
    } else {                                                                                                   \
        double *xd_ = (double *)(decoded);                                                                     \
        for (i64 i = 0; i < len; i++) {                                                                        \
            __VA_ARGS__ xd_[i] = (double)x * (dscale);                                                         \
        }                                                                                                      \
    }

/* drift, and x = X' / 2^R decoded; sums[0] = sum(X'), sums[1] = sum(V). */
CLONES void drift_decode(const i64 *X, const i64 *V, double h, i64 *out, void *decoded, int f32, double dscale,
                         i64 len, double *flags, i64 *sums) {
    int bad = 0;
    u64 acc_d = 0, acc_x = 0, sx = 0, sv = 0;
    if (h == 1.0) {
        FOR_EACH_DECODED(decoded, f32, dscale,
            const i64 v = V[i];
            const i64 x = X[i] + v;
            out[i] = x;
            acc_d |= magnitude(v);
            acc_x |= magnitude(x);
            sx += (u64)x;
            sv += (u64)v;
        )
    } else {
        FOR_EACH_DECODED(decoded, f32, dscale,
            const i64 v = V[i];
            const double inc = (double)v * h;
            bad |= out_of_range(inc);
            const i64 x = X[i] + increment(inc);
            out[i] = x;
            acc_x |= magnitude(x);
            sx += (u64)x;
            sv += (u64)v;
        )
    }
    flags[0] = flag(bad, acc_d);
    flags[1] = flag(0, acc_x);
    sums[0] = (i64)sx;
    sums[1] = (i64)sv;
}

/* undrift, decoded as drift_decode; sums[0] = sum(X'), sums[1] = sum(V). */
CLONES void undrift_decode(const i64 *X, const i64 *V, double h, i64 *out, void *decoded, int f32, double dscale,
                           i64 len, i64 *sums) {
    u64 sx = 0, sv = 0;
    if (h == 1.0) {
        FOR_EACH_DECODED(decoded, f32, dscale,
            const i64 v = V[i];
            const i64 x = X[i] - v;
            out[i] = x;
            sx += (u64)x;
            sv += (u64)v;
        )
    } else {
        FOR_EACH_DECODED(decoded, f32, dscale,
            const i64 v = V[i];
            const i64 x = X[i] - increment((double)v * h);
            out[i] = x;
            sx += (u64)x;
            sv += (u64)v;
        )
    }
    sums[0] = (i64)sx;
    sums[1] = (i64)sv;
}

/* drift_decode(damp_kick2(V)) in blocks of DRIFT_BLOCK elements, so that the drift reads the new velocity
 * from L1 rather than from a second pass over memory: X' = X + h W, decoded. flags[0..1] as damp_kick2's,
 * flags[2..3] as drift_decode's; sums[0] = sum(X'), sums[1] = sum(W). */
#define DRIFT_BLOCK 1024
CLONES void damp_kick_drift2(const i64 *V, const i64 *word, const void *f, int f32, double scale, const i64 *X,
                             double h, i64 *W, i64 *word_out, i64 *X_out, void *decoded, int dec_f32,
                             double dscale, i64 len, i64 n, i64 s, int k, double *flags, i64 *sums) {
    const i64 f_size = f32 ? 4 : 8, dec_size = dec_f32 ? 4 : 8; /* bytes per element */
    double block_flags[4];
    i64 block_sums[2];
    u64 sx = 0, sw = 0;
    flags[0] = flags[1] = flags[2] = flags[3] = 0.0;
    for (i64 b0 = 0; b0 < len; b0 += DRIFT_BLOCK) {
        const i64 m = len - b0 < DRIFT_BLOCK ? len - b0 : DRIFT_BLOCK;
        damp_kick2(V + b0, word + b0, (const char *)f + b0 * f_size, f32, scale, W + b0, word_out + b0, m, n, s,
                   k, block_flags, block_sums);
        drift_decode(X + b0, W + b0, h, X_out + b0, (char *)decoded + b0 * dec_size, dec_f32, dscale, m,
                     block_flags + 2, block_sums);
        for (int j = 0; j < 4; j++)
            flags[j] = flags[j] > block_flags[j] ? flags[j] : block_flags[j];
        sx += (u64)block_sums[0];
        sw += (u64)block_sums[1];
    }
    sums[0] = (i64)sx;
    sums[1] = (i64)sw;
}

/* --- the float adjoint of the reverse sweep (gradients/reversal.py, _Adjoint) -------------------------------
 * After a damped kick is undone, the adjoint takes ax' = ax + gx (the kick's vector-Jacobian product) and
 * av' = g av; a drift undone next takes av'' = av' + h ax'. One pass instead of three torch operations, each
 * product and sum rounded once in torch's order (g and h as torch converts a Python scalar for the dtype:
 * (float)g for float32 tensors), so the adjoint is bit for bit torch's. unit_h: h == 1, where torch adds ax'
 * itself. */
#define ADJOINT_UNDRIFT(name, T)                                                                                \
    CLONES void name(const T *ax, const T *gx, const T *av, double g, double h, int unit_h, T *ax_out,         \
                     T *av_out, i64 len) {                                                                     \
        const T gt = (T)g, ht = (T)h;                                                                          \
        if (unit_h) {                                                                                          \
            for (i64 i = 0; i < len; i++) {                                                                    \
                const T a = ax[i] + gx[i];                                                                     \
                const T damped = av[i] * gt;                                                                   \
                ax_out[i] = a;                                                                                 \
                av_out[i] = damped + a;                                                                        \
            }                                                                                                  \
        } else {                                                                                               \
            for (i64 i = 0; i < len; i++) {                                                                    \
                const T a = ax[i] + gx[i];                                                                     \
                const T damped = av[i] * gt, shifted = a * ht;                                                 \
                ax_out[i] = a;                                                                                 \
                av_out[i] = damped + shifted;                                                                  \
            }                                                                                                  \
        }                                                                                                      \
    }
ADJOINT_UNDRIFT(adjoint_undrift_f32, float)
ADJOINT_UNDRIFT(adjoint_undrift_f64, double)
