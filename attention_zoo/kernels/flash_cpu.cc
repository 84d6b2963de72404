// Flash attention on CPU as XLA FFI custom calls: forward (output and log-sum-exp) and
// backward (dq, dk, dv), float32, [B, T, N, H] queries and [B, S, K, H] keys/values
// (K divides N: grouped-query attention), causal (top-left aligned, as
// jax.nn.dot_product_attention) or not.
//
// Why a kernel of our own: XLA's block products and the softmax between them are separate
// loops over memory; here each (batch, head, query block) keeps its scores in cache between
// the two products, which are OpenBLAS sgemm calls on strided views (no copies of ours), and
// the exponentials are a vectorised exp2 (the scale times log2(e) is folded into the first
// product). Scores are in base 2 throughout; the log-sum-exp saved for the backward is too.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <immintrin.h>

#include "cblas.h"
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

// OpenBLAS threads: none of its own; the parallelism is ours (one sgemm per thread at a
// time). Set once, when the library is loaded.
const int kOpenBlasThreads = (scipy_openblas_set_num_threads(1), 1);

// Leading dimension of a score block: a row of block_k floats plus one cache line, so that
// the rows of a power-of-two block_k do not all fall into the same few cache sets when
// OpenBLAS reads the block down its columns. (It is not what slows 256-column blocks on a
// Zen 1: see cpu_kernel.py.)
inline int64_t padded(int64_t block_k) { return block_k + 16; }

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

ffi::Error FlashForward(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                        ffi::Buffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> out,
                        ffi::ResultBuffer<ffi::F32> lse, float scale, bool causal,
                        int64_t block_q, int64_t block_k, int64_t threads) {
  const Shape d = shape_of(q, k);
  const int64_t H = d.H, ldq = d.ldq(), ldk = d.ldk(), group = d.N / d.K;
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
    const int64_t lds = padded(block_k);
    std::vector<float> s(block_q * lds), acc(block_q * H), m(block_q), l(block_q);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      // Last query blocks first: under causal masking they are the longest, and the
      // short ones then fill the threads' tails.
      const int64_t b = t / (d.N * nq), n = (t / nq) % d.N, q0 = (nq - 1 - t % nq) * block_q;
      const int64_t rows = std::min(block_q, d.T - q0);
      const float* qp = Q + (b * d.T + q0) * ldq + n * H;
      const float* kp = Kp + b * d.S * ldk + (n / group) * H;
      const float* vp = V + b * d.S * ldk + (n / group) * H;
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(m.begin(), m.end(), -INFINITY);
      std::fill(l.begin(), l.end(), 0.f);
      const int64_t end = causal ? std::min(d.S, q0 + rows) : d.S;
      for (int64_t k0 = 0; k0 < end; k0 += block_k) {
        const int64_t cols = std::min(block_k, end - k0);
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, H, scale2, qp, ldq,
                    kp + k0 * ldk, ldk, 0.f, s.data(), lds);
        for (int64_t i = 0; i < rows; ++i) {
          float* si = s.data() + i * lds;
          const int64_t seen = visible(causal, q0 + i, k0, cols);
          if (seen == 0) {  // a causal row before this block: nothing to add
            std::fill(si, si + cols, 0.f);
            continue;
          }
          // The row maximum; a NaN score (a NaN in q or k) makes it NaN, and so the row's
          // output and log-sum-exp, as in the oracle (max alone would drop it).
          __m256 vmax = _mm256_set1_ps(-INFINITY), vnan = _mm256_setzero_ps();
          int64_t j = 0;
          for (; j + 8 <= seen; j += 8) {
            const __m256 x = _mm256_loadu_ps(si + j);
            vmax = _mm256_max_ps(vmax, x);
            vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
          }
          float mx = std::max(m[i], hmax(vmax));
          bool nan = _mm256_movemask_ps(vnan) != 0 || std::isnan(m[i]);
          for (; j < seen; ++j) {
            mx = std::max(mx, si[j]);
            nan |= std::isnan(si[j]);
          }
          if (nan) mx = NAN;
          const __m256 vm = _mm256_set1_ps(mx);
          __m256 vsum = _mm256_setzero_ps();
          for (j = 0; j + 8 <= seen; j += 8) {
            const __m256 p = exp2_8(_mm256_sub_ps(_mm256_loadu_ps(si + j), vm));
            _mm256_storeu_ps(si + j, p);
            vsum = _mm256_add_ps(vsum, p);
          }
          float sum = hsum(vsum);
          for (; j < seen; ++j) sum += (si[j] = std::exp2(si[j] - mx));
          std::fill(si + seen, si + cols, 0.f);
          const float c = std::exp2(m[i] - mx);  // 0 on the first block (m = -inf)
          l[i] = l[i] * c + sum;
          m[i] = mx;
          if (c != 1.f)
            for (float* a = acc.data() + i * H; a != acc.data() + (i + 1) * H; ++a) *a *= c;
        }
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, H, cols, 1.f, s.data(),
                    lds, vp + k0 * ldk, ldk, 1.f, acc.data(), H);
      }
      for (int64_t i = 0; i < rows; ++i) {
        const float inv = 1.f / l[i];  // every row sees key 0 (S > 0, checked in Python)
        float* op = O + (b * d.T + q0 + i) * ldq + n * H;
        for (int64_t h = 0; h < H; ++h) op[h] = acc[i * H + h] * inv;
        L[(b * d.N + n) * d.T + q0 + i] = m[i] + std::log2(l[i]);
      }
    }
  }
  return ffi::Error::Success();
}

// Gradients by recomputation, FlashAttention-2's backward: per (batch, query head), for each
// key block (whose dk, dv are summed in cache) over every query block that sees it:
//   P = 2^(S - lse), dP = dO V^T, dS = P * (dP - rowsum(dO * O)),
//   dV += P^T dO, dK += scale dS^T Q, dQ += scale dS K.
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
  const int64_t lds = padded(block_k);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> s(block_q * lds), dp(block_q * lds), dkb(block_k * H), dvb(block_k * H),
        delta(d.T);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < d.B * d.N; ++t) {
      const int64_t b = t / d.N, n = t % d.N;
      const int64_t head = b * d.T * ldq + n * H;  // this head's [T, H] view in q, o, do, dq
      const float* qp = Q + head;
      const float* op = O + head;
      const float* dop = dO + head;
      float* dqp = dQ + head;
      const float* kp = Kp + b * d.S * ldk + (n / group) * H;
      const float* vp = V + b * d.S * ldk + (n / group) * H;
      const float* lp = L + (b * d.N + n) * d.T;
      for (int64_t i = 0; i < d.T; ++i) {
        float acc = 0.f;
        for (int64_t h = 0; h < H; ++h) acc += dop[i * ldq + h] * op[i * ldq + h];
        delta[i] = acc;
        std::fill(dqp + i * ldq, dqp + i * ldq + H, 0.f);
      }
      for (int64_t k0 = 0; k0 < d.S; k0 += block_k) {
        const int64_t cols = std::min(block_k, d.S - k0);
        std::fill(dkb.begin(), dkb.end(), 0.f);
        std::fill(dvb.begin(), dvb.end(), 0.f);
        // Under causal masking, query rows before k0 see nothing of this block.
        for (int64_t q0 = causal ? k0 / block_q * block_q : 0; q0 < d.T; q0 += block_q) {
          const int64_t rows = std::min(block_q, d.T - q0);
          scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, H, scale2,
                            qp + q0 * ldq, ldq, kp + k0 * ldk, ldk, 0.f, s.data(), lds);
          scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, H, 1.f,
                            dop + q0 * ldq, ldq, vp + k0 * ldk, ldk, 0.f, dp.data(), lds);
          for (int64_t i = 0; i < rows; ++i) {
            float* si = s.data() + i * lds;
            float* dpi = dp.data() + i * lds;
            const int64_t seen = visible(causal, q0 + i, k0, cols);
            const __m256 vl = _mm256_set1_ps(lp[q0 + i]);
            const __m256 vd = _mm256_set1_ps(delta[q0 + i]);
            int64_t j = 0;
            for (; j + 8 <= seen; j += 8) {
              const __m256 p = exp2_8(_mm256_sub_ps(_mm256_loadu_ps(si + j), vl));
              _mm256_storeu_ps(si + j, p);
              _mm256_storeu_ps(dpi + j,
                               _mm256_mul_ps(p, _mm256_sub_ps(_mm256_loadu_ps(dpi + j), vd)));
            }
            for (; j < seen; ++j) {
              si[j] = std::exp2(si[j] - lp[q0 + i]);
              dpi[j] = si[j] * (dpi[j] - delta[q0 + i]);
            }
            std::fill(si + seen, si + cols, 0.f);
            std::fill(dpi + seen, dpi + cols, 0.f);
          }
          scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, H, rows, 1.f,
                            s.data(), lds, dop + q0 * ldq, ldq, 1.f, dvb.data(), H);
          scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, H, rows, scale,
                            dp.data(), lds, qp + q0 * ldq, ldq, 1.f, dkb.data(), H);
          scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, H, cols, scale,
                            dp.data(), lds, kp + k0 * ldk, ldk, 1.f, dqp + q0 * ldq, ldq);
        }
        for (int64_t j = 0; j < cols; ++j) {
          const int64_t row = (b * d.S + k0 + j) * ldq + n * H;
          std::copy(dkb.data() + j * H, dkb.data() + (j + 1) * H, dK + row);
          std::copy(dvb.data() + j * H, dvb.data() + (j + 1) * H, dV + row);
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
