// Kernels of the word encoder (smvwe.words) for CPUs, each giving the bits of the PyTorch expression it replaces:
// the standardisation's variance over channels and centred features (torch.var, x - mu), and the word labels of Eq. 3
// (argmax over words). Built with word_distance.cpp into one extension (smvwe.cext.load_ext), with -ffp-contract=off:
// a fused multiply-add would round once where torch rounds twice.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
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
typedef double vd __attribute__((vector_size(64)));
constexpr int VW = 8, VR = 4, TP = VW * VR;

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

void bind_words(pybind11::module_& m) {   // called by word_distance.cpp's module definition
  m.def("channel_var_center", &channel_var_center, "var (B,P) over channels (torch.var's bits, correction 0) and x - mu (B,K,P), both contiguous");
  m.def("word_argmax", &word_argmax, "torch.argmax(x, 1) of x (B,N,P): (B,P) int64");
}
