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
                        int64_t S, c10::optional<torch::Tensor> mask_opt, double scale,
                        c10::optional<torch::Tensor> cu_seqlens);  // attention_cpu.cpp
torch::Tensor attention_on(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots,
                           int64_t S, c10::optional<torch::Tensor> mask_opt, double scale,
                           c10::optional<torch::Tensor> cu_seqlens, bool amx);
bool attention_uses_amx(int64_t D);
torch::Tensor block(torch::Tensor x, torch::Tensor attn_norm, torch::Tensor w_qkv, c10::optional<torch::Tensor> b_qkv,
                    c10::optional<torch::Tensor> q_norm, c10::optional<torch::Tensor> k_norm, torch::Tensor w_o,
                    c10::optional<torch::Tensor> b_o, torch::Tensor mlp_norm, torch::Tensor w_gate_up,
                    torch::Tensor w_down, torch::Tensor cos, torch::Tensor sin, torch::Tensor k_cache,
                    torch::Tensor v_cache, torch::Tensor slots, torch::Tensor write_index, int64_t S,
                    c10::optional<torch::Tensor> mask, int64_t num_heads, double eps,
                    c10::optional<torch::Tensor> cu_seqlens);  // block_cpu.cpp
torch::Tensor layers(torch::Tensor x, std::vector<c10::optional<torch::Tensor>> params,
                     std::vector<torch::Tensor> k_caches, std::vector<torch::Tensor> v_caches, torch::Tensor cos,
                     torch::Tensor sin, torch::Tensor slots, torch::Tensor write_index, int64_t S,
                     c10::optional<torch::Tensor> mask, int64_t num_heads, double eps,
                     c10::optional<torch::Tensor> cu_seqlens, c10::optional<torch::Tensor> final_norm);
torch::Tensor rmsnorm(torch::Tensor x, torch::Tensor w, double eps);  // block_cpu.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear", &linear, "batch-invariant linear (AMX tiles for bf16 where the CPU has them)");
  m.def("linear_on", &linear_on, "linear on a chosen path (amx=True: AMX tiles, False: vector dot products)");
  m.def("pack", &pack, "a weight matrix in the layout this build's linear reads (the same tensor where it has none)");
  m.def("argmax", &argmax_rows, "torch.argmax(x, dim=-1) of (R, V) float32 logits, 8 lanes at a time");
  m.def("amx", &amx_available, "whether bf16 linears run on AMX tiles in this process");
  // cu_seqlens (last, optional): a ragged batch's tokens packed row after row (see block_cpu.cpp)
  m.def("attention", &attention, "batch-invariant attention over a slot KV cache", py::arg("q"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("slots"), py::arg("S"), py::arg("mask"), py::arg("scale"),
        py::arg("cu_seqlens") = py::none());
  m.def("attention_on", &attention_on, "attention on a chosen path (amx=True: scores on AMX tiles, bf16 only)",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("slots"), py::arg("S"), py::arg("mask"),
        py::arg("scale"), py::arg("cu_seqlens") = py::none(), py::arg("amx") = false);
  m.def("attention_amx", &attention_uses_amx, "whether bf16 attention with heads of this size runs on AMX tiles",
        py::arg("head_dim"));
  m.def("layers", &layers, "all decoder blocks of a model, one after the other", py::arg("x"), py::arg("params"),
        py::arg("k_caches"), py::arg("v_caches"), py::arg("cos"), py::arg("sin"), py::arg("slots"),
        py::arg("write_index"), py::arg("S"), py::arg("mask"), py::arg("num_heads"), py::arg("eps"),
        py::arg("cu_seqlens") = py::none(), py::arg("final_norm") = py::none());
  m.def("rmsnorm", &rmsnorm, "w * rmsnorm(x) over the last dimension, as the blocks' norms compute it",
        py::arg("x"), py::arg("w"), py::arg("eps"));
  m.def("block", &block, "one Llama decoder block: norms, projections, rope, cache write, attention, MLP", py::arg("x"),
        py::arg("attn_norm"), py::arg("w_qkv"), py::arg("b_qkv"), py::arg("q_norm"), py::arg("k_norm"), py::arg("w_o"),
        py::arg("b_o"), py::arg("mlp_norm"), py::arg("w_gate_up"), py::arg("w_down"), py::arg("cos"), py::arg("sin"),
        py::arg("k_cache"), py::arg("v_cache"), py::arg("slots"), py::arg("write_index"), py::arg("S"),
        py::arg("mask"), py::arg("num_heads"), py::arg("eps"), py::arg("cu_seqlens") = py::none());
}
