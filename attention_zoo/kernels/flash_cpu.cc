// Flash attention on CPU as XLA FFI custom calls: forward (output and log-sum-exp) and
// backward (dq, dk, dv), float32, [B, T, N, H] queries and [B, S, K, H] keys/values
// (K divides N: grouped-query attention), causal (top-left aligned, as
// jax.nn.dot_product_attention) or not, with a query and a key padding length per batch row.
//
// Why a kernel of our own: XLA's block products and the softmax between them are separate
// loops over memory; here each panel of query rows takes its scores, softmax and output
// update while they are in L1, the products are register-blocked micro-kernels on key and
// value blocks packed once per query block, and the exponentials are a vectorised exp2 (the
// scale times log2(e) is folded into the packed keys). Scores are in base 2 throughout; the
// log-sum-exp saved for the backward is too.
//
// The code is written once in GCC's vector extensions, for vectors of 8 floats (AVX2) or of
// 16 (AVX-512F, the default where the compiler targets it). -DZOO_VECTOR_FLOATS=16 builds the
// AVX-512 layout on an AVX2 machine too (each vector then a pair of AVX2 registers: slow, the
// same arithmetic), which is how that layout is tested on CPUs without AVX-512.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#ifndef ZOO_VECTOR_FLOATS
#ifdef __AVX512F__
#define ZOO_VECTOR_FLOATS 16
#else
#define ZOO_VECTOR_FLOATS 8
#endif
#endif

namespace {

constexpr int kLanes = ZOO_VECTOR_FLOATS;
static_assert(kLanes == 8 || kLanes == 16, "ZOO_VECTOR_FLOATS is 8 (AVX2) or 16 (AVX-512)");
typedef float Vec __attribute__((vector_size(4 * kLanes)));
typedef int32_t Ints __attribute__((vector_size(4 * kLanes)));

inline Vec splat(float x) { return x - Vec{}; }  // (0 + x would not be x for x = -0)
inline Vec load(const float* p) {  // any alignment (memcpy: no aliasing questions)
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }
// The larger of a and b, or b where either is NaN (x86's max; a NaN b stays).
inline Vec max(Vec a, Vec b) { return a > b ? a : b; }

// 2^x per lane: x = n + r with n = round(x), |r| <= 1/2, 2^r by a degree-5 polynomial
// (fitted to the relative error: at most 2.4e-7, 2 float32 ulps). x is clamped at -126,
// whose 2^-126 = 1.2e-38 is below float32's resolution of any sum it joins (masked
// scores are zeroed, never exponentiated); the clamp keeps a NaN a NaN. Callers pass x <= ~0
// (scores minus their maximum or log-sum-exp), where adding 1.5 2^23 rounds to an integer.
inline Vec exp2v(Vec x) {
  x = max(splat(-126.f), x);
  const Vec round = splat(12582912.f);
  const Vec n = (x + round) - round;
  const Vec r = x - n;
  Vec p = splat(1.3276407e-3f);
  p = p * r + 9.6755408e-3f;  // contracted to FMAs (-ffp-contract=fast)
  p = p * r + 5.5507135e-2f;
  p = p * r + 2.4022120e-1f;
  p = p * r + 6.9314697e-1f;
  p = p * r + 1.0000001f;
  const Ints e = (__builtin_convertvector(n, Ints) + 127) << 23;
  return p * reinterpret_cast<const Vec&>(e);
}

inline float hsum(Vec v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

inline float hmax(Vec v) {
  float s = v[0];
  for (int i = 1; i < kLanes; ++i) s = std::max(s, v[i]);
  return s;
}

// The columns of query row i (absolute) that may attend the key block starting at k0 with
// `cols` columns: all of them, or under causal masking those with key <= query.
inline int64_t visible(bool causal, int64_t i, int64_t k0, int64_t cols) {
  return causal ? std::clamp<int64_t>(i - k0 + 1, 0, cols) : cols;
}

// A padding length clipped to [0, n] (jax.nn.dot_product_attention's lengths).
inline int64_t clip_length(int32_t length, int64_t n) {
  return std::clamp<int64_t>(length, 0, n);
}

struct Shape {
  int64_t B, T, S, N, K, H;
  int64_t ldq() const { return N * H; }
  int64_t ldk() const { return K * H; }
};

template <typename Buf>
Shape shape_of(const Buf& q, const Buf& k) {
  auto dq = q.dimensions();
  auto dk = k.dimensions();
  return {dq[0], dq[1], dk[1], dq[2], dk[2], dq[3]};
}

// Every block product is a register-blocked micro-kernel of our own (OpenBLAS's sgemm, used
// before, packed the query block again for every key block, and its speed depended on the
// process's history). A micro-tile is kRows rows by kCols = 2 vectors of columns: 6 x 16 in
// 12 of AVX2's 16 registers, 12 x 32 in 24 of AVX-512's 32; per step two loads of the packed
// operand, kRows broadcasts and 2 kRows FMAs. (The `unroll` pragmas on the row loops let GCC
// keep the accumulators in registers: without them it stored every accumulator to the stack
// after each FMA.)
constexpr int64_t kRows = kLanes == 16 ? 12 : 6, kCols = 2 * kLanes;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// c[R x kCols] = A . b over n steps, plus c (times rescale, per row, unless null) when
// Accumulate, where A(r, x) = a[r a_row + x a_step] (a row-major block, or a transposed one)
// and b is packed [n][ldb] at its column.
template <int R, bool Accumulate>
inline void tile(const float* a, int64_t a_row, int64_t a_step, const float* b, int64_t ldb,
                 int64_t n, const float* rescale, float* c, int64_t ldc) {
  Vec acc[R][2];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    if constexpr (Accumulate) {
      const Vec f = splat(rescale ? rescale[r] : 1.f);
      acc[r][0] = f * load(c + r * ldc);
      acc[r][1] = f * load(c + r * ldc + kLanes);
    } else {
      acc[r][0] = acc[r][1] = Vec{};
    }
  }
#pragma GCC unroll 4
  for (int64_t x = 0; x < n; ++x) {
    const Vec b0 = load(b + x * ldb), b1 = load(b + x * ldb + kLanes);
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const Vec ar = splat(a[r * a_row + x * a_step]);
      acc[r][0] += ar * b0;
      acc[r][1] += ar * b1;
    }
  }
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    store(c + r * ldc, acc[r][0]);
    store(c + r * ldc + kLanes, acc[r][1]);
  }
}

// tile<R> for the rows at hand (1 to kRows).
template <bool Accumulate, int R = kRows>
inline void tile_rows(int64_t rows, const float* a, int64_t a_row, int64_t a_step,
                      const float* b, int64_t ldb, int64_t n, const float* rescale, float* c,
                      int64_t ldc) {
  if constexpr (R > 1) {
    if (rows < R)
      return tile_rows<Accumulate, R - 1>(rows, a, a_row, a_step, b, ldb, n, rescale, c, ldc);
  }
  tile<R, Accumulate>(a, a_row, a_step, b, ldb, n, rescale, c, ldc);
}

// c[rows x Hp] = c * rescale (1 where null) + A . b, one kCols-column panel of c (and of b,
// [n][Hp]) at a time.
inline void product(int64_t rows, const float* a, int64_t a_row, int64_t a_step, const float* b,
                    int64_t Hp, int64_t n, const float* rescale, float* c) {
  for (int64_t h0 = 0; h0 < Hp; h0 += kCols)
    tile_rows<true>(rows, a, a_row, a_step, b + h0, Hp, n, rescale, c + h0, Hp);
}

// s[rows x kCols tiles] = q[rows, stride ldq] . kt (packed K^T panels [H][kCols]).
inline void scores(int64_t rows, const float* q, int64_t ldq, const float* kt, int64_t H,
                   int64_t tiles, float* s, int64_t lds) {
  for (int64_t t = 0; t < tiles; ++t)
    tile_rows<false>(rows, q, ldq, 1, kt + t * H * kCols, kCols, H, nullptr, s + t * kCols, lds);
}

// Packs rows [n, ld] times `factor` as K^T-style panels [n / kCols][H][kCols] (zero past n).
inline void pack_transposed(const float* src, int64_t ld, int64_t n, int64_t H, float factor,
                            float* dst) {
  std::fill(dst, dst + round_up(n, kCols) * H, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    float* to = dst + j / kCols * H * kCols + j % kCols;
    for (int64_t h = 0; h < H; ++h) to[h * kCols] = factor * src[j * ld + h];
  }
}

// Packs rows [n, ld] as [n][Hp] (zero past H).
inline void pack_rows(const float* src, int64_t ld, int64_t n, int64_t H, int64_t Hp,
                      float* dst) {
  for (int64_t j = 0; j < n; ++j) {
    std::copy(src + j * ld, src + j * ld + H, dst + j * Hp);
    std::fill(dst + j * Hp + H, dst + (j + 1) * Hp, 0.f);
  }
}

// n floats aligned to a cache line, so that no vector load of a packed block straddles two
// (per thread).
struct Aligned {
  explicit Aligned(int64_t n) : v(n + 16) {}
  float* get() {
    return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t{63});
  }
  std::vector<float> v;
};

// Scores to probabilities in place for one row: si[0, seen) are this key block's visible
// scores (base 2), m and l the row's running maximum and sum. Returns the factor by which the
// row's accumulated output shrinks; zeroes si[seen, width).
inline float softmax_row(float* si, int64_t seen, int64_t width, float& m, float& l) {
  if (seen == 0) {  // a causal row before this block: nothing to add
    std::fill(si, si + width, 0.f);
    return 1.f;
  }
  // The row maximum. It may skip a NaN score (a NaN in q or k), but that score's probability
  // is NaN (exp2v keeps NaN), and so the row's sum, output and log-sum-exp, as in the oracle.
  Vec vmax = splat(-INFINITY);
  int64_t j = 0;
  for (; j + kLanes <= seen; j += kLanes) vmax = max(vmax, load(si + j));
  float mx = std::max(m, hmax(vmax));
  for (; j < seen; ++j) mx = std::max(mx, si[j]);
  const Vec vm = splat(mx);
  Vec vsum{};
  for (j = 0; j + kLanes <= seen; j += kLanes) {
    const Vec p = exp2v(load(si + j) - vm);
    store(si + j, p);
    vsum += p;
  }
  float sum = hsum(vsum);
  for (; j < seen; ++j) sum += (si[j] = std::exp2(si[j] - mx));
  std::fill(si + seen, si + width, 0.f);
  const float c = std::exp2(m - mx);  // 0 on the first block (m = -inf)
  l = l * c + sum;
  m = mx;
  return c;
}

// One panel of `rows` query rows (absolute row i0) against a packed key block: scores,
// softmax, then acc += P V. Only the columns some row of the panel sees are computed.
inline void forward_panel(int64_t rows, const float* q, int64_t ldq, const float* kt,
                          const float* vb, int64_t H, int64_t Hp, bool causal, int64_t i0,
                          int64_t k0, int64_t cols, float* s, int64_t lds, float* m, float* l,
                          float* acc) {
  const int64_t width = visible(causal, i0 + rows - 1, k0, cols);  // the last row sees most
  if (width == 0) return;
  scores(rows, q, ldq, kt, H, (width + kCols - 1) / kCols, s, lds);
  float rescale[kRows];
  for (int64_t r = 0; r < rows; ++r)
    rescale[r] = softmax_row(s + r * lds, visible(causal, i0 + r, k0, cols), width, m[r], l[r]);
  product(rows, s, lds, 1, vb, Hp, width, rescale, acc);
}

// Per (batch, head, block_q query rows): per key block, K^T (times the scale in base 2) and V
// are packed into kCols-column panels (zero past the block and past H), then each kRows-row
// panel of the query block takes its scores, softmax and output update while they are in L1.
// Query rows at or past their batch's query length, and rows that see no key (a key length
// of 0), get zeros and a log-sum-exp of -inf; keys at or past the key length are never seen.
ffi::Error FlashForward(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                        ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> q_lengths,
                        ffi::Buffer<ffi::S32> kv_lengths, ffi::ResultBuffer<ffi::F32> out,
                        ffi::ResultBuffer<ffi::F32> lse, float scale, bool causal,
                        int64_t block_q, int64_t block_k, int64_t threads) {
  const Shape d = shape_of(q, k);
  const int64_t H = d.H, ldq = d.ldq(), ldk = d.ldk(), group = d.N / d.K;
  const int64_t Hp = round_up(H, kCols), bk = round_up(block_k, kCols);
  const float* Q = q.typed_data();
  const float* Kp = k.typed_data();
  const float* V = v.typed_data();
  const int32_t* QL = q_lengths.typed_data();
  const int32_t* KL = kv_lengths.typed_data();
  float* O = out->typed_data();
  float* L = lse->typed_data();
  const float scale2 = scale * 1.4426950408889634f;  // scores in base 2
  const int64_t nq = (d.T + block_q - 1) / block_q;
  const int64_t tasks = d.B * d.N * nq;
#pragma omp parallel num_threads(threads)
  {
    const int64_t lds = bk;
    Aligned kt_(bk * H), vb_(bk * Hp), acc_(block_q * Hp);
    float *kt = kt_.get(), *vb = vb_.get(), *acc = acc_.get();
    std::vector<float> s(kRows * lds), m(block_q), l(block_q);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      // Last query blocks first: under causal masking they are the longest, and the
      // short ones then fill the threads' tails.
      const int64_t b = t / (d.N * nq), n = t / nq % d.N, q0 = (nq - 1 - t % nq) * block_q;
      const int64_t rows = std::min(block_q, d.T - q0);
      const int64_t live = std::clamp<int64_t>(clip_length(QL[b], d.T) - q0, 0, rows);
      const int64_t S = clip_length(KL[b], d.S);
      const float* qp = Q + (b * d.T + q0) * ldq + n * H;
      const float* kp = Kp + b * d.S * ldk + (n / group) * H;
      const float* vp = V + b * d.S * ldk + (n / group) * H;
      std::fill(acc, acc + rows * Hp, 0.f);
      std::fill(m.begin(), m.end(), -INFINITY);
      std::fill(l.begin(), l.end(), 0.f);
      const int64_t end = live == 0 ? 0 : causal ? std::min(S, q0 + live) : S;
      for (int64_t k0 = 0; k0 < end; k0 += block_k) {
        const int64_t cols = std::min(block_k, end - k0);
        pack_transposed(kp + k0 * ldk, ldk, cols, H, scale2, kt);
        pack_rows(vp + k0 * ldk, ldk, cols, H, Hp, vb);
        for (int64_t i = 0; i < live; i += kRows)
          forward_panel(std::min(kRows, live - i), qp + i * ldq, ldq, kt, vb, H, Hp, causal,
                        q0 + i, k0, cols, s.data(), lds, m.data() + i, l.data() + i,
                        acc + i * Hp);
      }
      for (int64_t i = 0; i < rows; ++i) {
        // A live row sees key 0 when S > 0 (causal masking is top-left aligned).
        const bool sees = i < live && S > 0;
        const float inv = sees ? 1.f / l[i] : 0.f;
        float* op = O + (b * d.T + q0 + i) * ldq + n * H;
        for (int64_t h = 0; h < H; ++h) op[h] = sees ? acc[i * Hp + h] * inv : 0.f;
        L[(b * d.N + n) * d.T + q0 + i] = sees ? m[i] + std::log2(l[i]) : -INFINITY;
      }
    }
  }
  return ffi::Error::Success();
}

// Gradients by recomputation, FlashAttention-2's backward: per (batch, query head), for each
// key block (whose dk, dv are summed in cache) over every query block that sees it:
//   P = 2^(S - lse), dP = dO V^T, dS = scale P (dP - rowsum(dO O)),
//   dQ += dS K per kRows-row panel while its P and dS are in L1, then
//   dV += P^T dO and dK += dS^T Q over the whole query block.
// A task owns its head's rows of dq and of dk, dv, which are per query head ([B, S, N, H]:
// the caller sums a group's heads), so no two threads write the same memory. Only the rows
// within the lengths take part; the others' gradients are zero.
ffi::Error FlashBackward(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                         ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> q_lengths,
                         ffi::Buffer<ffi::S32> kv_lengths, ffi::Buffer<ffi::F32> o,
                         ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
                         ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                         ffi::ResultBuffer<ffi::F32> dv, float scale, bool causal,
                         int64_t block_q, int64_t block_k, int64_t threads) {
  const Shape d = shape_of(q, k);
  const int64_t H = d.H, ldq = d.ldq(), ldk = d.ldk(), group = d.N / d.K;
  // Score rows padded by a cache line: dv and dk read P and dS down their columns, which at a
  // power-of-two row length would fall into a few L1 sets.
  const int64_t Hp = round_up(H, kCols), bk = round_up(block_k, kCols), lds = bk + kCols;
  const float* Q = q.typed_data();
  const float* Kp = k.typed_data();
  const float* V = v.typed_data();
  const int32_t* QL = q_lengths.typed_data();
  const int32_t* KL = kv_lengths.typed_data();
  const float* O = o.typed_data();
  const float* L = lse.typed_data();
  const float* dO = dout.typed_data();
  float* dQ = dq->typed_data();
  float* dK = dk->typed_data();
  float* dV = dv->typed_data();
  const float scale2 = scale * 1.4426950408889634f;
#pragma omp parallel num_threads(threads)
  {
    Aligned kt_(bk * H), vt_(bk * H), kb_(bk * Hp), qb_(block_q * Hp), dob_(block_q * Hp),
        dkb_(bk * Hp), dvb_(bk * Hp), dqb_(kRows * Hp);
    float *kt = kt_.get(), *vt = vt_.get(), *kb = kb_.get(), *qb = qb_.get(), *dob = dob_.get(),
          *dkb = dkb_.get(), *dvb = dvb_.get(), *dqb = dqb_.get();
    std::vector<float> s(block_q * lds), dp(block_q * lds), delta(d.T);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < d.B * d.N; ++t) {
      const int64_t b = t / d.N, n = t % d.N;
      const int64_t T = clip_length(QL[b], d.T), S = clip_length(KL[b], d.S);
      const int64_t head = b * d.T * ldq + n * H;  // this head's [T, H] view in q, o, do, dq
      const float* qp = Q + head;
      const float* dop = dO + head;
      float* dqp = dQ + head;
      const float* kp = Kp + b * d.S * ldk + (n / group) * H;
      const float* vp = V + b * d.S * ldk + (n / group) * H;
      const float* lp = L + (b * d.N + n) * d.T;
      for (int64_t i = 0; i < d.T; ++i) {
        float acc = 0.f;
        for (int64_t h = 0; h < H; ++h) acc += dop[i * ldq + h] * O[head + i * ldq + h];
        delta[i] = acc;
        std::fill(dqp + i * ldq, dqp + i * ldq + H, 0.f);
      }
      for (int64_t k0 = 0; k0 < S; k0 += block_k) {
        const int64_t cols = std::min(block_k, S - k0);
        pack_transposed(kp + k0 * ldk, ldk, cols, H, scale2, kt);
        pack_transposed(vp + k0 * ldk, ldk, cols, H, 1.f, vt);
        pack_rows(kp + k0 * ldk, ldk, cols, H, Hp, kb);
        std::fill(dkb, dkb + cols * Hp, 0.f);
        std::fill(dvb, dvb + cols * Hp, 0.f);
        // Under causal masking, query rows before k0 see nothing of this block.
        for (int64_t q0 = causal ? k0 / block_q * block_q : 0; q0 < T; q0 += block_q) {
          const int64_t rows = std::min(block_q, T - q0);
          pack_rows(qp + q0 * ldq, ldq, rows, H, Hp, qb);
          pack_rows(dop + q0 * ldq, ldq, rows, H, Hp, dob);
          for (int64_t i = 0; i < rows; i += kRows) {
            const int64_t r = std::min(kRows, rows - i), i0 = q0 + i;
            float* si = s.data() + i * lds;
            float* dpi = dp.data() + i * lds;
            const int64_t width = visible(causal, i0 + r - 1, k0, cols);
            const int64_t tiles = (width + kCols - 1) / kCols;
            scores(r, qp + i0 * ldq, ldq, kt, H, tiles, si, lds);
            scores(r, dop + i0 * ldq, ldq, vt, H, tiles, dpi, lds);
            for (int64_t x = 0; x < r; ++x) {
              float* sx = si + x * lds;
              float* dpx = dpi + x * lds;
              const int64_t seen = visible(causal, i0 + x, k0, cols);
              const float l = lp[i0 + x], dl = delta[i0 + x];
              int64_t j = 0;
              for (; j + kLanes <= seen; j += kLanes) {
                const Vec pj = exp2v(load(sx + j) - l);
                store(sx + j, pj);
                store(dpx + j, scale * pj * (load(dpx + j) - dl));
              }
              for (; j < seen; ++j) {
                sx[j] = std::exp2(sx[j] - l);
                dpx[j] = scale * sx[j] * (dpx[j] - dl);
              }
              std::fill(sx + seen, sx + cols, 0.f);  // the block products below read every column
              std::fill(dpx + seen, dpx + cols, 0.f);
            }
            if (width == 0) continue;
            pack_rows(dqp + i0 * ldq, ldq, r, H, Hp, dqb);  // dq's rows, in and out of cache
            product(r, dpi, lds, 1, kb, Hp, width, nullptr, dqb);
            for (int64_t x = 0; x < r; ++x)
              std::copy(dqb + x * Hp, dqb + x * Hp + H, dqp + (i0 + x) * ldq);
          }
          // dV += P^T dO, dK += dS^T Q, kRows key rows at a time; under causal masking the
          // query rows before a key row add nothing to it.
          for (int64_t j = 0; j < cols; j += kRows) {
            const int64_t r = std::min(kRows, cols - j);
            const int64_t first = causal ? std::clamp<int64_t>(k0 + j - q0, 0, rows) : 0;
            product(r, s.data() + first * lds + j, 1, lds, dob + first * Hp, Hp, rows - first,
                    nullptr, dvb + j * Hp);
            product(r, dp.data() + first * lds + j, 1, lds, qb + first * Hp, Hp, rows - first,
                    nullptr, dkb + j * Hp);
          }
        }
        for (int64_t j = 0; j < cols; ++j) {
          const int64_t row = (b * d.S + k0 + j) * ldq + n * H;
          std::copy(dkb + j * Hp, dkb + j * Hp + H, dK + row);
          std::copy(dvb + j * Hp, dvb + j * Hp + H, dV + row);
        }
      }
      for (int64_t j = S; j < d.S; ++j) {  // keys past the length: never seen
        const int64_t row = (b * d.S + j) * ldq + n * H;
        std::fill(dK + row, dK + row + H, 0.f);
        std::fill(dV + row, dV + row + H, 0.f);
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlashForwardHandler, FlashForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v
                                  .Arg<ffi::Buffer<ffi::S32>>()  // query lengths [B]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // key lengths [B]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out
                                  .Ret<ffi::Buffer<ffi::F32>>()  // lse [B, N, T], base 2
                                  .Attr<float>("scale")
                                  .Attr<bool>("causal")
                                  .Attr<int64_t>("block_q")
                                  .Attr<int64_t>("block_k")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlashBackwardHandler, FlashBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v
                                  .Arg<ffi::Buffer<ffi::S32>>()  // query lengths [B]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // key lengths [B]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // out
                                  .Arg<ffi::Buffer<ffi::F32>>()  // lse
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d out
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dq
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dk per query head
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dv per query head
                                  .Attr<float>("scale")
                                  .Attr<bool>("causal")
                                  .Attr<int64_t>("block_q")
                                  .Attr<int64_t>("block_k")
                                  .Attr<int64_t>("threads"));
