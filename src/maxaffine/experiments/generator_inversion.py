"""``maxaffine reproduce generator-inversion``: is a generator's latent code recoverable
from its output, even with missing entries?

Claim (Ma, Balestriero & Baraniuk, "Invertibility of Convolutional Generative Networks
from Partial Measurements", NeurIPS 2019): for a two-layer convolutional ReLU
generator, gradient descent on ``|| m * (G(z) - y) ||^2`` recovers ``z*`` from
``y = G(z*)``, with all or only some entries of ``y`` observed. We compare it with the
exact walk over latent regions (:func:`maxaffine.generative.invert`, ``method="exact"``)
on random two-layer transposed-convolution generators (latent -> 16x7x7 -> 8x14x14 ->
1x28x28, Gaussian weights) and on the decoder of a small autoencoder trained briefly on
MNIST (the offline 5k set) or scikit-learn digits, for several latent sizes and
observed fractions (a random mask per output), over seeds: success rate (residual at
tolerance), recovery rate (``||z - z*|| <= 1e-3 (1 + ||z*||)``) and time per
inversion. Both methods get the same starts (``z = 0``, then seeded N(0, I) draws).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from ..datasets import load_dataset
from ..generative import Inversion, invert
from . import Experiment, Table, non_negative_int, positive_int, save_figure, write_table

D = torch.float64


def conv_generator(latent: int, seed: int, channels: tuple[int, int] = (16, 8)) -> nn.Module:
    """A two-layer transposed-convolution ReLU generator to 1x28x28: ``latent`` ->
    Linear -> c0x7x7 -> ConvTranspose (stride 2) -> c1x14x14 -> ConvTranspose (stride
    2) -> 1x28x28, with a ReLU after the first two; PyTorch's default initialisation
    (seeded), float64."""
    torch.manual_seed(seed)
    c0, c1 = channels
    return nn.Sequential(
        nn.Linear(latent, c0 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (c0, 7, 7)),
        nn.ConvTranspose2d(c0, c1, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1)).to(D)


def train_decoder(latent: int, dataset: str, epochs: int, seed: int = 0,
                  train_size: int | None = None) -> tuple[nn.Module, Tensor, dict]:
    """An autoencoder (MLP encoder 784 -> 256 -> ``latent``; the
    :func:`conv_generator` architecture as decoder, 28x28 images, digits upsampled)
    trained with Adam (lr 2e-3, batches of 64) on mean squared error; returns the
    decoder (float64, eval), the encodings of the test images (the latents
    ``z*``) and a fit report."""
    t0 = time.perf_counter()
    data = load_dataset(dataset, seed=seed)
    x = data.x_train[:train_size] if train_size else data.x_train
    if x.shape[-1] != 28:
        x = nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
        xt = nn.functional.interpolate(data.x_test, size=(28, 28), mode="bilinear",
                                       align_corners=False)
    else:
        xt = data.x_test
    x, xt = x.float(), xt.float()
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, latent))
    dec = conv_generator(latent, seed).float()
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = (dec(enc(x[idx])) - x[idx]).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        z = enc(xt[:512]).double()
        test = float((dec(enc(xt[:512])) - xt[:512]).square().mean())
    info = {"dataset": data.name, "train": len(x), "epochs": epochs,
            "train_mse": float(loss.detach()),
            "test_mse": test, "seconds": time.perf_counter() - t0}
    return dec.double().eval(), z, info


def _mask(shape: tuple[int, ...], fraction: float, gen: torch.Generator) -> Tensor | None:
    """A random mask observing ``fraction`` of each output's entries (None: all)."""
    if fraction >= 1:
        return None
    n, rest = shape[0], shape[1:]
    count = torch.tensor(rest).prod().item()
    keep = max(1, round(fraction * count))
    order = torch.rand(n, count, generator=gen).argsort(1)
    mask = torch.zeros(n, count, dtype=torch.bool)
    mask.scatter_(1, order[:, :keep], True)
    return mask.reshape(shape)


def trial(G: nn.Module, z_true: Tensor, fraction: float, method: str, seed: int,
          restarts: int, max_steps: int | None) -> tuple[Inversion, Tensor]:
    """Invert ``G(z_true)`` observed on a random ``fraction``; returns the inversion and
    whether each latent was recovered (``||z - z*|| <= 1e-3 (1 + ||z*||)``)."""
    with torch.no_grad():
        y = G(z_true)
    mask = _mask(tuple(y.shape), fraction, torch.Generator().manual_seed(seed))
    inv = invert(G, y, mask, method=method, restarts=restarts, max_steps=max_steps,
                 seed=seed)
    err = (inv.z - z_true).flatten(1).norm(dim=1)
    return inv, err <= 1e-3 * (1 + z_true.flatten(1).norm(dim=1))


def _fractions(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions like 1,0.5, got {text!r}") from None
    if not vals or any(not 0 < v <= 1 for v in vals):
        raise argparse.ArgumentTypeError(f"fractions must lie in (0, 1], got {text!r}")
    return vals


def _ints(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 8,16, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"latent sizes must be >= 1, got {text!r}")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latents", type=_ints, default=[8, 16], help="latent sizes (8,16)")
    p.add_argument("--fractions", type=_fractions, default=[1.0, 0.5, 0.25, 0.1],
                   help="observed fractions of each output (1,0.5,0.25,0.1)")
    p.add_argument("--seeds", type=positive_int, default=5)
    p.add_argument("--samples", type=positive_int, default=6, help="outputs per seed")
    p.add_argument("--restarts", type=non_negative_int, default=2,
                   help="random starts after z = 0 (both methods)")
    p.add_argument("--gradient-steps", type=positive_int, default=1000,
                   help="gradient steps per start")
    p.add_argument("--dataset", choices=["mnist", "digits"], default="mnist",
                   help="data of the trained decoder")
    p.add_argument("--epochs", type=positive_int, default=3, help="autoencoder epochs")
    p.add_argument("--train-size", type=positive_int, default=None)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="one latent size, 2 seeds, 4 outputs, digits, 1 epoch")


def run(args: argparse.Namespace) -> Path:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.latents, args.seeds, args.samples = args.latents[:1], 2, 4
        args.dataset, args.epochs, args.gradient_steps = "digits", 1, 300
    decoders = {d: train_decoder(d, args.dataset, args.epochs, train_size=args.train_size)
                for d in args.latents}
    runs: list[dict] = []
    shown: dict[str, Inversion] = {}
    for kind in ("random", "trained"):
        for d in args.latents:
            for seed in range(args.seeds):
                if kind == "random":
                    G = conv_generator(d, 1000 + seed)
                    z = torch.randn(args.samples, d, dtype=D,
                                    generator=torch.Generator().manual_seed(seed))
                else:
                    G, codes, _ = decoders[d]
                    z = codes[seed * args.samples:(seed + 1) * args.samples]
                for frac in args.fractions:
                    for method in ("exact", "gradient"):
                        steps = None if method == "exact" else args.gradient_steps
                        inv, rec = trial(G, z, frac, method, seed, args.restarts, steps)
                        runs.append({
                            "generator": kind, "latent": d, "seed": seed, "fraction": frac,
                            "method": method, "success": inv.success.double().mean().item(),
                            "recovered": rec.double().mean().item(),
                            "seconds": inv.seconds / len(z),
                            "iterations": inv.iterations.double().mean().item(),
                            "regions": inv.regions_visited.double().mean().item(),
                            "median_residual": inv.residual.median().item()})
                        key = f"{kind}-{method}"
                        if seed == 0 and d == args.latents[-1] and frac == 0.25:
                            shown[key] = inv
                        print(f"{kind} d={d} seed={seed} observed={frac:g} {method}: "
                              f"success {runs[-1]['success']:.2f} recovered "
                              f"{runs[-1]['recovered']:.2f} {runs[-1]['seconds']:.3f} s each",
                              flush=True)
    rows = []
    for kind in ("random", "trained"):
        for d in args.latents:
            for frac in args.fractions:
                row: list = [kind, d, f"{100 * frac:g}%"]
                for method in ("exact", "gradient"):
                    r = [x for x in runs if x["generator"] == kind and x["latent"] == d
                         and x["fraction"] == frac and x["method"] == method]
                    row += [f"{statistics.fmean(x['success'] for x in r):.2f}",
                            f"{statistics.fmean(x['recovered'] for x in r):.2f}",
                            f"{1e3 * statistics.fmean(x['seconds'] for x in r):.0f}",
                            f"{statistics.fmean(x['iterations'] for x in r):.0f}"]
                rows.append(row)
    fits = "; ".join(f"latent {d}: {i['dataset']} {i['train']} images, {i['epochs']} epoch(s), "
                     f"test MSE {i['test_mse']:.4f} ({i['seconds']:.0f} s)"
                     for d, (_, _, i) in decoders.items())
    notes = (
        "Per row: mean over seeds of the fraction of outputs inverted (success: RMS "
        "residual over observed entries <= 1e-6 (1 + rms(y)), float64) and recovered "
        "(||z - z*|| <= 1e-3 (1 + ||z*||)), milliseconds per inversion (wall time of the "
        "batched call / outputs) and iterations per output (exact: least-squares solves; "
        "gradient: gradient steps with a backtracking step size). "
        f"{args.seeds} seeds x {args.samples} outputs per row; starts z = 0 then "
        f"{args.restarts} seeded N(0, I) draws; gradient: up to {args.gradient_steps} steps "
        "per start. random: two-layer transposed-convolution generators (latent -> "
        "16x7x7 -> 8x14x14 -> 1x28x28, ReLU, PyTorch default init), one per seed, "
        "z* ~ N(0, I). trained: the same architecture as the decoder of an autoencoder "
        f"({fits}), z* the encodings of test images (outputs G(z*) in its range). "
        f"Masks: a random subset of each output's pixels. {args.threads} torch thread(s).")
    table = Table(
        "Generator inversion from partial observations: exact region walk vs gradient "
        "descent",
        ["generator", "latent", "observed", "exact success", "exact recovered", "exact ms",
         "exact steps", "GD success", "GD recovered", "GD ms", "GD steps"],
        rows, notes=notes)
    (out / "runs.json").write_text(json.dumps(runs, indent=1))
    for key, inv in shown.items():
        fig = inv.plot(n=6).figure
        fig.suptitle(f"{key} (latent {args.latents[-1]}, 25% observed)", fontsize=9)
        save_figure(fig, out, f"recovered_{key}")
    table.seconds = time.perf_counter() - t0
    write_table(out, "generator_inversion", table)
    return out


EXPERIMENT = Experiment(
    name="generator-inversion",
    help="latent recovery from partial outputs: exact region walk vs gradient descent "
         "(Ma, Balestriero & Baraniuk 2019)",
    add_arguments=add_arguments,
    run=run,
)
