import pytest
import torch

from paperclub.errors import UserError
from paperclub.worldmodel.model import LeWM, frames_to_tensor, prediction_loss, preset


def tiny():
    torch.manual_seed(0)
    return LeWM(preset("tiny"))


def test_shapes_and_batchnorm_projector():
    m = tiny()
    frames = torch.randn(4, 4, 3, 64, 64)
    pred, z = m(frames, torch.randn(4, 4, 10))
    assert z.shape == (4, 4, 32) and pred.shape == (4, 3, 32)
    # the loss compares prediction i with latent i + 1: (3 - 1)^2 = 4 (against latent i it would be 9)
    assert prediction_loss(torch.tensor([[[3.0]]]), torch.tensor([[[0.0], [1.0]]])).item() == 4.0
    assert any(isinstance(x, torch.nn.BatchNorm1d) for x in m.projector.modules())


def test_latent_batchnorm_fixes_the_latent_scale():
    """In training mode every latent dimension has zero mean and unit variance over the batch: shrinking the
    projector's last layer 10x does not shrink the latents (while its output variance stays well above
    BatchNorm's eps, 1e-5). Without the option the latents shrink with it."""
    frames = torch.randn(64, 3, 64, 64)
    for normed in (True, False):
        torch.manual_seed(0)
        m = LeWM(preset("tiny", latent_batchnorm=normed)).train()
        with torch.no_grad():
            m.projector.net[3].weight.mul_(0.1)
            m.projector.net[3].bias.zero_()
            z = m.encode(frames)
        if normed:
            assert torch.allclose(z.mean(0), torch.zeros(32), atol=1e-4)
            assert torch.allclose(z.var(0, unbiased=False), torch.ones(32), atol=2e-2)
            assert not any(p.requires_grad for p in m.projector.net[4].parameters())  # no scale to learn
        else:
            assert z.std(0).max() < 0.1


def test_predictor_is_causal():
    m = tiny().eval()
    z = torch.randn(2, 3, 32)
    a = torch.randn(2, 3, 10)
    # give the AdaLN gates non-zero values so that every path is active
    for p in m.predictor.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    out = m.predict(z, a)
    z2, a2 = z.clone(), a.clone()
    z2[:, 2] += 5.0
    a2[:, 2] += 1.0
    out2 = m.predict(z2, a2)
    assert torch.allclose(out[:, :2], out2[:, :2], atol=1e-5)
    assert not torch.allclose(out[:, 2], out2[:, 2])


def test_adaln_zero_starts_as_identity_on_actions_then_learns_to_use_them():
    m = tiny()
    z = torch.randn(8, 3, 32)
    a = torch.randn(8, 3, 10)
    assert torch.allclose(m.predict(z, a), m.predict(z, torch.zeros_like(a)), atol=1e-6)
    target = a[..., :1].expand(-1, -1, 32)  # a target only the actions explain
    opt = torch.optim.Adam(m.predictor.parameters(), lr=1e-2)
    m.action_encoder.requires_grad_(True)
    for _ in range(30):
        loss = (m.predict(z, a) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.allclose(m.predict(z, a), m.predict(z, torch.zeros_like(a)), atol=1e-3)


def test_rollout_matches_step_by_step_prediction():
    m = tiny().eval()
    z0 = torch.randn(5, 32)
    plan = torch.randn(5, 4, 10)
    zs = [z0]
    for t in range(4):
        lo = max(0, t - 2)
        zs.append(m.predict(torch.stack(zs[lo:], 1), plan[:, lo : t + 1])[:, -1])
    assert torch.allclose(m.rollout(z0, plan), zs[-1], atol=1e-5)


def test_frames_to_tensor_range_and_layout():
    frames = torch.randint(0, 256, (2, 8, 6, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    frames[0, 0, 0] = torch.tensor([0, 255, 51], dtype=torch.uint8)
    x = frames_to_tensor(frames)
    assert x.shape == (2, 3, 8, 6) and torch.allclose(x[0, :, 0, 0], torch.tensor([-1.0, 1.0, -0.6]))
    assert torch.allclose(x, frames.permute(0, 3, 1, 2).float() / 127.5 - 1)  # pixel (i, j) channel c -> (c, i, j)


def test_bad_config_raises_user_error():
    with pytest.raises(UserError):
        preset("huge")
    with pytest.raises(UserError):
        preset("tiny", image_size=60)


def test_vit_encoder_presets_shapes_and_size():
    torch.manual_seed(0)
    m = LeWM(preset("vit-small"))
    pred, z = m(torch.randn(2, 4, 3, 64, 64), torch.randn(2, 4, 10))
    assert z.shape == (2, 4, 64) and pred.shape == (2, 3, 64)
    assert isinstance(m.encoder.layers, torch.nn.TransformerEncoder) and m.encoder.pos.shape == (1, 65, 192)
    # the paper-size model: ViT-tiny on 224 px frames in 256 patches, about 15M parameters in all
    big = LeWM(preset("vit-tiny", action_dim=2)).eval()
    n = sum(p.numel() for p in big.parameters())
    assert 12e6 < n < 20e6, n
    with torch.no_grad():
        assert big.encode(torch.randn(2, 3, 224, 224)).shape == (2, 192)
    with pytest.raises(UserError, match="not a multiple of the ViT patch size 14"):
        preset("vit-tiny", image_size=64)


def test_imagine_is_the_rollout_with_gradients_and_starts_like_teacher_forcing():
    """`imagine` returns every latent that `rollout` computes on the way to its last one; its first prediction
    reads only z0, exactly the input of the teacher-forced prediction at position 0; and gradients reach the
    predictor through every step (the multi-step training loss needs them)."""
    m = tiny().eval()
    z = torch.randn(3, 4, 32)
    a = torch.randn(3, 4, 10)
    z0 = z[:, 0].clone().requires_grad_()
    imagined = m.imagine(z0, a[:, :-1])
    assert imagined.shape == (3, 3, 32)
    torch.testing.assert_close(imagined[:, -1], m.rollout(z[:, 0], a[:, :-1]))
    torch.testing.assert_close(imagined[:, 0], m.predict(z[:, :-1], a[:, :-1])[:, 0])
    # later steps read the model's own predictions, not the encoded latents: they differ from teacher forcing
    assert not torch.allclose(imagined[:, 2], m.predict(z[:, :-1], a[:, :-1])[:, 2], atol=1e-4)
    imagined[:, 2].pow(2).sum().backward()
    assert m.predictor.out.weight.grad.abs().sum() > 0 and z0.grad.abs().sum() > 0
