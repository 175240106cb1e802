"""Cost of the orthogonality penalties: seconds per training step of the demo CNN.

``small_cnn((1, 28, 28), 10, channels=(8, 16))``, batch 64 of MNIST, train mode
(batch-norm on batch statistics), Adam; one step = forward, cross-entropy
(+ penalty), backward, update.  Configurations are timed in the same process,
one step of each in turn (the machine is shared, so the median step time is
reported), and compared with the plain step.  Target: the exact template
penalty for 10 classes at most 3x the plain step; ``samples=k`` evaluates it on k random
inputs of the batch (an unbiased estimate of the full-batch value).  The last
row penalises the eval-mode network (batch-norm on running statistics), which
skips the forward and backward pass over the batch that the training-mode
penalty needs for the batch statistics: it shows that pass's share of the cost.

Run: ``python benchmarks/orthogonality.py`` (writes benchmarks/results/orthogonality.json).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from maxaffine.datasets import load_dataset
from maxaffine.losses import template_orthogonality, weight_orthogonality
from maxaffine.models import small_cnn

TARGET = 3.0
BATCH = 64


def _configs() -> dict[str, Callable | None]:
    def weight(model, xb):
        return weight_orthogonality(model[-1].weight)

    def template(samples=None):
        return lambda model, xb: template_orthogonality(model, xb, samples=samples)

    def running_stats(model, xb):  # no batch-statistics pass: templates of the eval-mode net
        model.eval()
        try:
            return template_orthogonality(model, xb, samples=8)
        finally:
            model.train()

    return {
        "plain": None,
        "weight penalty (last layer Gram)": weight,
        "template penalty, exact (64 samples, 10 classes)": template(),
        "template penalty, samples=16": template(16),
        "template penalty, samples=8": template(8),
        "template penalty, samples=4": template(4),
        "template penalty, samples=8, running BN stats": running_stats,
    }


def main(rounds: int = 8, steps: int = 5) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_dataset("mnist")
    x, y = data.x_train[:BATCH], data.y_train[:BATCH]
    configs = _configs()
    models = {name: small_cnn((1, 28, 28), 10, channels=(8, 16)).train() for name in configs}
    opts = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}

    def step(name: str) -> None:
        model, pen = models[name], configs[name]
        loss = nn.functional.cross_entropy(model(x), y)
        if pen is not None:
            loss = loss + 0.1 * pen(model, x)
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    times: dict[str, list[float]] = {name: [] for name in configs}
    for name in configs:  # warm-up
        step(name)
    for _ in range(rounds * steps):  # one step of each in turn: load bursts hit all alike
        for name in configs:
            t0 = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["plain"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"config": name, "seconds_per_step": med, "ratio": med / base,
                     "meets_3x": med / base <= TARGET if name.startswith("template") else None,
                     "steps": ts})
    print(f"demo CNN (8, 16) on MNIST, batch {BATCH}, train mode, Adam, 1 thread, "
          f"median of {rounds * steps} interleaved steps (torch {torch.__version__})")
    print(f"{'configuration':<50} {'s/step':>9} {'x plain':>8}  target <= {TARGET:g}x")
    for r in rows:
        mark = "" if r["meets_3x"] is None else ("ok" if r["meets_3x"] else "MISSES")
        print(f"{r['config']:<50} {r['seconds_per_step']:>9.4f} {r['ratio']:>8.2f}  {mark}")
    result = {"benchmark": "orthogonality", "target_ratio": TARGET, "batch": BATCH,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.machine(), "rows": rows}
    out = Path(__file__).parent / "results" / "orthogonality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
