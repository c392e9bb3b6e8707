// The Python module of the CPU kernels. One source list per instruction set (see `cpu_kernels.py`): the AVX-512
// BF16 build links `linear_cpu.cpp` and `amx_cpu.cpp`, the AVX-512 and AVX2 builds `linear_fma.cpp`; all link
// `attention_cpu.cpp`, `block_cpu.cpp`, `argmax_cpu.cpp` and this file, which see only the declarations below.
#include <torch/extension.h>

bool amx_available();
torch::Tensor linear_on(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias_opt, bool amx);
torch::Tensor linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias_opt);
torch::Tensor argmax_rows(torch::Tensor x);  // argmax_cpu.cpp
torch::Tensor pack(torch::Tensor w);  // linear_*.cpp: the weight layout `linear` reads fastest
torch::Tensor attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots,
                        int64_t S, c10::optional<torch::Tensor> mask_opt, double scale);  // attention_cpu.cpp
torch::Tensor block(torch::Tensor x, torch::Tensor attn_norm, torch::Tensor w_qkv, c10::optional<torch::Tensor> b_qkv,
                    c10::optional<torch::Tensor> q_norm, c10::optional<torch::Tensor> k_norm, torch::Tensor w_o,
                    c10::optional<torch::Tensor> b_o, torch::Tensor mlp_norm, torch::Tensor w_gate_up,
                    torch::Tensor w_down, torch::Tensor cos, torch::Tensor sin, torch::Tensor k_cache,
                    torch::Tensor v_cache, torch::Tensor slots, torch::Tensor write_index, int64_t S,
                    c10::optional<torch::Tensor> mask, int64_t num_heads, double eps);  // block_cpu.cpp
torch::Tensor layers(torch::Tensor x, std::vector<c10::optional<torch::Tensor>> params,
                     std::vector<torch::Tensor> k_caches, std::vector<torch::Tensor> v_caches, torch::Tensor cos,
                     torch::Tensor sin, torch::Tensor slots, torch::Tensor write_index, int64_t S,
                     c10::optional<torch::Tensor> mask, int64_t num_heads, double eps);  // block_cpu.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear", &linear, "batch-invariant linear (AMX tiles for bf16 where the CPU has them)");
  m.def("linear_on", &linear_on, "linear on a chosen path (amx=True: AMX tiles, False: vector dot products)");
  m.def("pack", &pack, "a weight matrix in the layout this build's linear reads (the same tensor where it has none)");
  m.def("argmax", &argmax_rows, "torch.argmax(x, dim=-1) of (R, V) float32 logits, 8 lanes at a time");
  m.def("amx", &amx_available, "whether bf16 linears run on AMX tiles in this process");
  m.def("attention", &attention, "batch-invariant attention over a slot KV cache");
  m.def("layers", &layers, "all decoder blocks of a model, one after the other");
  m.def("block", &block, "one Llama decoder block: norms, projections, rope, cache write, attention, MLP");
}
