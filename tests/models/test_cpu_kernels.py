"""The compiled CPU kernels: batch invariance (bit-exact, whatever shares the call) and agreement with torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from paperclub.errors import UserError
from paperclub.models.config import ModelConfig
from paperclub.models.llama import AttentionMeta, Block
from paperclub.nn.cpu_kernels import (
    AVX2,
    AVX512,
    AVX512_BF16,
    cpu_flags,
    cpu_kernel,
    kernel_build,
    load_build,
    selected_build,
)
from paperclub.nn.linear import linear
from paperclub.nn.rope import rope_table

pytestmark = pytest.mark.skipif(cpu_kernel() is None, reason="CPU kernels need AVX-512 or AVX2+FMA, and a compiler")


@pytest.fixture(params=[AVX512_BF16, AVX512, AVX2], ids=lambda b: b.name)
def kernels(request):
    """Every build this CPU can run (an AVX-512 BF16 machine runs all three), so that one machine checks the
    invariance of more than the build it uses."""
    if not request.param.requires <= cpu_flags():
        pytest.skip(f"this CPU cannot run {request.param.name}")
    build = load_build(request.param)
    if build is None:
        pytest.skip(f"{request.param.name} could not be built")
    return build


def test_the_build_follows_the_cpu_flags():
    assert kernel_build({"avx512f", "avx512_bf16", "avx2", "fma"}) is AVX512_BF16
    skylake_sp = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"}
    assert kernel_build(skylake_sp) is AVX512
    assert kernel_build({"avx512f", "avx2", "fma", "f16c"}) is AVX2  # Knights Landing: AVX-512F without BW
    assert kernel_build({"avx2", "fma", "f16c"}) is AVX2
    assert kernel_build({"sse4_2", "avx"}) is None

def test_a_forced_build_is_checked(monkeypatch):
    monkeypatch.setenv("PAPERCLUB_CPU_KERNELS", "sse4")
    with pytest.raises(UserError, match="expected one of avx512_bf16, avx512, avx2, none"):
        selected_build.__wrapped__()
    monkeypatch.setenv("PAPERCLUB_CPU_KERNELS", "none")
    assert selected_build.__wrapped__() is None
    lacking = next((b for b in (AVX512_BF16, AVX512) if not b.requires <= cpu_flags()), None)
    if lacking is not None:
        monkeypatch.setenv("PAPERCLUB_CPU_KERNELS", {AVX512_BF16: "avx512_bf16", AVX512: "avx512"}[lacking])
        with pytest.raises(UserError, match="this CPU lacks"):
            selected_build.__wrapped__()


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("N", "K"), [(37, 64), (37, 96), (200, 96)])
def test_linear_rows_do_not_depend_on_the_batch(kernels, dtype, N, K):
    g = torch.Generator().manual_seed(0)
    # 37 or 200 output columns: full tiles of weight rows or panels, leftovers, a padded last panel
    w = torch.randn(N, K, generator=g).to(dtype)
    b = torch.randn(N, generator=g).to(dtype)
    x = torch.randn(53, K, generator=g).to(dtype)  # up to 53 rows: every x tile height, prefill-sized x blocks
    wp = kernels.pack(w)
    alone = torch.cat([kernels.linear(x[i : i + 1].contiguous(), w, b) for i in range(53)])
    for m in (2, 4, 5, 7, 9, 16, 17, 53):  # 5, 9, 17, 53: the 8-lane build starts with a 5-row tile
        assert torch.equal(kernels.linear(x[:m].contiguous(), w, b), alone[:m]), f"rows differ at batch {m}"
        # the packed weight (what the engine passes) gives the same bits; it may round N up to whole panels
        assert torch.equal(kernels.linear(x[:m].contiguous(), wp, b)[:, :N], alone[:m]), f"packed, batch {m}"
    ref = F.linear(x.double(), w.double(), b.double())
    tol = 1e-4 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(alone.double(), ref, atol=tol, rtol=tol * 0.1)


def test_a_weight_changed_in_place_is_packed_again():
    """`linear` keeps the packed copy on the weight; an in-place change (loading, an optimizer step) must not leave
    it stale."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(48, 64, generator=g).bfloat16()
    x = torch.randn(3, 64, generator=g).bfloat16()
    before = linear(x, w)
    assert torch.equal(linear(x, w), before)
    w.mul_(2)  # exact in bf16
    assert torch.equal(linear(x, w), cpu_kernel().linear(x, w, None))
    torch.testing.assert_close(linear(x, w).float(), 2 * before.float(), rtol=1e-2, atol=1e-2)
    p = torch.nn.Parameter(w.float(), requires_grad=False)
    assert torch.equal(linear(x.float(), p), cpu_kernel().linear(x.float(), p.data, None))
    p.data = w.clone()  # what Module.to(dtype) does: new values under the same Parameter
    assert torch.equal(linear(x, p), cpu_kernel().linear(x, w, None))


@pytest.mark.skipif(cpu_kernel() is None or not cpu_kernel().amx(), reason="CPU has no AMX tiles")
@pytest.mark.parametrize("amx", [True, False])
def test_bf16_linear_paths_are_batch_invariant_and_agree(amx):
    """Both bf16 paths (AMX tiles, AVX-512 dot products): rows are bit-identical at any batch size, including
    x blocks past 16 rows and a last weight block of fewer than 16 rows, and each agrees with float64 torch."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(53, 96, generator=g).bfloat16()  # 53 = 3 full 16-row blocks + 5
    b = torch.randn(53, generator=g).bfloat16()
    x = torch.randn(35, 96, generator=g).bfloat16()  # 35 = 2 full 16-row blocks + 3
    lin = cpu_kernel().linear_on
    alone = torch.cat([lin(x[i : i + 1].contiguous(), w, b, amx) for i in range(35)])
    for m in (2, 5, 16, 17, 35):
        assert torch.equal(lin(x[:m].contiguous(), w, b, amx), alone[:m]), f"rows differ at batch {m}"
    ref = F.linear(x.double(), w.double(), b.double())
    torch.testing.assert_close(alone.double(), ref, atol=0.1, rtol=1e-2)  # bf16 output rounding: 2^-8 relative
    other = lin(x, w, b, not amx).double()  # the two reduce in different orders: close, not equal
    torch.testing.assert_close(alone.double(), other, atol=0.1, rtol=1e-2)


@pytest.mark.skipif(cpu_kernel() is None or not cpu_kernel().amx(), reason="CPU has no AMX tiles")
def test_amx_rows_identical_at_every_width_on_model_shapes():
    """The AMX path sizes its x tiles to the batch (one column at decode, up to 16): every batch size from 1 to 16
    gives bit-identical rows on the default model's widths (K = 576 and the MLP's 1536, 48 k-steps)."""
    g = torch.Generator().manual_seed(7)
    for k in (576, 1536):
        w = (torch.randn(96, k, generator=g) * k**-0.5).bfloat16()
        x = torch.randn(16, k, generator=g).bfloat16()
        full = cpu_kernel().linear_on(x, w, None, True)
        for m in range(1, 16):
            got = cpu_kernel().linear_on(x[:m].contiguous(), w, None, True)
            assert torch.equal(got, full[:m]), f"K={k}: rows differ at batch {m}"


def small_attention_inputs(dtype, seed: int, D: int = 16):
    """3 rows x 5 queries x 4 heads of D (2 KV heads), 20 of 32 cache entries, a random mask that keeps key 0."""
    g = torch.Generator().manual_seed(seed)
    kc = torch.randn(3, 2, 32, D, generator=g).to(dtype)
    vc = torch.randn(3, 2, 32, D, generator=g).to(dtype)
    q = torch.randn(3, 5, 4, D, generator=g).to(dtype)
    slots, S = torch.tensor([2, 0, 1]), 20
    mask = torch.rand(3, 5, S, generator=g) > 0.3
    mask[..., 0] = True
    return q, kc, vc, slots, S, mask


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_rows_do_not_depend_on_the_batch(kernels, dtype):
    q, kc, vc, slots, S, mask = small_attention_inputs(dtype, seed=1)
    both = kernels.attention(q, kc, vc, slots, S, mask, 0.25)
    one = kernels.attention(q[1:2, 3:4].contiguous(), kc, vc, slots[1:2], S, mask[1:2, 3:4].contiguous(), 0.25)
    assert torch.equal(both[1:2, 3:4], one)
    assert_close_to_torch(both, q, kc, vc, slots, S, mask)


def assert_close_to_torch(out, q, kc, vc, slots, S, mask, scale=0.25):
    """`out` (B, T, H, D) against torch's attention in float32 over the same cache rows."""
    group = q.shape[2] // kc.shape[1]
    keys = kc[slots].repeat_interleave(group, dim=1)[:, :, :S].float()  # (B, H, S, D)
    values = vc[slots].repeat_interleave(group, dim=1)[:, :, :S].float()
    ref = F.scaled_dot_product_attention(q.transpose(1, 2).float(), keys, values, attn_mask=mask[:, None], scale=scale)
    tol = 1e-5 if q.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref.transpose(1, 2), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prefix", [5, 120, 126, 300])
@pytest.mark.parametrize("D", [16, 64])
def test_a_tree_query_gives_the_bits_of_its_path_laid_out_contiguously(kernels, dtype, prefix, D):
    """Token-tree verification: a node sees the prefix, then its ancestors with other branches' nodes between
    them. Its result must be bit for bit what the same keys give laid out one after the other (a plain decode of
    that path), including where the gaps push its keys past a 128-key chunk boundary (prefix 120, 126). At 64 dims
    the AVX-512 BF16 build takes the AMX path (its tile part and float32 tail split each query by its own keys)."""
    g = torch.Generator().manual_seed(prefix)
    S = prefix + 24
    kc = torch.randn(2, 2, 512, D, generator=g).to(dtype)
    vc = torch.randn(2, 2, 512, D, generator=g).to(dtype)
    q = torch.randn(1, 3, 4, D, generator=g).to(dtype)
    paths = [[0], [0, 4, 9], [0, 2, 7, 12, 20]]  # per query: tree indices of its ancestors and itself (0: root)
    mask = torch.zeros(1, 3, S, dtype=torch.bool)
    mask[:, :, :prefix] = True
    for t, path in enumerate(paths):
        mask[0, t, [prefix + i for i in path]] = True
    tree = kernels.attention(q, kc, vc, torch.tensor([0]), S, mask, 0.25)
    for t, path in enumerate(paths):
        n = prefix + len(path)
        flat = kc.clone(), vc.clone()
        for cache, src in zip(flat, (kc, vc), strict=True):  # slot 1: the prefix, then the path contiguously
            cache[1, :, :prefix] = src[0, :, :prefix]
            cache[1, :, prefix:n] = src[0, :, [prefix + i for i in path]]
        alone = kernels.attention(q[:, t : t + 1].contiguous(), flat[0], flat[1], torch.tensor([1]), n, None, 0.25)
        assert torch.equal(tree[:, t : t + 1], alone), (prefix, t)
    assert_close_to_torch(tree, q, kc, vc, torch.tensor([0]), S, mask)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("D", "group"), [(64, 3), (32, 4), (48, 5), (128, 3), (256, 2), (64, 1)])
def test_attention_head_sizes_and_gqa_groups(kernels, dtype, D, group):
    """The AVX-512 path runs a GQA group's heads together, at most 3 at a time (2 from 128 dims, 1 at 256), and
    widens bf16 rows of a multiple of 32 dims in a different order from the others: every split and order agrees
    with torch, and a query's result does not depend on the rows beside it."""
    g = torch.Generator().manual_seed(D + group)
    B, T, Hkv, S = 4, 2, 2, 150
    kc = torch.randn(B, Hkv, 160, D, generator=g).to(dtype)
    vc = torch.randn(B, Hkv, 160, D, generator=g).to(dtype)
    q = torch.randn(B, T, Hkv * group, D, generator=g).to(dtype)
    slots = torch.tensor([3, 1, 0, 2])
    mask = torch.rand(B, T, S, generator=g) > 0.2
    mask[:, :, 0] = True
    scale = D**-0.5
    many = kernels.attention(q, kc, vc, slots, S, mask, scale)
    one = kernels.attention(q[2:3, 1:2].contiguous(), kc, vc, slots[2:3], S, mask[2:3, 1:2].contiguous(), scale)
    assert torch.equal(many[2:3, 1:2], one)
    assert_close_to_torch(many, q, kc, vc, slots, S, mask, scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [16, 64])
def test_long_contexts_merge_key_chunks_the_same_way_at_every_batch(kernels, dtype, D):
    """333 keys are three chunks. Sixteen rows run each query's chunks in one task; one query alone spreads its
    chunks over the threads and merges them afterwards. Same bits either way, and close to torch's attention
    (including a query whose first chunk is entirely masked and one that sees a single key)."""
    g = torch.Generator().manual_seed(5)
    B, T, S = 16, 3, 333
    kc = torch.randn(B, 2, 400, D, generator=g).to(dtype)
    vc = torch.randn(B, 2, 400, D, generator=g).to(dtype)
    q = torch.randn(B, T, 4, D, generator=g).to(dtype)
    slots = torch.randperm(B, generator=g)
    mask = torch.rand(B, T, S, generator=g) > 0.5
    mask[:, :, 300] = True
    mask[0, 1, :128] = False
    mask[1, 2] = False
    mask[1, 2, 77] = True
    many = kernels.attention(q, kc, vc, slots, S, mask, 0.25)
    for b, t in [(0, 0), (0, 1), (1, 2), (7, 1), (15, 2)]:
        one = kernels.attention(q[b : b + 1, t : t + 1].contiguous(), kc, vc, slots[b : b + 1], S,
                                mask[b : b + 1, t : t + 1].contiguous(), 0.25)
        assert torch.equal(many[b : b + 1, t : t + 1], one), (b, t)
    assert_close_to_torch(many, q, kc, vc, slots, S, mask)


AMX = pytest.mark.skipif(cpu_kernel() is None or not cpu_kernel().amx(), reason="CPU has no AMX tiles")


@AMX
@pytest.mark.parametrize("context", [40, 300, 2000])
def test_amx_attention_agrees_with_the_vector_path_and_is_batch_invariant(context):
    """The AMX path (scores on tiles; e in bf16 on the tiles for all but each query's last 32 or more keys, which
    stay in float32) against the vector path on SmolLM2's layout (9 query heads, 3 KV heads of 64 dims): within
    bf16 rounding, and a query's bits do not depend on the 15 queries verified with it."""
    k = load_build(AVX512_BF16)
    assert k.attention_amx(64) and not k.attention_amx(48)
    g = torch.Generator().manual_seed(context)
    kc = torch.randn(2, 3, context + 32, 64, generator=g).bfloat16()
    vc = torch.randn(2, 3, context + 32, 64, generator=g).bfloat16()
    q = torch.randn(1, 16, 9, 64, generator=g).bfloat16()
    S = context + 16
    causal = (torch.arange(S)[None, :] <= (context + torch.arange(16))[:, None])[None]
    slot = torch.tensor([1])
    tiles = k.attention_on(q, kc, vc, slot, S, causal, 0.125, None, True)
    vector = k.attention_on(q, kc, vc, slot, S, causal, 0.125, None, False)
    torch.testing.assert_close(tiles.float(), vector.float(), atol=1e-2, rtol=2e-2)
    for t in (0, 7, 15):  # query t decoded alone: it sees [0, context + t], no mask needed
        alone = k.attention_on(q[:, t : t + 1].contiguous(), kc, vc, slot, context + t + 1, None, 0.125, None, True)
        assert torch.equal(alone, tiles[:, t : t + 1]), t


@AMX
def test_amx_attention_never_reads_what_a_query_does_not_see():
    """Cache entries a query does not see (never written: NaN here) cannot reach its output, in the tile part or
    the tail; a query that sees no key gives zeros."""
    k = load_build(AVX512_BF16)
    g = torch.Generator().manual_seed(9)
    S = 400
    kc = torch.randn(1, 3, S, 64, generator=g).bfloat16()
    vc = torch.randn(1, 3, S, 64, generator=g).bfloat16()
    q = torch.randn(1, 3, 9, 64, generator=g).bfloat16()
    mask = torch.zeros(1, 3, S, dtype=torch.bool)
    mask[0, 0, :250] = True  # a long leading run
    mask[0, 1, :200] = True  # ... then a few keys after a gap, as a tree node's ancestors
    mask[0, 1, [260, 333, 399]] = True
    clean = k.attention_on(q, kc, vc, torch.tensor([0]), S, mask, 0.125, None, True)
    kc[0, :, ~mask[0].any(0)] = float("nan")
    vc[0, :, ~mask[0].any(0)] = float("nan")
    dirty = k.attention_on(q, kc, vc, torch.tensor([0]), S, mask, 0.125, None, True)
    assert torch.equal(clean, dirty) and torch.isfinite(dirty).all()
    assert torch.equal(dirty[0, 2], torch.zeros_like(dirty[0, 2]))  # query 2 sees nothing


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [16, 64])
def test_packed_ragged_queries_equal_padded_rows(kernels, dtype, D):
    """cu_seqlens: rows of 5, 2 and 0 queries packed together give the padded call's rows, bit for bit (at 64 dims
    on the AMX path where the build has it)."""
    q, kc, vc, slots, S, mask = small_attention_inputs(dtype, seed=4, D=D)
    lengths = [5, 2, 0]
    padded = kernels.attention(q, kc, vc, slots, S, mask, 0.25)
    real = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
    packed = kernels.attention(q[real].contiguous(), kc, vc, slots, S, mask, 0.25, torch.tensor([0, 5, 7, 7]))
    assert packed.shape == (7, 4, D) and torch.equal(packed, padded[real])
    with pytest.raises(RuntimeError, match="cu_seqlens"):
        kernels.attention(q[real].contiguous(), kc, vc, slots, S, mask, 0.25, torch.tensor([0, 5, 8, 7]))


def _block_inputs(cfg: ModelConfig, dtype, T: int, start: int):
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(3)
    block = Block(cfg).to(dtype).eval()
    for p in block.parameters():
        p.data = (torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.dim() == 1 else 0.0)).to(dtype)
    x = torch.randn(1, T, cfg.hidden_size, generator=g).to(dtype)
    cos, sin = rope_table(cfg.head_dim, cfg.rope_theta, 64)
    pos = torch.arange(start, start + T)[None]
    cos, sin = cos[pos].to(dtype)[:, :, None], sin[pos].to(dtype)[:, :, None]
    cache = torch.randn(2, 1, cfg.num_kv_heads, 64, cfg.head_dim, generator=g).to(dtype)
    return block, x, cos, sin, cache


def _run(block, x, cos, sin, cache, start, fused):
    T = x.shape[1]
    k, v = cache[0].clone(), cache[1].clone()
    j = torch.arange(start + T)[None, None]
    write = torch.arange(start, start + T)[None]
    meta = AttentionMeta(slots=torch.tensor([0]), write_index=write, kv_len=start + T,
                         mask=(j <= write[:, :, None])[:, None])
    block._fused_key, block._fused_ok = None, False
    if not fused:
        block._fused = lambda *_: False
    with torch.no_grad():
        out = block(x, cos, sin, k, v, meta)
    if not fused:
        del block._fused
    return out, k, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qk_norm", [False, True])
def test_fused_block_matches_the_eager_block(dtype, qk_norm):
    cfg = ModelConfig(vocab_size=50, hidden_size=64, intermediate_size=96, num_layers=1, num_heads=4, num_kv_heads=2,
                      head_dim=16, max_position_embeddings=64, qk_norm=qk_norm, qkv_bias=True)
    block, x, cos, sin, cache = _block_inputs(cfg, dtype, T=5, start=7)
    fused, kf, vf = _run(block, x, cos, sin, cache, 7, fused=True)
    eager, ke, ve = _run(block, x, cos, sin, cache, 7, fused=False)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(fused.float(), eager.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(kf.float(), ke.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(vf.float(), ve.float(), atol=tol, rtol=tol)
    # decode one token at a time == one multi-token call, bit for bit (what keeps SD exact)
    step = torch.cat([_run(block, x[:, t : t + 1].contiguous(), cos[:, t : t + 1], sin[:, t : t + 1],
                           torch.stack([kf, vf]), 7 + t, fused=True)[0] for t in range(5)], dim=1)
    assert torch.equal(step, fused)


def test_argmax_is_torch_argmax(kernels):
    """Greedy decoding's argmax: torch's answer on every row, ties (first index), -inf, NaN (first NaN) and rows
    shorter than a vector."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(12, 1003, generator=g)
    x[1] = 0.0  # all tied: index 0
    x[2, 500] = x[2, 17] = 9.0  # a tie across lanes: the earlier one
    x[3] = -torch.inf
    x[4, 400] = torch.nan
    x[5, 1001] = 50.0  # the max in the tail after the vector loop
    x[6, 3] = x[6, 998] = torch.nan
    x[7, 999] = 7.0
    x[7, 1000] = 7.0  # a tie inside the tail
    assert torch.equal(kernels.argmax(x), x.argmax(-1))
    for v in (1, 5, 8, 9, 16):
        short = torch.randn(4, v, generator=g).round()  # small integers: many ties
        assert torch.equal(kernels.argmax(short), short.argmax(-1)), v
    logits = (torch.randn(64, 4096, generator=g) * 3).round()  # many ties among the largest values
    assert torch.equal(kernels.argmax(logits), logits.argmax(-1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_final_rmsnorm_matches_torch_and_is_batch_invariant(kernels, dtype):
    """The model's final norm, as `layers` applies it: torch's RMSNorm up to the sum's order, each row alone the same
    to the bit as in a batch."""
    from paperclub.nn.rmsnorm import RMSNorm

    g = torch.Generator().manual_seed(8)
    norm = RMSNorm(96, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96, generator=g))
    norm = norm.to(dtype)
    x = (torch.randn(3, 7, 96, generator=g) * 4).to(dtype)
    out = kernels.rmsnorm(x, norm.weight.detach(), 1e-5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    with torch.no_grad():
        torch.testing.assert_close(out.float(), norm(x).float(), atol=tol, rtol=tol)
    assert torch.equal(kernels.rmsnorm(x[1:2, 3:4].contiguous(), norm.weight.detach(), 1e-5), out[1:2, 3:4])
    with pytest.raises(RuntimeError, match="rmsnorm: a contiguous x"):
        kernels.rmsnorm(x, norm.weight.detach()[:64], 1e-5)


def test_the_kernel_signature_follows_the_sources(tmp_path, monkeypatch):
    """`mode="auto"` stores its step-time calibration under the kernels' signature: editing a kernel source (a new
    attention path, say) must change it, so that a machine recalibrates instead of reusing stale step times."""
    import shutil

    from paperclub.nn import cpu_kernels

    shutil.copytree(cpu_kernels.KERNEL_DIR, tmp_path / "kernels")
    monkeypatch.setattr(cpu_kernels, "KERNEL_DIR", tmp_path / "kernels")
    cpu_kernels.kernel_signature.cache_clear()
    before = cpu_kernels.kernel_signature()
    assert before == cpu_kernels.kernel_signature() and len(before) == 12
    build = cpu_kernels.selected_build()
    with open(tmp_path / "kernels" / build.sources[-1], "a") as f:
        f.write("\n// edited\n")
    cpu_kernels.kernel_signature.cache_clear()
    assert cpu_kernels.kernel_signature() != before
    cpu_kernels.kernel_signature.cache_clear()
