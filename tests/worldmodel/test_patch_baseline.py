import time

import torch

from paperclub.worldmodel.model import LeWM, preset
from paperclub.worldmodel.patch_baseline import PatchWM, matched_config


def test_shapes_and_matched_interface():
    cfg = matched_config(preset("tiny"))
    m = PatchWM(cfg).eval()
    tokens = m.encode(torch.randn(3, 3, 64, 64))
    assert tokens.shape == (3, 64, cfg.dim)
    assert m.rollout(tokens, torch.randn(3, 4, 10)).shape == (3, 64, cfg.dim)


def test_block_causal_over_frames():
    torch.manual_seed(0)
    m = PatchWM(matched_config(preset("tiny"))).eval()
    for p in m.parameters():
        p.data.add_(0.2 * torch.randn_like(p))  # open the AdaLN-zero gates
    z = torch.randn(1, 3, 64, m.cfg.dim)
    a = torch.randn(1, 3, 10)
    out = m.predict(z, a)
    z2 = z.clone()
    # A random direction: a constant shift of a token is removed by every LayerNorm and would be invisible.
    z2[:, 2, 5] += 3.0 * torch.randn(m.cfg.dim)  # one token of the last frame
    out2 = m.predict(z2, a)
    assert torch.allclose(out[:, :2], out2[:, :2], atol=1e-5)
    others = [i for i in range(out.shape[2]) if i != 5]
    # tokens in the same frame see each other
    assert (out[:, 2, others] - out2[:, 2, others]).abs().max() > 1e-4


def test_patch_rollout_is_much_slower_than_lewm_rollout():
    torch.manual_seed(0)
    lewm = LeWM(preset("tiny")).eval()
    patch = PatchWM(matched_config(lewm.cfg)).eval()
    plans = torch.randn(64, 3, 10)

    def best(f, n=3):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    t_lewm = best(lambda: lewm.rollout(torch.randn(64, 32), plans))
    t_patch = best(lambda: patch.rollout(torch.randn(64, 64, patch.cfg.dim), plans))
    assert t_patch > 5 * t_lewm
