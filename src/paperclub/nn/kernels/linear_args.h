// What every build's `linear_on` checks and sets up before its own kernel: x (M, K) and w (N, K) contiguous and
// of one dtype, the output y (M, N) allocated, the bias as float32 (or none).
#pragma once
#include <torch/extension.h>

namespace {

struct LinearArgs {
  int64_t M, K, N;
  torch::Tensor y;
  torch::Tensor bias_f;  // keeps `bias` alive
  const float* bias = nullptr;
};

inline LinearArgs linear_args(const torch::Tensor& x, const torch::Tensor& w,
                              const c10::optional<torch::Tensor>& bias_opt) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "linear: shapes do not fit");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && x.scalar_type() == w.scalar_type(), "linear: layout");
  LinearArgs a{x.size(0), x.size(1), w.size(0), torch::empty({x.size(0), w.size(0)}, x.options()), {}};
  if (bias_opt.has_value() && bias_opt->defined()) {
    a.bias_f = bias_opt->to(torch::kFloat32).contiguous();
    a.bias = a.bias_f.data_ptr<float>();
  }
  return a;
}

}  // namespace
