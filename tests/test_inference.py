"""vq_posterior and soften ("From Hard to Soft", ICLR 2019): the hard posterior is the
one-hot VQ code, soft posteriors are checked against pre-activations computed by
hand, and soften(beta -> 1) reproduces the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import maxaffine as ma
import maxaffine.nn as mnn
from maxaffine.models import mlp, small_cnn

D = torch.float64


def seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def one_hot(code: torch.Tensor, pieces: int) -> torch.Tensor:
    return F.one_hot(code.long(), pieces).to(D)


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)).abs())


def models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    seeded(0)
    cnn = small_cnn((1, 12, 12), 4, channels=(3, 4)).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in cnn.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
    padded = nn.Sequential(nn.Conv2d(2, 3, 3), nn.LeakyReLU(0.2),
                           nn.MaxPool2d(3, 2, padding=1, dilation=1), nn.Flatten(),
                           nn.Linear(3 * 4 * 4, 5), mnn.Abs(), nn.Linear(5, 2))
    return {
        "cnn": (cnn, (1, 12, 12)),
        "cnn1d": (small_cnn((1, 16), 3, channels=(2,)).eval(), (1, 16)),
        "padded": (padded, (2, 9, 9)),
        "leaky_mlp": (mlp(4, (7, 5), 3, activation=lambda: nn.LeakyReLU(0.3)), (4,)),
        "abs_mlp": (mlp(4, (6,), 2, activation=mnn.Abs), (4,)),
        "prelu": (nn.Sequential(nn.Linear(3, 4), nn.PReLU(4), nn.Linear(4, 1)), (3,)),
        "functional": (FunctionalNet(), (3,)),
    }


MODELS = models()


@pytest.mark.parametrize("name", list(MODELS))
def test_hard_posterior_is_the_code(name):
    model, shape = MODELS[name]
    model = model.double()
    x = torch.randn(6, *shape, dtype=D)
    post = ma.vq_posterior(model, x)
    codes = ma.codes(model, x)
    assert list(post) == list(codes.names)
    for layer, code in codes.items():
        r = post[layer].shape[-1]
        assert torch.equal(post[layer], one_hot(code, r)), layer
        alone = ma.vq_posterior(model, x, layer=layer)
        assert alone.names == (layer,) and torch.equal(alone[layer], post[layer])
        index = codes.names.index(layer)
        assert torch.equal(ma.vq_posterior(model, x, layer=index)[0], post[index])


@pytest.mark.parametrize("name", list(MODELS))
@given(beta=st.floats(0.05, 0.95), seed=st.integers(0, 1000))
def test_soft_posterior_sums_to_one_and_keeps_the_argmax(name, beta, seed):
    model, shape = MODELS[name]
    model = model.double()
    x = torch.randn(5, *shape, dtype=D, generator=torch.Generator().manual_seed(seed))
    ev = ma.trace(model, x[:1]).evaluate(x, record=True)
    codes = ma.codes(model, x)
    for layer, post in ma.vq_posterior(model, x, beta=beta).items():
        assert torch.allclose(post.sum(-1), torch.ones(post.shape[:-1], dtype=D), atol=1e-12)
        assert (post >= 0).all()
        # away from ties (top-two posterior gap), the argmax is the hard code
        top2 = post.topk(2, -1).values if post.shape[-1] > 1 else post
        untied = (top2[..., 0] - top2[..., 1]) > 1e-9
        assert torch.equal(post.argmax(-1)[untied], codes[layer].long()[untied]), layer
        assert ev.inputs[layer][0].shape[0] == post.shape[0]


def test_soft_posterior_against_hand_computed_preactivations():
    seeded(1)
    net = mlp(3, (5, 4), 2).double()
    x = torch.randn(20, 3, dtype=D)
    u1 = net[1](net[0](x))
    u2 = net[3](F.relu(u1))
    for beta in (0.25, 0.5, 0.8):
        tau = beta / (1 - beta)
        post = ma.vq_posterior(net, x, beta=beta)
        assert torch.allclose(post["2"][..., 1], torch.sigmoid(tau * u1), atol=1e-12)
        assert torch.allclose(post["4"][..., 1], torch.sigmoid(tau * u2), atol=1e-12)
    soft = ma.vq_posterior(net, x, layer="2", beta=0.5)["2"]
    assert torch.allclose(soft, torch.softmax(torch.stack([0 * u1, u1], -1), -1))


def test_posterior_of_max_pool_against_windows():
    seeded(2)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2)).double()
    x = torch.randn(3, 1, 6, 6, dtype=D)
    u = net[0](x)
    win = u.reshape(3, 2, 3, 2, 3, 2).permute(0, 1, 2, 4, 3, 5).reshape(3, 2, 3, 3, 4)
    post = ma.vq_posterior(net, x, layer="1", beta=0.5)
    assert post.beta == 0.5 and post.names == ("1",)
    assert torch.allclose(post["1"], torch.softmax(win, -1), atol=1e-12)
    _, idx = F.max_pool2d_with_indices(u, 2)
    hard = ma.vq_posterior(net, x, layer="1")["1"]
    assert torch.equal(win.gather(-1, hard.argmax(-1, keepdim=True))[..., 0],
                       u.flatten(2).gather(2, idx.flatten(2)).reshape(3, 2, 3, 3))


# ------------------------------------------------------------------ soften


@pytest.mark.parametrize("name", [n for n in MODELS if n not in ("prelu", "functional")])
def test_soften_hard_limit_reproduces_the_model(name):
    model, shape = MODELS[name]
    model = model.double()
    x = torch.randn(8, *shape, dtype=D)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(ma.soften(model, 1.0)(x), ref)
        near = ma.soften(model, 1 - 1e-12, learnable=True)(x)
    assert torch.allclose(near, ref, atol=1e-9)
    soft = ma.soften(model, 0.5)
    assert type(soft) is type(model)
    assert not any(isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.MaxPool2d, nn.MaxPool1d, mnn.Abs))
                   for m in soft.modules())
    # the same units under the same names; at beta = 1 the hard posterior is unchanged
    hard = ma.vq_posterior(model, x)
    again = ma.vq_posterior(ma.soften(model, 1.0), x)
    assert list(again) == list(hard)
    assert all(torch.equal(again[k], hard[k]) for k in hard)


def test_soften_swish_against_a_hand_built_net():
    seeded(3)
    net = mlp(4, (6, 5), 3).double()
    x = torch.randn(10, 4, dtype=D)
    manual = net[5](F.silu(net[3](F.silu(net[1](net[0](x))))))
    assert torch.allclose(ma.soften(net, 0.5)(x), manual, atol=1e-13)
    # first layer: the soft model's own posterior equals the hard model's soft posterior
    assert torch.allclose(ma.vq_posterior(ma.soften(net, 0.5), x, layer="2")["2"],
                          ma.vq_posterior(net, x, layer="2", beta=0.5)["2"], atol=1e-13)


def test_soften_weights_shared_or_copied():
    seeded(4)
    net = small_cnn((1, 8, 8), 2, channels=(2,)).eval()
    x = torch.randn(4, 1, 8, 8)
    shared = ma.soften(net, 0.5, share_weights=True)
    copied = ma.soften(net, 0.5)
    assert all(a is b for a, b in zip(net.parameters(), shared.parameters(), strict=True))
    assert all(a.data_ptr() != b.data_ptr()
               for a, b in zip(net.parameters(), copied.parameters(), strict=True))
    assert shared[1].running_mean is net[1].running_mean
    before = copied(x)
    with torch.no_grad():
        net[0].weight.mul_(2)
    assert torch.equal(copied(x), before)
    assert not torch.allclose(shared(x), before)
    assert isinstance(net[2], nn.ReLU) and isinstance(net[3], nn.MaxPool2d)  # untouched
    assert not shared.training and not copied.training
    learn = ma.soften(net, 0.3, learnable=True)
    assert [n for n, _ in learn.named_parameters() if "logit_beta" in n] == [
        "2.logit_beta", "3.logit_beta"]


def test_soften_keeps_shared_modules_shared():
    relu = nn.ReLU()
    net = nn.Sequential(nn.Linear(2, 3), relu, nn.Linear(3, 3), relu)
    soft = ma.soften(net, 0.5)
    assert soft[1] is soft[3] and isinstance(soft[1], mnn.BetaVQ)
    assert isinstance(ma.soften(nn.ReLU(), 0.7), mnn.BetaVQ)


def test_soften_refuses_what_it_cannot_replace():
    with pytest.raises(ma.UnsupportedOperation) as err:
        ma.soften(FunctionalNet(), 0.5)
    msg = str(err.value)
    assert "relu (F.relu): functional call" in msg and "(Tensor.abs)" in msg
    with pytest.raises(ma.UnsupportedOperation, match=r"1 \(PReLU\): no beta-VQ counterpart"):
        ma.soften(MODELS["prelu"][0], 0.5)
    with pytest.raises(ma.UnsupportedOperation, match=r"1 \(MaxPool2d\): ceil_mode"):
        ma.soften(nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(2, ceil_mode=True)), 0.5)
    with pytest.raises(ValueError, match="learnable beta"):
        ma.soften(nn.Sequential(nn.ReLU()), 1.0, learnable=True)
    with pytest.raises(ma.MaxAffineError, match=r"torch\.nn\.Module"):
        ma.soften(lambda x: x, 0.5)


# ------------------------------------------------------------------ beta-VQ models (hooks)


def test_posterior_of_a_beta_vq_model_uses_its_beta():
    seeded(5)
    net = nn.Sequential(nn.Linear(3, 4), mnn.BetaVQ("relu", 0.3), nn.Linear(4, 4),
                        mnn.BetaVQ("abs", [0.2, 0.4, 0.6, 0.8], per_channel=4),
                        nn.Linear(4, 1)).double()
    x = torch.randn(7, 3, dtype=D)
    u1 = net[0](x)
    u2 = net[2](net[1](u1))
    post = ma.vq_posterior(net, x)
    assert list(post) == ["1", "3"]
    b1 = float(net[1].beta)
    assert torch.allclose(post["1"][..., 1], torch.sigmoid(b1 / (1 - b1) * u1), atol=1e-12)
    b2 = net[3].beta.to(D)
    assert torch.allclose(post["3"][..., 1], torch.sigmoid(2 * b2 / (1 - b2) * u2), atol=1e-12)
    hard = ma.vq_posterior(net, x, layer="3", beta=1.0)
    assert torch.equal(hard["3"], one_hot(u2 > 0, 2))
    assert torch.equal(ma.vq_posterior(net, x, layer=-1, beta=1.0)["3"], hard["3"])


def test_hooks_leave_no_trace():
    seeded(6)
    net = ma.soften(small_cnn((1, 8, 8), 2, channels=(2,)).eval(), 0.5)
    state = {n: (dict(m.__dict__), dict(m._forward_hooks)) for n, m in net.named_modules()}
    post = ma.vq_posterior(net, torch.randn(3, 1, 8, 8), layer="3")
    assert post["3"].shape == (3, 2, 4, 4, 4)
    assert {n: (dict(m.__dict__), dict(m._forward_hooks))
            for n, m in net.named_modules()} == state


def test_posterior_errors():
    net = mlp(3, (4,), 2)
    x = torch.randn(2, 3)
    with pytest.raises(ma.MaxAffineError, match=r"no layer 'nope': the layers are \('2',\)"):
        ma.vq_posterior(net, x, layer="nope")
    with pytest.raises(ma.MaxAffineError, match=r"layer index 1 is out of range"):
        ma.vq_posterior(net, x, layer=1)
    with pytest.raises(ValueError, match="beta must lie in"):
        ma.vq_posterior(net, x, beta=2.0)
    ht = nn.Sequential(nn.Linear(3, 4), nn.Hardtanh(), nn.Linear(4, 1))
    with pytest.raises(ma.MaxAffineError, match=r"1 \(Hardtanh\) is not a single max"):
        ma.vq_posterior(ht, x)
    mixed = nn.Sequential(nn.Linear(3, 3), mnn.BetaVQ(), FunctionalNet())
    with pytest.raises(ma.UnsupportedOperation, match="functional nonlinearity"):
        ma.vq_posterior(mixed, x)
    soft = ma.soften(net, 0.5)
    with pytest.raises(ma.MaxAffineError, match="no layer 'x'"):
        ma.vq_posterior(soft, x, layer="x")
    twice = nn.Sequential(nn.Linear(3, 3), mnn.BetaVQ())
    twice.append(twice[1])
    with pytest.raises(ma.MaxAffineError, match="called more than once"):
        ma.vq_posterior(twice, x)
