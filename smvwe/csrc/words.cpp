// Kernels of the word encoder (smvwe.words) for CPUs. Narrow features (below WIDE_K channels, every result the project
// ships): each kernel gives the bits of the PyTorch expression it replaces, the standardisation's variance over
// channels and centred features (torch.var, x - mu); and the word labels of Eq. 3 (argmax over words, exact at every
// width). Wide features (ResNet's 2048 or 4096 channels): the standardisation forward and backward and the s_word
// head's pooling in one pass each, exact up to float rounding but not in torch's rounding. Built with
// word_distance.cpp into one extension (smvwe.cext.load_ext), with -ffp-contract=off: a fused multiply-add would
// round once where torch rounds twice.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

template <typename S> static inline double widen(S v) {   // exact: bfloat16 / float16 -> float -> double
  if constexpr (std::is_same_v<S, double>) return v; else return static_cast<double>(static_cast<float>(v)); }

// torch.var(x, 1, correction=0) on a CPU reduces each pixel serially, channels in order, by Welford's update in double
// (WelfordOps of ATen/native/SharedReduceOps.h, for fewer than 32768 channels: no split of one pixel's sum):
//   n += 1; d = x - mean; mean += d / n; m2 += d * (x - mean);   var = m2 / n, rounded to x's dtype (through float).
// Here the same operations in the same order, for 32 pixels side by side in vector lanes (the division's latency is
// what torch's loop waits on, one pixel at a time).
#ifdef __AVX512F__
typedef double vd __attribute__((vector_size(64)));
constexpr int VW = 8, VR = 4, TP = VW * VR;
#else   // GCC lowers 64-byte vectors badly on AVX2 (see word_distance.cpp's HB); the same 32 pixels, the same bits
typedef double vd __attribute__((vector_size(32)));
constexpr int VW = 4, VR = 8, TP = VW * VR;
#endif

template <typename S>
static void channel_var_impl(const S* x, int64_t sB, int64_t sK, int64_t sP, S* out, int64_t B, int64_t K, int64_t P) {
  const int64_t nt = (P + TP - 1) / TP;
  at::parallel_for(0, B * nt, 1, [&](int64_t s, int64_t e) {
    std::vector<double> buf(K * TP);
    for (int64_t t = s; t < e; ++t) {
      const int64_t b = t / nt, p0 = (t % nt) * TP, pn = std::min<int64_t>(TP, P - p0);
      const S* xb = x + b * sB + p0 * sP;
      for (int64_t p = 0; p < TP; ++p)
        for (int64_t k = 0; k < K; ++k) buf[k * TP + p] = p < pn ? widen(xb[p * sP + k * sK]) : 0.;
      vd mean[VR], m2[VR];
      for (int r = 0; r < VR; ++r) { mean[r] = vd{}; m2[r] = vd{}; }
      for (int64_t k = 0; k < K; ++k) {
        const double nf = static_cast<double>(k + 1);
        for (int r = 0; r < VR; ++r) {
          vd v; std::memcpy(&v, &buf[k * TP + r * VW], sizeof(vd));
          const vd d = v - mean[r];
          mean[r] = mean[r] + d / nf;
          m2[r] = m2[r] + d * (v - mean[r]);
        }
      }
      for (int64_t p = 0; p < pn; ++p) {
        const double var = m2[p / VW][p % VW] / static_cast<double>(K);
        if constexpr (std::is_same_v<S, double>) out[b * P + p0 + p] = var;
        else out[b * P + p0 + p] = static_cast<S>(static_cast<float>(var));
      }
    }
  });
}

// x - mu as torch's subtraction rounds it (bfloat16 / float16: in float, rounded once to x's dtype), written channels
// first whatever x's layout (32 x 32 blocks), so that the backward's products with the channels-first gradient of the
// fused distance kernel read both operands in the same order.
template <typename S>
static void center_impl(const S* x, int64_t sB, int64_t sK, int64_t sP, const S* mu, S* out, int64_t B, int64_t K, int64_t P) {
  constexpr int64_t TB = 32;
  const int64_t nkb = (K + TB - 1) / TB;
  at::parallel_for(0, B * nkb, 1, [&](int64_t s, int64_t e) {
    for (int64_t t = s; t < e; ++t) {
      const int64_t b = t / nkb, k0 = (t % nkb) * TB, kn = std::min<int64_t>(TB, K - k0);
      const S* mb = mu + b * P;
      for (int64_t p0 = 0; p0 < P; p0 += TB) {
        const int64_t pn = std::min<int64_t>(TB, P - p0);
        for (int64_t k = 0; k < kn; ++k) {
          S* o = out + (b * K + k0 + k) * P + p0;
          const S* i = x + b * sB + (k0 + k) * sK + p0 * sP;
          for (int64_t p = 0; p < pn; ++p) {
            if constexpr (std::is_same_v<S, double> || std::is_same_v<S, float>) o[p] = i[p * sP] - mb[p0 + p];
            else o[p] = static_cast<S>(static_cast<float>(i[p * sP]) - static_cast<float>(mb[p0 + p]));
          }
        }
      }
    }
  });
}

std::vector<torch::Tensor> channel_var_center(torch::Tensor x, torch::Tensor mu) {
  // x (B,K,P) any strides, mu (B,P) contiguous, same dtype -> var (B,P) and x - mu (B,K,P), both contiguous
  TORCH_CHECK(x.dim() == 3 && x.size(1) > 0 && mu.dim() == 2 && mu.size(0) == x.size(0) && mu.size(1) == x.size(2) &&
              mu.is_contiguous() && mu.scalar_type() == x.scalar_type(), "channel_var_center: x (B,K,P), mu (B,P) contiguous");
  auto opt = x.options().memory_format(at::MemoryFormat::Contiguous);
  auto var = torch::empty({x.size(0), x.size(2)}, opt), xm = torch::empty(x.sizes(), opt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "channel_var_center", [&] {
    channel_var_impl<scalar_t>(x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), var.data_ptr<scalar_t>(),
                               x.size(0), x.size(1), x.size(2));
    center_impl<scalar_t>(x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), mu.data_ptr<scalar_t>(),
                          xm.data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2)); });
  return {var, xm};
}

// Eq. 3's word labels, torch.argmax(P, 1): per pixel the first index of the largest value, a NaN counting as the
// largest (ATen's GreaterOrNan: the running best is replaced by a later value iff it is not NaN and the value is NaN
// or greater). Comparisons are exact, so 64 pixels run side by side; torch reduces one pixel at a time.
template <typename S>
static void word_argmax_impl(const S* x, int64_t sB, int64_t sN, int64_t sP, int64_t* out, int64_t B, int64_t N, int64_t P) {
  using A = std::conditional_t<std::is_same_v<S, double>, double, float>;   // exact widening
  constexpr int64_t TP = 64;
  const int64_t nt = (P + TP - 1) / TP;
  at::parallel_for(0, B * nt, 1, [&](int64_t s, int64_t e) {
    A best[TP]; int64_t idx[TP];
    for (int64_t t = s; t < e; ++t) {
      const int64_t b = t / nt, p0 = (t % nt) * TP, pn = std::min<int64_t>(TP, P - p0);
      const S* xb = x + b * sB + p0 * sP;
      for (int64_t p = 0; p < pn; ++p) { best[p] = static_cast<A>(xb[p * sP]); idx[p] = 0; }
      for (int64_t n = 1; n < N; ++n) {
        const S* xn = xb + n * sN;
        for (int64_t p = 0; p < pn; ++p) {
          const A v = static_cast<A>(xn[p * sP]);
          const bool take = !(best[p] != best[p]) && ((v != v) || v > best[p]);
          best[p] = take ? v : best[p]; idx[p] = take ? n : idx[p];
        }
      }
      std::memcpy(out + b * P + p0, idx, pn * sizeof(int64_t));
    }
  });
}

torch::Tensor word_argmax(torch::Tensor x) {   // x (B,N,P) any strides, N > 0 -> (B,P) int64
  TORCH_CHECK(x.dim() == 3 && x.size(1) > 0, "word_argmax: x (B,N,P) with N > 0");
  auto out = torch::empty({x.size(0), x.size(2)}, x.options().dtype(torch::kInt64).memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "word_argmax", [&] {
    word_argmax_impl<scalar_t>(x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), out.data_ptr<int64_t>(),
                               x.size(0), x.size(1), x.size(2)); });
  return out;
}

// The standardisation of wide features (smvwe.words.standardize from WIDE_K channels up, ResNet features): each pixel's
// mean and variance over its channels accumulated in double over a tile of pixels gathered in x's dtype widened
// exactly, then xhat = (x - mean) * rstd in float (double for double x), written channels first: the input the fused
// distance kernel reads. One read of the features and one write where torch's expression makes six passes; the
// rounding is not torch's (`channel_var_center` keeps that for narrow features).
template <typename S> using Acc = std::conditional_t<std::is_same_v<S, double>, double, float>;
constexpr int64_t SP = 64;   // pixels per tile (a row of 256 bytes per channel): a tile of 4096 channels is 1 MB of float, in L2

template <typename S>
static void std_fwd_impl(const S* x, int64_t sB, int64_t sK, int64_t sP, Acc<S>* xh, Acc<S>* rs, int64_t B, int64_t K,
                         int64_t P, double eps) {
  using O = Acc<S>;
  const int64_t nt = (P + SP - 1) / SP;
  at::parallel_for(0, B * nt, 1, [&](int64_t s, int64_t e) {
    std::vector<O> buf(K * SP);
    for (int64_t t = s; t < e; ++t) {
      const int64_t b = t / nt, p0 = (t % nt) * SP, pn = std::min<int64_t>(SP, P - p0);
      const S* xb = x + b * sB + p0 * sP;
      if (sK == 1) {                                   // channels-last: each pixel's channels are contiguous; 64 at a
        for (int64_t k0 = 0; k0 < K; k0 += SP) {       // time, so that the block being transposed (16 kB) stays in L1
          const int64_t kn = std::min<int64_t>(SP, K - k0);
          for (int64_t p = 0; p < SP; ++p) {
            const S* xp = xb + p * sP + k0;
            for (int64_t k = 0; k < kn; ++k) buf[(k0 + k) * SP + p] = p < pn ? static_cast<O>(xp[k]) : O(0);
          }
        }
      } else {
        for (int64_t k = 0; k < K; ++k) {
          const S* xk = xb + k * sK;
          for (int64_t p = 0; p < SP; ++p) buf[k * SP + p] = p < pn ? static_cast<O>(xk[p * sP]) : O(0);
        }
      }
      double sum[SP] = {}, ss[SP] = {}, mean[SP];
      for (int64_t k = 0; k < K; ++k)
        for (int64_t p = 0; p < SP; ++p) sum[p] += static_cast<double>(buf[k * SP + p]);
      for (int64_t p = 0; p < SP; ++p) mean[p] = sum[p] / static_cast<double>(K);
      for (int64_t k = 0; k < K; ++k)
        for (int64_t p = 0; p < SP; ++p) { const double d = static_cast<double>(buf[k * SP + p]) - mean[p]; ss[p] += d * d; }
      O m[SP], r[SP];
      for (int64_t p = 0; p < SP; ++p) {
        m[p] = static_cast<O>(mean[p]);
        r[p] = static_cast<O>(1.0 / std::sqrt(ss[p] / static_cast<double>(K) + eps));
      }
      for (int64_t k = 0; k < K; ++k) {
        O* o = xh + (b * K + k) * P + p0;
        const O* i = &buf[k * SP];
        for (int64_t p = 0; p < pn; ++p) o[p] = (i[p] - m[p]) * r[p];
      }
      for (int64_t p = 0; p < pn; ++p) rs[b * P + p0 + p] = r[p];
    }
  });
}

// Its backward: dx = rstd * (g - mean_k(g) - xhat * mean_k(g xhat)) per pixel (the sums in double), g and xhat channels
// first, dx written in x's dtype and strides (channels-last: through the tile buffer, each pixel's channels in a row).
template <typename S>
static void std_bwd_impl(const Acc<S>* g, const Acc<S>* xh, const Acc<S>* rs, S* dx, int64_t sB, int64_t sK, int64_t sP,
                         int64_t B, int64_t K, int64_t P) {
  using O = Acc<S>;
  constexpr int64_t BP = 64, KB = 16;   // 64 pixels per tile (a row of 256 bytes per channel), 16 channels per block
  const int64_t nt = (P + BP - 1) / BP;
  at::parallel_for(0, B * nt, 1, [&](int64_t s, int64_t e) {
    for (int64_t t = s; t < e; ++t) {
      const int64_t b = t / nt, p0 = (t % nt) * BP;
      auto tile = [&](auto full) {                     // full tiles: a constant trip count keeps the sums in registers
        const int64_t pn = decltype(full)::value ? BP : P - p0;
        double s1[BP] = {}, s2[BP] = {};
        for (int64_t k = 0; k < K; ++k) {
          const O* gk = g + (b * K + k) * P + p0; const O* xk = xh + (b * K + k) * P + p0;
          for (int64_t p = 0; p < pn; ++p) { s1[p] += static_cast<double>(gk[p]); s2[p] += static_cast<double>(gk[p]) * static_cast<double>(xk[p]); }
        }
        O a[BP], c[BP], r[BP];
        for (int64_t p = 0; p < pn; ++p) {
          a[p] = static_cast<O>(s1[p] / static_cast<double>(K)); c[p] = static_cast<O>(s2[p] / static_cast<double>(K));
          r[p] = rs[b * P + p0 + p];
        }
        for (int64_t k0 = 0; k0 < K; k0 += KB) {       // 16 channels at a time: their 16 x 16 values in L1
          const int64_t kn = std::min<int64_t>(KB, K - k0);
          O tile[KB * BP];
          for (int64_t k = 0; k < kn; ++k) {
            const O* gk = g + (b * K + k0 + k) * P + p0; const O* xk = xh + (b * K + k0 + k) * P + p0;
            for (int64_t p = 0; p < pn; ++p) tile[k * BP + p] = r[p] * ((gk[p] - a[p]) - xk[p] * c[p]);
          }
          if (sK == 1)                                 // channels-last: each pixel's 16 channels in a row
            for (int64_t p = 0; p < pn; ++p) {
              S* o = dx + b * sB + (p0 + p) * sP + k0;
              for (int64_t k = 0; k < kn; ++k) o[k] = static_cast<S>(tile[k * BP + p]);
            }
          else
            for (int64_t k = 0; k < kn; ++k) {
              S* o = dx + b * sB + (k0 + k) * sK + p0 * sP;
              for (int64_t p = 0; p < pn; ++p) o[p * sP] = static_cast<S>(tile[k * BP + p]);
            }
        }
      };
      if (p0 + BP <= P) tile(std::true_type{}); else tile(std::false_type{});
    }
  });
}

std::vector<torch::Tensor> std_forward(torch::Tensor x, double eps) {
  // x (B,K,P) any strides -> xhat (B,K,P) contiguous and rstd (B,P), float32 (float64 for float64 x)
  TORCH_CHECK(x.dim() == 3 && x.size(1) > 0, "std_forward: x (B,K,P) with K > 0");
  auto od = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  auto opt = x.options().dtype(od).memory_format(at::MemoryFormat::Contiguous);
  auto xh = torch::empty(x.sizes(), opt), rs = torch::empty({x.size(0), x.size(2)}, opt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "std_forward", [&] {
    std_fwd_impl<scalar_t>(x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), xh.data_ptr<Acc<scalar_t>>(),
                           rs.data_ptr<Acc<scalar_t>>(), x.size(0), x.size(1), x.size(2), eps); });
  return {xh, rs};
}

torch::Tensor std_backward(torch::Tensor g, torch::Tensor xh, torch::Tensor rs, torch::Tensor dx) {
  // g, xhat (B,K,P) contiguous and rstd (B,P) of std_forward's dtype; dx (B,K,P) any strides, x's dtype: written
  TORCH_CHECK(xh.dim() == 3 && g.sizes() == xh.sizes() && dx.sizes() == xh.sizes() && rs.dim() == 2 &&
              rs.size(0) == xh.size(0) && rs.size(1) == xh.size(2) && g.is_contiguous() && xh.is_contiguous() &&
              rs.is_contiguous() && g.scalar_type() == xh.scalar_type() && rs.scalar_type() == xh.scalar_type(),
              "std_backward: g, xhat (B,K,P) contiguous, rstd (B,P), one dtype; dx (B,K,P)");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dx.scalar_type(), "std_backward", [&] {
    using O = Acc<scalar_t>;
    TORCH_CHECK(xh.scalar_type() == c10::CppTypeToScalarType<O>::value, "std_backward: xhat's dtype must be std_forward's for dx's dtype");
    std_bwd_impl<scalar_t>(g.data_ptr<O>(), xh.data_ptr<O>(), rs.data_ptr<O>(), dx.data_ptr<scalar_t>(), dx.stride(0),
                           dx.stride(1), dx.stride(2), xh.size(0), xh.size(1), xh.size(2)); });
  return dx;
}

// The s_word head's global average pool of wide features (smvwe.words.mean_hw from WIDE_K channels up): each channel's
// mean over the pixels, summed in double and rounded once to x's dtype (through float), read in x's layout. torch's
// mean of bfloat16 features first converts all of them to float, a full pass written out; the rounding is not torch's.
template <typename S>
static void channel_mean_impl(const S* x, int64_t sB, int64_t sK, int64_t sP, S* out, int64_t B, int64_t K, int64_t P) {
  constexpr int64_t KC = 512;   // channels per task: their sums (4 kB) stay in L1 while the pixels stream past
  const int64_t nkc = (K + KC - 1) / KC;
  at::parallel_for(0, B * nkc, 1, [&](int64_t s, int64_t e) {
    double acc[KC];
    for (int64_t t = s; t < e; ++t) {
      const int64_t b = t / nkc, k0 = (t % nkc) * KC, kn = std::min<int64_t>(KC, K - k0);
      const S* xb = x + b * sB + k0 * sK;
      if (sK == 1) {                                   // channels-last: every pixel's channels in a row
        std::fill(acc, acc + kn, 0.);
        for (int64_t p = 0; p < P; ++p) { const S* xp = xb + p * sP; for (int64_t k = 0; k < kn; ++k) acc[k] += static_cast<double>(xp[k]); }
      } else
        for (int64_t k = 0; k < kn; ++k) {
          double a = 0.; const S* xk = xb + k * sK;
          for (int64_t p = 0; p < P; ++p) a += static_cast<double>(xk[p * sP]);
          acc[k] = a;
        }
      for (int64_t k = 0; k < kn; ++k) {
        const double m = acc[k] / static_cast<double>(P);
        if constexpr (std::is_same_v<S, double>) out[b * K + k0 + k] = m;
        else out[b * K + k0 + k] = static_cast<S>(static_cast<float>(m));
      }
    }
  });
}

torch::Tensor channel_mean(torch::Tensor x) {   // x (B,K,P) any strides, P > 0 -> (B,K) contiguous, x's dtype
  TORCH_CHECK(x.dim() == 3 && x.size(2) > 0, "channel_mean: x (B,K,P) with P > 0");
  auto out = torch::empty({x.size(0), x.size(1)}, x.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "channel_mean", [&] {
    channel_mean_impl<scalar_t>(x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), out.data_ptr<scalar_t>(),
                                x.size(0), x.size(1), x.size(2)); });
  return out;
}

void bind_words(pybind11::module_& m) {   // called by word_distance.cpp's module definition
  m.def("channel_var_center", &channel_var_center, "var (B,P) over channels (torch.var's bits, correction 0) and x - mu (B,K,P), both contiguous");
  m.def("word_argmax", &word_argmax, "torch.argmax(x, 1) of x (B,N,P): (B,P) int64");
  m.def("channel_mean", &channel_mean, "x (B,K,P) -> its mean over P, (B,K) in x's dtype");
  m.def("std_forward", &std_forward, "per-pixel standardisation of x (B,K,P) over K: xhat (B,K,P) contiguous, rstd (B,P), float32/64");
  m.def("std_backward", &std_backward, "std_forward's backward into dx (B,K,P), x's dtype and strides");
}
