// Fused exact L1 distance (Eq. 1 of SMVWE) for CPUs: D[b,j,p] = sum_k |M[b,k,p] - C[j,k]| and its gradients.
// Built on first use by smvwe.distance.load_ext (torch.utils.cpp_extension, -O3 -march=native -fopenmp).
// The build directory's name hashes this file, the CPU's instruction sets and the torch version,
// so an edited source or another CPU never reuses a stale binary.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstring>
#include <type_traits>
#include <cstdint>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

template <typename T> struct VT;  // 64-byte vectors (GCC vector extensions, portable to any target)
template <> struct VT<float>  { typedef float  v __attribute__((vector_size(64))); typedef int32_t vi __attribute__((vector_size(64))); static constexpr int W = 16; };
template <> struct VT<double> { typedef double v __attribute__((vector_size(64))); typedef int64_t vi __attribute__((vector_size(64))); static constexpr int W = 8; };
template <typename V> static inline V vload(const void* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
template <typename V> static inline void vstore(void* p, V v) { std::memcpy(p, &v, sizeof(V)); }
template <typename T> static inline typename VT<T>::vi signbit_v() {
  using I = typename std::remove_reference<decltype(typename VT<T>::vi{}[0])>::type;
  return typename VT<T>::vi{} + (I)((I)1 << (sizeof(T) * 8 - 1)); }

constexpr int FR = 4, FJ = 6, FKB = 64;   // forward tile: FR vectors of pixels x FJ words, FKB channels per block
constexpr int BR = 4, BJ = 4, BKB = 16;   // backward tile

// d[j, px] (+)= sum_k |m[k, px] - ct[k, j]| over one tile
template <typename T, int J>
static void fwd_tile(const T* m, int64_t ldm, const T* ct, int64_t ldc, int kn, T* d, int64_t ldd, bool first) {
  constexpr int R = FR, W = VT<T>::W;
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>) {
    __m512 acc[J][R]; const __m512 neg1 = _mm512_set1_ps(-1.f);
    for (int j = 0; j < J; ++j) for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
    for (int k = 0; k < kn; ++k) {
      __m512 mv[R];
      for (int r = 0; r < R; ++r) mv[r] = _mm512_loadu_ps(m + k * ldm + r * 16);
      for (int j = 0; j < J; ++j) {
        const __m512 c = _mm512_set1_ps(ct[k * ldc + j]);
        for (int r = 0; r < R; ++r) acc[j][r] = _mm512_add_ps(acc[j][r], _mm512_abs_ps(_mm512_fmadd_ps(c, neg1, mv[r])));
      }
    }
    for (int j = 0; j < J; ++j) for (int r = 0; r < R; ++r) {
      float* o = d + j * ldd + r * 16;
      _mm512_storeu_ps(o, first ? acc[j][r] : _mm512_add_ps(_mm512_loadu_ps(o), acc[j][r]));
    }
    return;
  }
#endif
  using V = typename VT<T>::v; using VI = typename VT<T>::vi;
  const VI absmask = ~signbit_v<T>();
  V acc[J][R];
  for (int j = 0; j < J; ++j) for (int r = 0; r < R; ++r) acc[j][r] = V{};
  for (int k = 0; k < kn; ++k) {
    V mv[R];
    for (int r = 0; r < R; ++r) mv[r] = vload<V>(m + k * ldm + r * W);
    for (int j = 0; j < J; ++j) {
      const V c = V{} + ct[k * ldc + j];
      for (int r = 0; r < R; ++r) acc[j][r] += (V)((VI)(mv[r] - c) & absmask);
    }
  }
  for (int j = 0; j < J; ++j) for (int r = 0; r < R; ++r) {
    T* o = d + j * ldd + r * W;
    vstore(o, first ? acc[j][r] : vload<V>(o) + acc[j][r]);
  }
}

// t = g[j, px] * sign(m[k, px] - c[j, k]);  dm[k, px] += sum_j t;  lane[k][j] += sum_px t (per vector lane)
template <typename T, int J>
static void bwd_tile(const T* m, int64_t ldm, const T* g, int64_t ldg, const T* c, int64_t ldc, int kn, T* dm, typename VT<T>::v* lane) {
  constexpr int R = BR, W = VT<T>::W;
  using V = typename VT<T>::v; using VI = typename VT<T>::vi;
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>) {  // same computation, with the work spread over both kinds of FP pipes:
    // d = m - c as an FMA (exact), t = g ^ (d & signbit) by one ternary-logic op, the mask d != 0 gives sign(0) = 0,
    // dm's sum as a masked FMA (t * 1 + da, exact) and the codebook's as a masked add
    const __m512i sgn = _mm512_set1_epi32(0x80000000); const __m512 neg1 = _mm512_set1_ps(-1.f), one = _mm512_set1_ps(1.f);
    const __m512 zero = _mm512_setzero_ps();
    __m512 gv[J][R];
    for (int j = 0; j < J; ++j) for (int r = 0; r < R; ++r) gv[j][r] = _mm512_loadu_ps(g + j * ldg + r * 16);
    for (int k = 0; k < kn; ++k) {
      __m512 mv[R], da[R];
      for (int r = 0; r < R; ++r) { mv[r] = _mm512_loadu_ps(m + k * ldm + r * 16); da[r] = zero; }
      for (int j = 0; j < J; ++j) {
        const __m512 cv = _mm512_set1_ps(c[j * ldc + k]);
        __m512 la = zero;
        for (int r = 0; r < R; ++r) {
          const __m512 d = _mm512_fmadd_ps(cv, neg1, mv[r]);
          const __mmask16 nz = _mm512_cmp_ps_mask(d, zero, _CMP_NEQ_UQ);
          const __m512 t = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(d), _mm512_castps_si512(gv[j][r]), sgn, 0x6C)); // g ^ (d & sgn)
          da[r] = _mm512_mask3_fmadd_ps(t, one, da[r], nz);
          la = _mm512_mask_add_ps(la, nz, la, t);
        }
        lane[k * BJ + j] = (V)_mm512_add_ps((__m512)lane[k * BJ + j], la);
      }
      for (int r = 0; r < R; ++r) { float* o = dm + k * ldm + r * 16; _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), da[r])); }
    }
    return;
  }
#endif
  const VI sgn = signbit_v<T>();
  V gv[J][R];
  for (int j = 0; j < J; ++j) for (int r = 0; r < R; ++r) gv[j][r] = vload<V>(g + j * ldg + r * W);
  for (int k = 0; k < kn; ++k) {
    V mv[R], da[R];
    for (int r = 0; r < R; ++r) { mv[r] = vload<V>(m + k * ldm + r * W); da[r] = V{}; }
    for (int j = 0; j < J; ++j) {
      const V cv = V{} + c[j * ldc + k];
      V la = V{};
      for (int r = 0; r < R; ++r) {
        const V d = mv[r] - cv;
        const V t = (V)(((VI)gv[j][r]) ^ ((VI)d & sgn));     // copysign(g, d)
        const VI nz = (d != 0);                                // sign(0) = 0
        da[r] = nz ? da[r] + t : da[r]; la = nz ? la + t : la;
      }
      lane[k * BJ + j] += la;
    }
    for (int r = 0; r < R; ++r) { T* o = dm + k * ldm + r * W; vstore(o, vload<V>(o) + da[r]); }
  }
}

template <typename T, int J>  // run the tile with the runtime word count jt <= J
static void fwd_any(int jt, const T* m, int64_t ldm, const T* ct, int64_t ldc, int kn, T* d, int64_t ldd, bool first) {
  if constexpr (J > 0) { if (jt == J) fwd_tile<T, J>(m, ldm, ct, ldc, kn, d, ldd, first); else fwd_any<T, J - 1>(jt, m, ldm, ct, ldc, kn, d, ldd, first); }
}
template <typename T, int J>
static void bwd_any(int jt, const T* m, int64_t ldm, const T* g, int64_t ldg, const T* c, int64_t ldc, int kn, T* dm, typename VT<T>::v* lane) {
  if constexpr (J > 0) { if (jt == J) bwd_tile<T, J>(m, ldm, g, ldg, c, ldc, kn, dm, lane); else bwd_any<T, J - 1>(jt, m, ldm, g, ldg, c, ldc, kn, dm, lane); }
}

template <typename T>
static void fwd_impl(const T* M, const T* Ct, T* D, int64_t B, int64_t K, int64_t HW, int64_t N) {
  constexpr int TP = FR * VT<T>::W;
  const int64_t ntiles = (HW + TP - 1) / TP;
  at::parallel_for(0, B * ntiles, 1, [&](int64_t s, int64_t e) {   // threads split (image, pixel tile)
    std::vector<T> mbuf, dbuf;
    for (int64_t t = s; t < e; ++t) {
      const int64_t b = t / ntiles, i0 = (t % ntiles) * TP, npx = std::min<int64_t>(TP, HW - i0);
      const T* mp = M + b * K * HW + i0; int64_t ldm = HW;
      T* dp = D + b * N * HW + i0; int64_t ldd = HW;
      if (npx < TP) {  // last, partial tile: zero-padded copy
        mbuf.assign(K * TP, T(0)); dbuf.assign(N * TP, T(0));
        for (int64_t k = 0; k < K; ++k) std::memcpy(&mbuf[k * TP], mp + k * HW, npx * sizeof(T));
        mp = mbuf.data(); ldm = TP; dp = dbuf.data(); ldd = TP;
      }
      for (int64_t k0 = 0; k0 < K; k0 += FKB)
        for (int64_t j0 = 0; j0 < N; j0 += FJ)
          fwd_any<T, FJ>((int)std::min<int64_t>(FJ, N - j0), mp + k0 * ldm, ldm, Ct + k0 * N + j0, N,
                         (int)std::min<int64_t>(FKB, K - k0), dp + j0 * ldd, ldd, k0 == 0);
      if (npx < TP)
        for (int64_t j = 0; j < N; ++j) std::memcpy(D + b * N * HW + j * HW + i0, &dbuf[j * TP], npx * sizeof(T));
    }
  });
}

template <typename T>
static void bwd_impl(const T* M, const T* C, const T* G, T* dM, T* dC, int64_t B, int64_t K, int64_t HW, int64_t N) {
  using V = typename VT<T>::v; constexpr int W = VT<T>::W, TP = BR * W;
  const int64_t nkb = (K + BKB - 1) / BKB, ntiles = (HW + TP - 1) / TP;
  at::parallel_for(0, nkb, 1, [&](int64_t s, int64_t e) {   // threads split channel blocks: disjoint dM and dC
    std::vector<V> lane(BKB * BJ);
    std::vector<T> mbuf(BKB * TP), gbuf(BJ * TP), dmbuf(BKB * TP);
    for (int64_t kb = s; kb < e; ++kb) {
      const int64_t k0 = kb * BKB; const int kn = (int)std::min<int64_t>(BKB, K - k0);
      for (int64_t b = 0; b < B; ++b) {
        const T* Mb = M + (b * K + k0) * HW; T* dMb = dM + (b * K + k0) * HW; const T* Gb = G + b * N * HW;
        for (int64_t j0 = 0; j0 < N; j0 += BJ) {
          const int jt = (int)std::min<int64_t>(BJ, N - j0);
          std::fill(lane.begin(), lane.end(), V{});
          for (int64_t i0 = 0; i0 < HW; i0 += TP) {
            const int64_t npx = std::min<int64_t>(TP, HW - i0);
            if (npx == TP) { bwd_any<T, BJ>(jt, Mb + i0, HW, Gb + j0 * HW + i0, HW, C + j0 * K + k0, K, kn, dMb + i0, lane.data()); continue; }
            std::fill(mbuf.begin(), mbuf.end(), T(0)); std::fill(gbuf.begin(), gbuf.end(), T(0)); std::fill(dmbuf.begin(), dmbuf.end(), T(0));
            for (int k = 0; k < kn; ++k) std::memcpy(&mbuf[k * TP], Mb + k * HW + i0, npx * sizeof(T));
            for (int j = 0; j < jt; ++j) std::memcpy(&gbuf[j * TP], Gb + (j0 + j) * HW + i0, npx * sizeof(T));
            bwd_any<T, BJ>(jt, mbuf.data(), TP, gbuf.data(), TP, C + j0 * K + k0, K, kn, dmbuf.data(), lane.data());
            for (int k = 0; k < kn; ++k) for (int64_t i = 0; i < npx; ++i) dMb[k * HW + i0 + i] += dmbuf[k * TP + i];
          }
          for (int k = 0; k < kn; ++k) for (int j = 0; j < jt; ++j) {
            T s = 0; for (int l = 0; l < W; ++l) s += lane[k * BJ + j][l];
            dC[(j0 + j) * K + k0 + k] -= s;
          }
        }
      }
    }
  });
}

torch::Tensor l1_forward(torch::Tensor M, torch::Tensor C) {  // M (B,K,HW), C (N,K): contiguous, same float dtype, CPU
  const int64_t B = M.size(0), K = M.size(1), HW = M.size(2), N = C.size(0);
  auto Ct = C.t().contiguous();
  auto D = torch::empty({B, N, HW}, M.options());
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "l1_forward", [&] {
    fwd_impl<scalar_t>(M.data_ptr<scalar_t>(), Ct.data_ptr<scalar_t>(), D.data_ptr<scalar_t>(), B, K, HW, N); });
  return D;
}

std::vector<torch::Tensor> l1_backward(torch::Tensor M, torch::Tensor C, torch::Tensor G) {  // G (B,N,HW)
  const int64_t B = M.size(0), K = M.size(1), HW = M.size(2), N = C.size(0);
  auto dM = torch::zeros_like(M); auto dC = torch::zeros_like(C);
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "l1_backward", [&] {
    bwd_impl<scalar_t>(M.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), G.data_ptr<scalar_t>(),
                       dM.data_ptr<scalar_t>(), dC.data_ptr<scalar_t>(), B, K, HW, N); });
  return {dM, dC};
}

// The ceiling: a streaming abs-diff-accumulate loop with its data in L1 and no memory traffic besides, run by every
// thread at once. Each thread keeps 24 vector accumulators (6 constants x 4 vectors of a 64 x 64 in-cache block)
// and does acc += |x - c|, the forward's instruction mix. Returns the number of terms done (time it from Python).
int64_t abs_diff_ceiling(int64_t reps) {
  using V = VT<float>::v; constexpr int W = VT<float>::W, R = 4, J = 6, KB = 64;
  const int nt = at::get_num_threads();
  std::vector<float> sink(nt, 0.f);
  at::parallel_for(0, nt, 1, [&](int64_t s, int64_t e) {
    for (int64_t t = s; t < e; ++t) {
      std::vector<float> x(KB * R * W), c(KB * J);
      for (size_t i = 0; i < x.size(); ++i) x[i] = (float)((i * 37 + t) % 101) * 0.01f;
      for (size_t i = 0; i < c.size(); ++i) c[i] = (float)((i * 11) % 13) * 0.1f;
      V acc[J][R];
      for (int j = 0; j < J; ++j) for (int r = 0; r < R; ++r) acc[j][r] = V{};
#ifdef __AVX512F__
      const __m512 neg1 = _mm512_set1_ps(-1.f);
#endif
      for (int64_t rep = 0; rep < reps; ++rep)
        for (int k = 0; k < KB; ++k) {
          V xv[R];
          for (int r = 0; r < R; ++r) xv[r] = vload<V>(&x[(k * R + r) * W]);
          for (int j = 0; j < J; ++j) {
#ifdef __AVX512F__
            const __m512 cv = _mm512_set1_ps(c[k * J + j]);
            for (int r = 0; r < R; ++r) acc[j][r] = (V)_mm512_add_ps((__m512)acc[j][r], _mm512_abs_ps(_mm512_fmadd_ps(cv, neg1, (__m512)xv[r])));
#else
            const V cv = V{} + c[k * J + j];
            for (int r = 0; r < R; ++r) acc[j][r] += (V)((VT<float>::vi)(xv[r] - cv) & ~signbit_v<float>());
#endif
          }
        }
      float sum = 0.f;
      for (int j = 0; j < J; ++j) for (int r = 0; r < R; ++r) for (int l = 0; l < W; ++l) sum += acc[j][r][l];
      sink[t] = sum;
    }
  });
  float total = 0.f; for (float v : sink) total += v;
  if (total == -1.f) return 0;   // never true: keeps the loop from being optimised away
  return reps * KB * J * R * W * (int64_t)nt;
}

// ---- Rows layout (channels-last in and out): X (R,K) one row per pixel, C (N,K), D (R,N) one row per pixel ----
// What a channels-last feature map (B,H,W,K) already is, and what the per-pixel standardisation (a LayerNorm over the
// last axis) writes: no transposed copy on the way in, and D comes out channels-last, so the softmax over words, the
// argmax and their backward all read contiguous rows. AVX-512 float32 only (others: the (B,K,HW) kernel above).
#ifdef __AVX512F__
constexpr int SR = 12, SKB = 8;   // backward tile: SR rows x one 16-channel slice; SKB slices per block (their G rows stay in L1)

static inline __mmask16 kmask(int64_t k, int64_t K) { return K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1); }

// v[i] (16 vectors) -> one vector whose lanes are the 16 horizontal sums, in the order given by perm (set once below)
static inline __m512 hsum16(const __m512* v, __m512i perm) {
  __m512 s[8], t[4], u[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)   // 256-bit halves: [a.lo + a.hi | b.lo + b.hi] as 128-bit chunks
    s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2*i], v[2*i+1], 0x44), _mm512_shuffle_f32x4(v[2*i], v[2*i+1], 0xEE));
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2*i], s[2*i+1], 0x88), _mm512_shuffle_f32x4(s[2*i], s[2*i+1], 0xDD));
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2*i], t[2*i+1], 0x44), _mm512_shuffle_ps(t[2*i], t[2*i+1], 0xEE));
  const __m512 w = _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], 0x88), _mm512_shuffle_ps(u[0], u[1], 0xDD));
  return _mm512_permutexvar_ps(perm, w);
}

static __m512i hsum16_perm() {  // lane L of the unpermuted sum holds source vector src[L]: find it with constant inputs
  __m512 v[16]; for (int i = 0; i < 16; ++i) v[i] = _mm512_set1_ps((float)i);
  alignas(64) float w[16]; _mm512_store_ps(w, hsum16(v, _mm512_set_epi32(15,14,13,12,11,10,9,8,7,6,5,4,3,2,1,0)));
  alignas(64) int32_t idx[16];
  for (int L = 0; L < 16; ++L) idx[(int)(w[L] / 16.f + 0.5f)] = L;   // output lane src takes unpermuted lane L
  return _mm512_load_si512(idx);
}

// The codebook is first packed into groups of 16 words: Cp[g][v][j][16] holds channels 16v..16v+15 of word 16g+j
// (zero past N and past K), so one pointer walks the 16 words of a channel vector. A tile is one pixel x 16 words:
// 16 vector accumulators over a block of QKB channels, then one transposing reduction gives the 16 sums at once.
constexpr int QKB = 256, QRC = 32;   // channels per block; rows per chunk
static void rows_fwd(const float* X, const float* C, float* D, int64_t R, int64_t K, int64_t N) {
  const __m512i perm = hsum16_perm();
  const int64_t KV = (K + 15) / 16, NG = (N + 15) / 16, KF = K / 16;   // channel vectors, word groups, full vectors
  std::vector<float> Cpv(NG * KV * 256 + 16, 0.f);   // 64-byte aligned below
  float* Cp = Cpv.data() + ((64 - (reinterpret_cast<uintptr_t>(Cpv.data()) & 63)) & 63) / sizeof(float);
  for (int64_t j = 0; j < N; ++j) for (int64_t k = 0; k < K; ++k) Cp[((j / 16 * KV + k / 16) * 16 + j % 16) * 16 + k % 16] = C[j * K + k];
  const __mmask16 tail = (__mmask16)((1u << (K % 16)) - 1);
  const int64_t nch = (R + QRC - 1) / QRC;
  at::parallel_for(0, nch, 1, [&](int64_t s, int64_t e) {   // threads split rows (pixels); every thread reads all of Cp
    for (int64_t ch = s; ch < e; ++ch) {
      const int64_t rb = ch * QRC, re = std::min<int64_t>(R, rb + QRC);
      for (int64_t vb = 0; vb < KV; vb += QKB / 16) {
        const int64_t ve = std::min<int64_t>(KV, vb + QKB / 16), vf = std::min<int64_t>(ve, KF);
        for (int64_t g = 0; g < NG; ++g) {
          const float* cg = Cp + g * KV * 256;
          const int nj = (int)std::min<int64_t>(16, N - g * 16);
          for (int64_t r = rb; r < re; ++r) {
            const float* x = X + r * K;
            __m512 a[16];
#pragma GCC unroll 16
            for (int j = 0; j < 16; ++j) a[j] = _mm512_setzero_ps();
            for (int64_t v = vb; v < vf; ++v) {
              const __m512 xv = _mm512_loadu_ps(x + v * 16); const float* c = cg + v * 256;
#pragma GCC unroll 16
              for (int j = 0; j < 16; ++j) a[j] = _mm512_add_ps(a[j], _mm512_abs_ps(_mm512_sub_ps(xv, _mm512_load_ps(c + j * 16))));
            }
            if (vf < ve) {   // the last, partial channel vector: zero-padded on both sides, adds |0 - 0| = 0
              const __m512 xv = _mm512_maskz_loadu_ps(tail, x + vf * 16); const float* c = cg + vf * 256;
#pragma GCC unroll 16
              for (int j = 0; j < 16; ++j) a[j] = _mm512_add_ps(a[j], _mm512_abs_ps(_mm512_sub_ps(xv, _mm512_load_ps(c + j * 16))));
            }
            const __m512 h = hsum16(a, perm);   // lane j: word 16g + j
            float* d = D + r * N + g * 16; const __mmask16 m = (__mmask16)((1u << nj) - 1);
            _mm512_mask_storeu_ps(d, m, vb == 0 ? h : _mm512_add_ps(_mm512_maskz_loadu_ps(m, d), h));
          }
        }
      }
    }
  });
}

// dX[r,k] = sum_j G[r,j] sign(X[r,k] - C[j,k]);  dC[j,k] = -sum_r G[r,j] sign(X[r,k] - C[j,k]);  sign(0) = 0.
// Vectors run over channels, so both sums accumulate lane-wise: dX of SR rows stays in registers over all words,
// dC is updated once per (word, SR rows). sign(d) in {-1, 0, +1} is one fixup-table instruction (zero -> 0,
// negative -> -1, positive -> +1, NaN stays NaN), and s * g is exact, so each term is two FMAs.
// Threads split channel slices: disjoint parts of dX and dC, no reduction.
static void rows_bwd(const float* X, const float* C, const float* G, float* dX, float* dC, int64_t R, int64_t K, int64_t N) {
  const int64_t nks = (K + 15) / 16;
  std::vector<float> zero(N, 0.f);   // G of the rows past R (a partial row tile): zero, so they add nothing
  at::parallel_for(0, nks, 1, [&](int64_t s, int64_t e) {
    const __m512 zv = _mm512_setzero_ps();
    // fixup responses by input class: QNaN, SNaN -> QNaN(d); zero -> +0; +1, +inf, positive -> +1; -inf, negative -> -1
    const __m512i table = _mm512_set1_epi32((int)0xA9A9A822u);
    for (int64_t kb = s; kb < e; kb += SKB) {
      const int64_t kbe = std::min<int64_t>(e, kb + SKB);
      for (int64_t r0 = 0; r0 < R; r0 += SR) {
        const float* g[SR]; const float* x[SR];
        #pragma GCC unroll 16
        for (int r = 0; r < SR; ++r) {
          const bool ok = r0 + r < R;
          g[r] = ok ? G + (r0 + r) * N : zero.data(); x[r] = X + std::min<int64_t>(r0 + r, R - 1) * K;
        }
        for (int64_t ks = kb; ks < kbe; ++ks) {
          const int64_t k = ks * 16; const __mmask16 m = kmask(k, K);
          __m512 xv[SR], dx[SR];
          #pragma GCC unroll 16
          for (int r = 0; r < SR; ++r) { xv[r] = _mm512_maskz_loadu_ps(m, x[r] + k); dx[r] = zv; }
          for (int64_t j = 0; j < N; ++j) {
            const __m512 c = _mm512_maskz_loadu_ps(m, C + j * K + k);
            __m512 la0 = zv, la1 = zv;
            #pragma GCC unroll 16
            for (int r = 0; r < SR; r += 2) {
              const __m512 s0 = _mm512_fixupimm_ps(zv, _mm512_sub_ps(xv[r], c), table, 0);
              const __m512 s1 = _mm512_fixupimm_ps(zv, _mm512_sub_ps(xv[r + 1], c), table, 0);
              const __m512 g0 = _mm512_set1_ps(g[r][j]), g1 = _mm512_set1_ps(g[r + 1][j]);
              dx[r] = _mm512_fmadd_ps(s0, g0, dx[r]); la0 = _mm512_fmadd_ps(s0, g0, la0);
              dx[r + 1] = _mm512_fmadd_ps(s1, g1, dx[r + 1]); la1 = _mm512_fmadd_ps(s1, g1, la1);
            }
            float* dc = dC + j * K + k;
            _mm512_mask_storeu_ps(dc, m, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dc), _mm512_add_ps(la0, la1)));
          }
          for (int r = 0; r < SR && r0 + r < R; ++r) _mm512_mask_storeu_ps(dX + (r0 + r) * K + k, m, dx[r]);
        }
      }
    }
  });
}
#endif

bool has_rows() {
#ifdef __AVX512F__
  return true;
#else
  return false;
#endif
}

torch::Tensor l1_rows_forward(torch::Tensor X, torch::Tensor C) {  // X (R,K), C (N,K): contiguous float32, CPU -> D (R,N)
  TORCH_CHECK(has_rows() && X.scalar_type() == torch::kFloat && C.scalar_type() == torch::kFloat, "l1_rows_forward: AVX-512 float32 only");
  const int64_t R = X.size(0), K = X.size(1), N = C.size(0);
  auto D = torch::empty({R, N}, X.options());
#ifdef __AVX512F__
  rows_fwd(X.data_ptr<float>(), C.data_ptr<float>(), D.data_ptr<float>(), R, K, N);
#endif
  return D;
}

std::vector<torch::Tensor> l1_rows_backward(torch::Tensor X, torch::Tensor C, torch::Tensor G) {  // G (R,N)
  TORCH_CHECK(has_rows() && X.scalar_type() == torch::kFloat, "l1_rows_backward: AVX-512 float32 only");
  const int64_t R = X.size(0), K = X.size(1), N = C.size(0);
  auto dX = torch::empty_like(X); auto dC = torch::zeros_like(C);
#ifdef __AVX512F__
  rows_bwd(X.data_ptr<float>(), C.data_ptr<float>(), G.data_ptr<float>(), dX.data_ptr<float>(), dC.data_ptr<float>(), R, K, N);
#endif
  return {dX, dC};
}

// The peak of the forward's arithmetic: acc += |x - c| (sub, abs, add) with everything in registers, 20 independent
// accumulators (no loads, no stores), run by every thread at once. The tight reference loop for the floor.
int64_t abs_diff_peak(int64_t reps) {
  const int nt = at::get_num_threads();
  std::vector<float> sink(nt, 0.f);
  at::parallel_for(0, nt, 1, [&](int64_t s, int64_t e) {
    for (int64_t t = s; t < e; ++t) {
#ifdef __AVX512F__
      __m512 acc[20], x[4], c[5];
      for (int i = 0; i < 20; ++i) acc[i] = _mm512_setzero_ps();
      for (int i = 0; i < 4; ++i) x[i] = _mm512_set1_ps(0.01f * (i + 1 + t));
      for (int i = 0; i < 5; ++i) c[i] = _mm512_set1_ps(0.003f * (i + 2));
      for (int64_t rep = 0; rep < reps; ++rep) {
#pragma GCC unroll 5
        for (int j = 0; j < 5; ++j)
#pragma GCC unroll 4
          for (int r = 0; r < 4; ++r)
          acc[j * 4 + r] = _mm512_add_ps(acc[j * 4 + r], _mm512_abs_ps(_mm512_sub_ps(x[r], c[j])));
        __asm__ volatile("" : "+v"(x[0]), "+v"(x[1]), "+v"(x[2]), "+v"(x[3]));   // x may change: nothing is hoisted
      }
      float sum = 0.f; alignas(64) float l[16];
      for (int i = 0; i < 20; ++i) { _mm512_store_ps(l, acc[i]); for (int q = 0; q < 16; ++q) sum += l[q]; }
      sink[t] = sum;
#else
      sink[t] = 0.f;
#endif
    }
  });
  float total = 0.f; for (float v : sink) total += v;
  if (total == -1.f) return 0;
#ifdef __AVX512F__
  return reps * 20 * 16 * (int64_t)nt;
#else
  return 0;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("l1_forward", &l1_forward, "D (B,N,HW) = sum_k |M (B,K,HW) - C (N,K)|");
  m.def("abs_diff_ceiling", &abs_diff_ceiling, "terms done by a streaming |x - c| accumulate loop in L1 on every thread");
  m.def("l1_backward", &l1_backward, "(dM, dC) from M, C and G = dL/dD");
  m.def("has_rows", &has_rows, "whether the rows-layout (channels-last) kernels were built (AVX-512)");
  m.def("l1_rows_forward", &l1_rows_forward, "D (R,N) = sum_k |X (R,K) - C (N,K)|, rows layout");
  m.def("l1_rows_backward", &l1_rows_backward, "(dX, dC) from X, C and G = dL/dD (R,N), rows layout");
  m.def("abs_diff_peak", &abs_diff_peak, "terms done by a register-only |x - c| accumulate loop on every thread");
}
