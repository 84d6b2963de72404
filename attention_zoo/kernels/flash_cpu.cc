// Flash attention on CPU as XLA FFI custom calls: forward (output and log-sum-exp) and
// backward (dq, dk, dv), float32, [B, T, N, H] queries and [B, S, K, H] keys/values
// (K divides N: grouped-query attention), causal (top-left aligned, as
// jax.nn.dot_product_attention) or not.
//
// Why a kernel of our own: XLA's block products and the softmax between them are separate
// loops over memory; here each panel of six query rows takes its scores, softmax and output
// update while they are in L1, the products are register-blocked AVX2 micro-kernels on key
// and value blocks packed once per query block, and the exponentials are a vectorised exp2
// (the scale times log2(e) is folded into the packed keys). Scores are in base 2 throughout;
// the log-sum-exp saved for the backward is too.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <immintrin.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// 2^x for 8 floats: x = n + r with n = round(x), |r| <= 1/2, 2^r by a degree-5 polynomial
// (fitted to the relative error: at most 2.4e-7, 2 float32 ulps). x is clamped at -126,
// whose 2^-126 = 1.2e-38 is below float32's resolution of any sum it joins (masked
// scores are zeroed, never exponentiated); max(-126, x) keeps a NaN a NaN.
inline __m256 exp2_8(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-126.f), x);
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_sub_ps(x, n);
  __m256 p = _mm256_set1_ps(1.3276407e-3f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(9.6755408e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.5507135e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(2.4022120e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(6.9314697e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0000001f));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

// The columns of query row i (absolute) that may attend the key block starting at k0 with
// `cols` columns: all of them, or under causal masking those with key <= query.
inline int64_t visible(bool causal, int64_t i, int64_t k0, int64_t cols) {
  return causal ? std::clamp<int64_t>(i - k0 + 1, 0, cols) : cols;
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
// process's history). A micro-tile is kRows rows by kCols = 16 columns, 12 of the 16 AVX2
// registers accumulating: per step two aligned loads of the packed operand, kRows broadcasts
// and 2 kRows FMAs. (The `unroll` pragmas on the row loops let GCC keep the accumulators in
// registers: without them it stored every accumulator to the stack after each FMA.)
constexpr int64_t kRows = 6, kCols = 16;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// c[R x 16] = A . b over n steps, plus c * rescale (per row) when Accumulate, where
// A(r, x) = a[r a_row + x a_step] (a row-major block, or a transposed one) and b is packed
// [n][ldb] at its column.
template <int R, bool Accumulate>
inline void tile(const float* a, int64_t a_row, int64_t a_step, const float* b, int64_t ldb,
                 int64_t n, const float* rescale, float* c, int64_t ldc) {
  __m256 acc[R][2];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    if constexpr (Accumulate) {
      const __m256 f = _mm256_broadcast_ss(rescale + r);
      acc[r][0] = _mm256_mul_ps(f, _mm256_loadu_ps(c + r * ldc));
      acc[r][1] = _mm256_mul_ps(f, _mm256_loadu_ps(c + r * ldc + 8));
    } else {
      acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    }
  }
#pragma GCC unroll 4
  for (int64_t x = 0; x < n; ++x) {
    const __m256 b0 = _mm256_load_ps(b + x * ldb), b1 = _mm256_load_ps(b + x * ldb + 8);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + r * a_row + x * a_step);
      acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(c + r * ldc, acc[r][0]);
    _mm256_storeu_ps(c + r * ldc + 8, acc[r][1]);
  }
}

// tile<R> for the rows at hand (1 to kRows).
template <bool Accumulate>
inline void tile_rows(int64_t rows, const float* a, int64_t a_row, int64_t a_step,
                      const float* b, int64_t ldb, int64_t n, const float* rescale, float* c,
                      int64_t ldc) {
  switch (rows) {
#define ZOO_CASE(R) \
  case R: return tile<R, Accumulate>(a, a_row, a_step, b, ldb, n, rescale, c, ldc);
    ZOO_CASE(1) ZOO_CASE(2) ZOO_CASE(3) ZOO_CASE(4) ZOO_CASE(5) ZOO_CASE(6)
#undef ZOO_CASE
  }
}

constexpr float kOnes[kRows] = {1.f, 1.f, 1.f, 1.f, 1.f, 1.f};

// c[rows x Hp] = c * rescale + A . b, one 16-column panel of c (and of b, [n][Hp]) at a time.
inline void product(int64_t rows, const float* a, int64_t a_row, int64_t a_step, const float* b,
                    int64_t Hp, int64_t n, const float* rescale, float* c) {
  for (int64_t h0 = 0; h0 < Hp; h0 += kCols)
    tile_rows<true>(rows, a, a_row, a_step, b + h0, Hp, n, rescale, c + h0, Hp);
}

// s[rows x 16 tiles] = q[rows, stride ldq] . kt (packed K^T panels [H][16]).
inline void scores(int64_t rows, const float* q, int64_t ldq, const float* kt, int64_t H,
                   int64_t tiles, float* s, int64_t lds) {
  for (int64_t t = 0; t < tiles; ++t)
    tile_rows<false>(rows, q, ldq, 1, kt + t * H * kCols, kCols, H, nullptr, s + t * kCols, lds);
}

// Packs rows [n, ld] times `factor` as K^T-style panels [n / 16][H][16] (zero past n).
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

// n floats, 32-byte aligned for the micro-kernels' aligned loads (per thread).
struct Aligned {
  explicit Aligned(int64_t n) : v(n + 8) {}
  float* get() {
    return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(v.data()) + 31) & ~uintptr_t{31});
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
  // is NaN (exp2_8 keeps NaN), and so the row's sum, output and log-sum-exp, as in the oracle.
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 8 <= seen; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(si + j));
  float mx = std::max(m, hmax(vmax));
  for (; j < seen; ++j) mx = std::max(mx, si[j]);
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  for (j = 0; j + 8 <= seen; j += 8) {
    const __m256 p = exp2_8(_mm256_sub_ps(_mm256_loadu_ps(si + j), vm));
    _mm256_storeu_ps(si + j, p);
    vsum = _mm256_add_ps(vsum, p);
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
// are packed into 16-column panels (zero past the block and past H), then each kRows-row
// panel of the query block takes its scores, softmax and output update while they are in L1.
ffi::Error FlashForward(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                        ffi::Buffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> out,
                        ffi::ResultBuffer<ffi::F32> lse, float scale, bool causal,
                        int64_t block_q, int64_t block_k, int64_t threads) {
  const Shape d = shape_of(q, k);
  const int64_t H = d.H, ldq = d.ldq(), ldk = d.ldk(), group = d.N / d.K;
  const int64_t Hp = round_up(H, kCols), bk = round_up(block_k, kCols);
  const float* Q = q.typed_data();
  const float* Kp = k.typed_data();
  const float* V = v.typed_data();
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
      const float* qp = Q + (b * d.T + q0) * ldq + n * H;
      const float* kp = Kp + b * d.S * ldk + (n / group) * H;
      const float* vp = V + b * d.S * ldk + (n / group) * H;
      std::fill(acc, acc + rows * Hp, 0.f);
      std::fill(m.begin(), m.end(), -INFINITY);
      std::fill(l.begin(), l.end(), 0.f);
      const int64_t end = causal ? std::min(d.S, q0 + rows) : d.S;
      for (int64_t k0 = 0; k0 < end; k0 += block_k) {
        const int64_t cols = std::min(block_k, end - k0);
        pack_transposed(kp + k0 * ldk, ldk, cols, H, scale2, kt);
        pack_rows(vp + k0 * ldk, ldk, cols, H, Hp, vb);
        for (int64_t i = 0; i < rows; i += kRows)
          forward_panel(std::min(kRows, rows - i), qp + i * ldq, ldq, kt, vb, H, Hp, causal,
                        q0 + i, k0, cols, s.data(), lds, m.data() + i, l.data() + i,
                        acc + i * Hp);
      }
      for (int64_t i = 0; i < rows; ++i) {
        const float inv = 1.f / l[i];  // every row sees key 0 (S > 0, checked in Python)
        float* op = O + (b * d.T + q0 + i) * ldq + n * H;
        for (int64_t h = 0; h < H; ++h) op[h] = acc[i * Hp + h] * inv;
        L[(b * d.N + n) * d.T + q0 + i] = m[i] + std::log2(l[i]);
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
// the caller sums a group's heads), so no two threads write the same memory.
ffi::Error FlashBackward(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                         ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> o,
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
      for (int64_t k0 = 0; k0 < d.S; k0 += block_k) {
        const int64_t cols = std::min(block_k, d.S - k0);
        pack_transposed(kp + k0 * ldk, ldk, cols, H, scale2, kt);
        pack_transposed(vp + k0 * ldk, ldk, cols, H, 1.f, vt);
        pack_rows(kp + k0 * ldk, ldk, cols, H, Hp, kb);
        std::fill(dkb, dkb + cols * Hp, 0.f);
        std::fill(dvb, dvb + cols * Hp, 0.f);
        // Under causal masking, query rows before k0 see nothing of this block.
        for (int64_t q0 = causal ? k0 / block_q * block_q : 0; q0 < d.T; q0 += block_q) {
          const int64_t rows = std::min(block_q, d.T - q0);
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
              const __m256 vl = _mm256_set1_ps(lp[i0 + x]);
              const __m256 vd = _mm256_set1_ps(delta[i0 + x]);
              const __m256 vs = _mm256_set1_ps(scale);
              int64_t j = 0;
              for (; j + 8 <= seen; j += 8) {
                const __m256 pj = exp2_8(_mm256_sub_ps(_mm256_loadu_ps(sx + j), vl));
                _mm256_storeu_ps(sx + j, pj);
                _mm256_storeu_ps(dpx + j, _mm256_mul_ps(_mm256_mul_ps(vs, pj),
                                                        _mm256_sub_ps(_mm256_loadu_ps(dpx + j), vd)));
              }
              for (; j < seen; ++j) {
                sx[j] = std::exp2(sx[j] - lp[i0 + x]);
                dpx[j] = scale * sx[j] * (dpx[j] - delta[i0 + x]);
              }
              std::fill(sx + seen, sx + cols, 0.f);  // the block products below read every column
              std::fill(dpx + seen, dpx + cols, 0.f);
            }
            if (width == 0) continue;
            pack_rows(dqp + i0 * ldq, ldq, r, H, Hp, dqb);  // dq's rows, in and out of cache
            product(r, dpi, lds, 1, kb, Hp, width, kOnes, dqb);
            for (int64_t x = 0; x < r; ++x)
              std::copy(dqb + x * Hp, dqb + x * Hp + H, dqp + (i0 + x) * ldq);
          }
          // dV += P^T dO, dK += dS^T Q, kRows key rows at a time; under causal masking the
          // query rows before a key row add nothing to it.
          for (int64_t j = 0; j < cols; j += kRows) {
            const int64_t r = std::min(kRows, cols - j);
            const int64_t first = causal ? std::clamp<int64_t>(k0 + j - q0, 0, rows) : 0;
            product(r, s.data() + first * lds + j, 1, lds, dob + first * Hp, Hp, rows - first,
                    kOnes, dvb + j * Hp);
            product(r, dp.data() + first * lds + j, 1, lds, qb + first * Hp, Hp, rows - first,
                    kOnes, dkb + j * Hp);
          }
        }
        for (int64_t j = 0; j < cols; ++j) {
          const int64_t row = (b * d.S + k0 + j) * ldq + n * H;
          std::copy(dkb + j * Hp, dkb + j * Hp + H, dK + row);
          std::copy(dvb + j * Hp, dvb + j * Hp + H, dV + row);
        }
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
