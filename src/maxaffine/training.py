"""A small, explicit training loop shared by the demo and the experiments."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import _arguments as arg
from .datasets import Dataset
from .errors import MaxAffineError, MaxAffineTypeError

OPTIMIZERS = ("adam", "sgd")

Penalty = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass
class History:
    """``losses``: training loss per iteration; ``curve``: (iteration, test accuracy)
    every ``eval_every`` iterations; ``train_acc`` / ``test_acc`` at the end."""

    losses: list[float] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)
    train_acc: float = float("nan")
    test_acc: float = float("nan")
    seconds: float = 0.0


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy in eval mode (the model's mode is restored); NaN for no samples."""
    if len(x) == 0:
        return float("nan")
    was = model.training
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                      for i in range(0, len(x), batch_size))
    model.train(was)
    return correct / len(x)


def _batches(y: Tensor, batch_size: int, balanced: bool, gen: torch.Generator) -> list[Tensor]:
    n = len(y)
    if not balanced:
        perm = torch.randperm(n, generator=gen)
        return [perm[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    classes = torch.unique(y)
    per = max(1, batch_size // len(classes))
    pools = [torch.nonzero(y == c).flatten() for c in classes]
    out = []
    for _ in range(n // (per * len(classes))):
        idx = [p[torch.randint(len(p), (per,), generator=gen)] for p in pools]
        out.append(torch.cat(idx)[torch.randperm(per * len(classes), generator=gen)])
    return out


def fit(model: nn.Module, data: Dataset, *, epochs: int = 3, batch_size: int = 64,
        lr: float = 1e-3, seed: int = 0, penalty: Penalty | None = None,
        balanced: bool = False, eval_every: int | None = None, progress: bool = True,
        desc: str = "train", optimizer: str = "adam") -> History:
    """Train ``model`` with cross-entropy (+ ``penalty(model, xb, yb)``) on
    ``data.x_train``; returns a :class:`History`. The model ends in eval mode.
    ``balanced``: class-balanced mini-batches (equal count per class); ``optimizer``:
    ``"adam"`` or ``"sgd"`` (momentum 0.9). Only full batches are used, so the
    training set needs at least ``batch_size`` samples."""
    if not isinstance(model, nn.Module):
        raise MaxAffineTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, Dataset):
        raise MaxAffineTypeError(f"data must be a maxaffine.datasets.Dataset (load_dataset, "
                                 f"load_file), got {type(data).__name__}")
    epochs = arg.integer(epochs, "epochs", minimum=0)
    batch_size = arg.integer(batch_size, "batch_size", minimum=1)
    lr = arg.number(lr, "lr", minimum=0.0, strict=True, meaning="the learning rate")
    seed = arg.integer(seed, "seed", minimum=0)
    balanced, progress = arg.flag(balanced, "balanced"), arg.flag(progress, "progress")
    optimizer = arg.choice(optimizer, "optimizer", OPTIMIZERS)
    if eval_every is not None:
        eval_every = arg.integer(eval_every, "eval_every", minimum=1,
                                 meaning="iterations between test evaluations, or None")
    if penalty is not None and not callable(penalty):
        raise MaxAffineTypeError(f"penalty must be a function (model, xb, yb) -> scalar "
                                 f"tensor, or None, got {type(penalty).__name__}")
    n = len(data.x_train)
    if epochs and n < batch_size:
        raise MaxAffineError(f"batch_size={batch_size} but {data.name!r} has only {n} training "
                             f"samples, and fit uses full batches only: pass batch_size <= "
                             f"{n}" + (" (the training set is empty)" if n == 0 else ""))
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.Adam(params, lr=lr) if optimizer == "adam"
           else torch.optim.SGD(params, lr=lr, momentum=0.9))
    hist = History()
    t0 = time.perf_counter()
    it = 0
    bar = tqdm(total=epochs * max(1, len(data.x_train) // batch_size), desc=desc,
               disable=not progress, leave=False)
    for _ in range(epochs):
        model.train()
        for idx in _batches(data.y_train, batch_size, balanced, gen):
            xb, yb = data.x_train[idx], data.y_train[idx]
            loss = nn.functional.cross_entropy(model(xb), yb)
            if penalty is not None:
                loss = loss + penalty(model, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hist.losses.append(loss.item())
            it += 1
            bar.update(1)
            if eval_every and it % eval_every == 0:
                hist.curve.append((it, accuracy(model, data.x_test, data.y_test)))
                model.train()
    bar.close()
    model.eval()
    hist.train_acc = accuracy(model, data.x_train, data.y_train)
    hist.test_acc = accuracy(model, data.x_test, data.y_test)
    hist.seconds = time.perf_counter() - t0
    return hist
