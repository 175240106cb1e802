"""``maxaffine reproduce em-generator``: does EM with the exact posterior train a ReLU
generator to a higher likelihood than a VAE?

Claim (Balestriero, Paris & Baraniuk, "Analytical Probability Distributions and
EM-Learning for Deep Generative Networks", NeurIPS 2020, sec. 4-5): with ``z ~ N(0,
I)``, ``x = G(z) + eps``, ``eps ~ N(0, sigma^2 I)``, the posterior of a piecewise-affine
``G`` is an exact mixture of truncated Gaussians, and EM with it reaches a higher
likelihood than VAE training of the same decoder. We fit the same decoder architecture
(2 -> 16 -> 16 -> D, ReLU, same initialisation per seed) to the same data by
:func:`maxaffine.generative.fit_em` and by a VAE (Gaussian encoder MLP D -> 32 -> 32 ->
2 x 2, one-sample reparametrised ELBO with the same noise model, sigma learned, full
batch Adam), and compare the exact train and test ``log p(x)`` of both decoders
(:func:`maxaffine.generative.log_likelihood`, latent 2), each with its own sigma, on
(a) a toy dataset from a random ReLU generator (2 -> 16 -> 16 -> 5, noise 0.1) and
(b) scikit-learn digits (8x8 = 64 pixels in [0, 1]), over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from ..datasets import load_dataset
from ..generative import fit_em, log_likelihood
from . import Experiment, Table, positive_int, save_figure, write_table

D = torch.float64
HIDDEN = 16


def decoder(d: int, seed: int) -> nn.Module:
    """2 -> 16 -> 16 -> d, ReLU, PyTorch's default initialisation (seeded), float64."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, d)).to(D)


def toy_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Train and test sets (n each) from a random ReLU generator 2 -> 16 -> 16 -> 5 (its
    seed ``1000 + seed``), noise 0.1."""
    true = decoder(5, 1000 + seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = true(torch.randn(2 * n, 2, dtype=D, generator=gen))
        x = x + 0.1 * torch.randn(x.shape, dtype=D, generator=gen)
    return x[:n], x[n:]


def digits_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    data = load_dataset("digits", seed=seed)
    tr = torch.as_tensor(data.x_train, dtype=D).reshape(len(data.x_train), -1)[:n]
    te = torch.as_tensor(data.x_test, dtype=D).reshape(len(data.x_test), -1)[:n]
    return tr, te


def mean_ll(g: nn.Module, x: Tensor, sigma: float) -> float:
    return float(log_likelihood(g, x, sigma).mean())


def fit_vae(g: nn.Module, x: Tensor, sigma: float, iterations: int, lr: float, seed: int,
            checkpoints: int) -> tuple[float, list[tuple[int, float]]]:
    """Train ``g`` in place as a VAE's decoder; the learned sigma and the exact train
    log-likelihood at ``checkpoints`` iterations."""
    torch.manual_seed(seed)
    d = x.shape[1]
    enc = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                        nn.Linear(32, 4)).to(D)
    log_sigma = torch.tensor(math.log(sigma), dtype=D, requires_grad=True)
    opt = torch.optim.Adam([*enc.parameters(), *g.parameters(), log_sigma], lr=lr)
    every = max(1, iterations // checkpoints)
    curve = [(0, mean_ll(g, x, sigma))]
    for it in range(1, iterations + 1):
        opt.zero_grad()
        h = enc(x)
        mu, logvar = h[:, :2], h[:, 2:].clamp(-12, 6)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        s = log_sigma.exp()
        rec = -0.5 * ((x - g(z)) ** 2).sum(1) / s**2 - d * log_sigma \
            - 0.5 * d * math.log(2 * math.pi)
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
        (-(rec - kl).mean()).backward()
        opt.step()
        if it % every == 0 or it == iterations:
            curve.append((it, mean_ll(g, x, float(log_sigma.detach().exp()))))
    return float(log_sigma.detach().exp()), curve


def one(dataset: str, seed: int, args: argparse.Namespace) -> dict:
    n = args.samples
    train, test = toy_data(n, seed) if dataset == "toy" else digits_data(n, seed)
    sigma0 = float(train.std())
    g_em, g_vae = decoder(train.shape[1], seed), decoder(train.shape[1], seed)
    t0 = time.perf_counter()
    fit = fit_em(g_em, train, sigma0, args.em_steps, lr=args.lr, m_steps=args.m_steps,
                 progress=not args.no_progress, seed=seed)
    em_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    vae_sigma, curve = fit_vae(g_vae, train, sigma0, args.vae_iterations, args.lr, seed,
                               args.em_steps)
    vae_seconds = time.perf_counter() - t0
    return {"dataset": dataset, "seed": seed, "train": len(train), "test": len(test),
            "em_train": float(fit.log_likelihood[-1]),
            "em_test": mean_ll(g_em, test, fit.noise_std), "em_sigma": fit.noise_std,
            "em_curve": [(i * args.m_steps, v) for i, v in
                         enumerate(fit.log_likelihood.tolist())],
            "em_rejected": int((~fit.accepted).sum()), "em_seconds": em_seconds,
            "vae_train": curve[-1][1], "vae_test": mean_ll(g_vae, test, vae_sigma),
            "vae_sigma": vae_sigma, "vae_curve": curve, "vae_seconds": vae_seconds,
            "_models": (g_em, fit.noise_std, g_vae, vae_sigma, train)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=positive_int, default=5)
    p.add_argument("--samples", type=positive_int, default=200,
                   help="train and test points per dataset")
    p.add_argument("--em-steps", type=positive_int, default=12)
    p.add_argument("--m-steps", type=positive_int, default=30, help="Adam steps per M-step")
    p.add_argument("--vae-iterations", type=positive_int, default=1500)
    p.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate (both)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="2 seeds, 100 points, 5 EM steps, 500 VAE iterations")


def _samples_figure(runs: list[dict], out: Path) -> None:
    import matplotlib.pyplot as plt

    r = next(r for r in runs if r["dataset"] == "toy" and r["seed"] == 0)
    g_em, s_em, g_vae, s_vae, train = r["_models"]
    gen = torch.Generator().manual_seed(0)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), sharex=True, sharey=True)
    with torch.no_grad():
        for ax, (name, g, s) in zip(axes, [("data", None, 0.0), ("EM", g_em, s_em),
                                           ("VAE", g_vae, s_vae)], strict=True):
            if g is None:
                pts = train
            else:
                z = torch.randn(len(train), 2, dtype=D, generator=gen)
                pts = g(z) + s * torch.randn(len(train), train.shape[1], dtype=D,
                                             generator=gen)
            ax.scatter(pts[:, 0], pts[:, 1], s=4)
            ax.set_title(f"{name}: outputs 1-2")
    save_figure(fig, out, "toy_samples")


def _curves_figure(runs: list[dict], out: Path) -> None:
    import matplotlib.pyplot as plt

    sets = sorted({r["dataset"] for r in runs}, reverse=True)
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], sets, strict=True):
        for r in (r for r in runs if r["dataset"] == ds):
            for key, c in (("em_curve", "C0"), ("vae_curve", "C1")):
                it, v = zip(*r[key], strict=True)
                ax.plot(it, v, c=c, lw=1, alpha=0.8,
                        label=("EM" if key == "em_curve" else "VAE") if r["seed"] == 0
                        else None)
        ax.set_xscale("symlog", linthresh=10)
        lo = min(min(v for _, v in r[k][1:]) for r in runs if r["dataset"] == ds
                 for k in ("em_curve", "vae_curve"))
        hi = max(max(v for _, v in r[k]) for r in runs if r["dataset"] == ds
                 for k in ("em_curve", "vae_curve"))
        ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.05 * (hi - lo))
        ax.set_xlabel("Adam steps on the decoder")
        ax.set_ylabel("exact mean train log p(x)")
        ax.set_title(ds)
        ax.legend()
    save_figure(fig, out, "log_likelihood_curves")


def run(args: argparse.Namespace) -> Path:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.seeds, args.samples, args.em_steps, args.vae_iterations = 2, 100, 5, 500
    runs = []
    for dataset in ("toy", "digits"):
        for seed in range(args.seeds):
            runs.append(one(dataset, seed, args))
            r = runs[-1]
            print(f"{dataset} seed {seed}: EM train {r['em_train']:.3f} test "
                  f"{r['em_test']:.3f} ({r['em_seconds']:.0f} s), VAE train "
                  f"{r['vae_train']:.3f} test {r['vae_test']:.3f} "
                  f"({r['vae_seconds']:.0f} s)", flush=True)
    _curves_figure(runs, out)
    _samples_figure(runs, out)
    rows = []
    for ds in ("toy", "digits"):
        rs = [r for r in runs if r["dataset"] == ds]

        def ms(key: str, rs: list[dict] = rs) -> str:
            v = [r[key] for r in rs]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            return f"{statistics.fmean(v):.3f} ± {sd:.3f}"

        wins = sum(r["em_test"] > r["vae_test"] for r in rs)
        rows.append([ds, rs[0]["train"], rs[0]["test"], ms("em_train"), ms("vae_train"),
                     ms("em_test"), ms("vae_test"), f"{wins}/{len(rs)}",
                     ms("em_sigma"), ms("vae_sigma"),
                     f"{statistics.fmean(r['em_seconds'] for r in rs):.0f}",
                     f"{statistics.fmean(r['vae_seconds'] for r in rs):.0f}"])
    notes = (
        f"Mean ± standard deviation over {args.seeds} seeds of the exact mean log p(x) "
        "per sample (nats; maxaffine.generative.log_likelihood, latent box [-8, 8]^2), "
        "each decoder with its own learned noise sigma. Decoder 2 -> 16 -> 16 -> D "
        "(ReLU), the same initialisation for both methods per seed. EM: fit_em, "
        f"{args.em_steps} EM steps x {args.m_steps} Adam steps (lr {args.lr:g}), sigma in "
        "closed form, steps lowering log p(train) rejected. VAE: encoder D -> 32 -> 32 -> "
        f"2 x 2, one-sample ELBO with the same noise model (sigma learned), "
        f"{args.vae_iterations} full-batch Adam steps (lr {args.lr:g}). toy: a random ReLU "
        "generator 2 -> 16 -> 16 -> 5 (seeded per seed), noise 0.1. digits: scikit-learn "
        "8x8 digits scaled to [0, 1] (D = 64), the first train / test points of a seeded "
        "split. 'EM wins': seeds where EM's test log p(x) is higher. Seconds: mean wall "
        f"time per fit (the VAE's includes its exact-likelihood checkpoints). "
        f"{args.threads} torch thread(s).")
    table = Table(
        "EM with the exact posterior vs VAE training of the same ReLU decoder (latent 2)",
        ["data", "train", "test", "EM train", "VAE train", "EM test", "VAE test",
         "EM wins", "EM sigma", "VAE sigma", "EM s", "VAE s"], rows, notes=notes)
    (out / "runs.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs], indent=1))
    table.seconds = time.perf_counter() - t0
    write_table(out, "em_generator", table)
    return out


EXPERIMENT = Experiment(
    name="em-generator",
    help="EM with the exact posterior vs VAE training of a ReLU decoder "
         "(Balestriero, Paris & Baraniuk 2020)",
    add_arguments=add_arguments,
    run=run,
)
