"""Writing results: tables as JSON + Markdown, figures as PNG, a small HTML page."""

from __future__ import annotations

import html
import json
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn


@dataclass
class Table:
    """A results table with the command that produced it and its wall time."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    command: str = field(default_factory=lambda: shlex.join(["maxaffine", *sys.argv[1:]]))
    seconds: float = 0.0
    notes: str = ""

    def markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |"
        sep = "|" + "|".join("---" for _ in self.columns) + "|"
        body = ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in self.rows]
        lines = [f"### {self.title}", "", head, sep, *body, ""]
        lines.append(f"Command: `{self.command}` ({self.seconds:.0f} s wall time)")
        if self.notes:
            lines += ["", self.notes]
        return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def output_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an output directory (a file is in the way), or None."""
    for p in (path, *path.parents):
        if p.exists():
            if p.is_dir():
                return None
            if p == path:
                return f"{path} is an existing file, not a directory"
            return f"{p} (a parent of {path}) is an existing file, not a directory"
    return None


def write_table(out_dir: str | Path, name: str, table: Table) -> Path:
    """Write ``name.json`` and ``name.md`` under ``out_dir``; returns the .md path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(asdict(table), indent=2, default=str))
    md = out / f"{name}.md"
    md.write_text(table.markdown())
    return md


def save_figure(fig, out_dir: str | Path, name: str) -> Path:
    """Save a matplotlib figure as PNG (150 dpi) and close it."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def markdown_to_html(text: str, title: str = "maxaffine report") -> str:
    """A minimal converter for our own reports: headings, tables, images, code, text."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           "</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;"
           "line-height:1.45}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
           "padding:3px 8px;text-align:right}img{max-width:100%}code{background:#f3f3f3}"
           "</style></head><body>"]
    lines = text.splitlines()
    i = 0

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        s = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r"<a href='\2'>\1</a>", s)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)

    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            m = re.match(r"!\[(.*?)\]\((.*?)\)", line)
            if m:
                out.append(f"<p><img alt='{html.escape(m[1])}' src='{html.escape(m[2])}'></p>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            out.append("<table>")
            for k, r in enumerate(rows):
                if k == 1 and all(set(c) <= set("-: ") for c in r):
                    continue
                tag = "th" if k == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{inline(c)}</{tag}>" for c in r) + "</tr>")
            out.append("</table>")
            continue
        elif line.startswith("```"):
            i += 1
            block = []
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            out.append("<pre>" + html.escape("\n".join(block)) + "</pre>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    out.append("</body></html>")
    return "\n".join(out)


@dataclass
class DemoContext:
    """What every report section can use: the data, the trained models, where to write
    (the demo report's sections, :mod:`maxaffine.demo`, come from the experiments).

    ``cnn`` is the model the single-model sections analyse (the demo's CNN; in the
    report for a user's own model, ``maxaffine report``, that model, also in ``mlp``);
    ``models``: the models the per-model sections list (empty: ``mlp`` and ``cnn``);
    ``labels``: where ``data``'s labels come from (``"dataset"``, or ``"predicted"``:
    the model's own predictions, for unlabelled inputs)."""

    out: Path
    data: Dataset
    mlp: nn.Module
    cnn: nn.Module
    history: dict[str, History]
    seed: int = 0
    quick: bool = False
    extras: dict = field(default_factory=dict)
    models: dict[str, nn.Module] = field(default_factory=dict)
    labels: str = "dataset"

    def named_models(self) -> dict[str, nn.Module]:
        """The models of the report by name (the demo: ``mlp`` and ``cnn``)."""
        return dict(self.models) if self.models else {"mlp": self.mlp, "cnn": self.cnn}

    def figure(self, fig, name: str) -> str:
        """Save a figure next to the report; returns its Markdown image line."""
        save_figure(fig, self.out, name)
        return f"![{name}]({name}.png)"


@dataclass
class Section:
    """One section of the demo report: a title and its Markdown."""

    title: str
    markdown: str


if TYPE_CHECKING:  # pragma: no cover
    from ..datasets import Dataset
    from ..training import History
