"""The saliency grid: for each attribution, the same example images (columns) explained by every method (rows).

The maps are read from each method's examples.safetensors (`clearsight.examples`; the first complete seed that
has one), never recomputed. A map is drawn as |map| summed over channels, scaled to its own 99th percentile; a
red frame marks an example the method misclassifies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from clearsight.errors import ClearsightError
from clearsight.examples import Examples, load_examples
from clearsight.report.plots import Figure, absent, new_figure, png, with_data
from clearsight.report.text import fmt

TOP_SHARE = 0.1  # the text's concentration: the share of |map| mass on the top 10% of features


def _loaded(summary: Mapping[str, Any], folder: Path) -> tuple[dict[str, Examples], list[str]]:
    found: dict[str, Examples] = {}
    problems = []
    for m in with_data(summary):
        for seed in m["seeds"]:
            path = m["examples"].get(str(seed))
            if path is None:
                continue
            try:
                found[m["name"]] = load_examples(folder / path)
                break
            except ClearsightError as err:
                problems.append(f"{m['name']} seed {seed}: {err}")
    return found, problems


def _image(x: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """An input as something imshow draws: [H, W] grey, [H, W, 3] colour, or a [1, F] strip of features."""
    if x.dim() == 3 and x.shape[0] == 3:
        return x.permute(1, 2, 0).clamp(0, 1), None
    if x.dim() == 3:
        return x[0], "gray"
    return x.reshape(1, -1), "gray"


def _heat(a: torch.Tensor) -> torch.Tensor:
    m = a.abs().sum(0) if a.dim() == 3 else a.abs().reshape(1, -1)
    top = torch.quantile(m.flatten().double(), 0.99).item()
    return (m / top).clamp(0, 1) if top > 0 else m


def concentration(maps: torch.Tensor) -> float:
    """Mean over examples of the share of |map| mass on the top TOP_SHARE of features (NaN for all-zero maps)."""
    flat = maps.abs().flatten(1).double()
    k = max(1, math.ceil(TOP_SHARE * flat.shape[1]))
    total = flat.sum(1)
    share = flat.topk(k, dim=1).values.sum(1) / total
    share = share[total > 0]
    return float(share.mean()) if share.numel() else math.nan


def saliency(summary: Mapping[str, Any], folder: Path) -> Figure:
    title = "Saliency maps"
    found, problems = _loaded(summary, folder)
    if not found:
        reason = "no complete cell has an examples.safetensors file"
        return absent("saliency", title, reason + (f" that reads ({'; '.join(problems)})" if problems else ""))
    names = list(found)
    keys = list(dict.fromkeys(k for ex in found.values() for k in ex.maps))
    reference = found[names[0]]
    says = []
    other = [n for n in names if found[n].indices != reference.indices]
    if other:
        says.append(f"{', '.join(other)} show other examples than {names[0]} (their data differ); columns do not "
                    "match across those rows.")
    images = []
    for key in keys:
        rows = [n for n in names if key in found[n].maps]
        images.append(png(_grid(key, rows, found)))
        says.append(_concentration_sentence(key, rows, found, summary.get("standard")))
    wrong = [f"{n} {int((found[n].pred != found[n].y).sum())} of {found[n].y.numel()}" for n in names
             if bool((found[n].pred != found[n].y).any())]
    says.append("Red frames mark misclassified examples: " + ", ".join(wrong) + "." if wrong
                else "Every method classifies every example shown correctly.")
    says += [f"Unreadable examples file: {p}" for p in problems]
    return Figure("saliency", title, images, says)


def _grid(key: str, rows: Sequence[str], found: Mapping[str, Examples]) -> Any:
    ref = found[rows[0]]
    count = ref.x.shape[0]
    fig = new_figure(1.25 * count + 1.6, 1.25 * (len(rows) + 1) + 0.5)
    fig.suptitle(f"attribution: {key.replace(':', ' ')}  (|map|, each scaled to its 99th percentile)",
                 fontsize="medium")
    axes = fig.subplots(len(rows) + 1, count, squeeze=False)
    for j in range(count):
        picture, cmap = _image(ref.x[j])
        _show(axes[0][j], picture, cmap, red=False)
        axes[0][j].set_title(f"y={int(ref.y[j])}", fontsize="small")
    axes[0][0].set_ylabel("input", fontsize="small")
    for i, name in enumerate(rows, 1):
        ex = found[name]
        for j in range(min(count, ex.x.shape[0])):
            _show(axes[i][j], _heat(ex.maps[key][j]), "magma", red=bool(ex.pred[j] != ex.y[j]))
        axes[i][0].set_ylabel(name, fontsize="small", rotation=0, ha="right", va="center")
    return fig


def _show(ax: Any, picture: torch.Tensor, cmap: str | None, *, red: bool) -> None:
    ax.imshow(picture.numpy(), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto" if picture.shape[0] == 1 else "equal",
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#d62728" if red else "#cccccc")
        spine.set_linewidth(2.5 if red else 0.5)


def _concentration_sentence(key: str, rows: Sequence[str], found: Mapping[str, Examples],
                            standard: str | None) -> str:
    shares = {n: concentration(found[n].maps[key]) for n in rows}
    defined = {n: v for n, v in shares.items() if not math.isnan(v)}
    label = key.replace(":", " ")
    if not defined:
        return f"{label}: every map shown is zero."
    top, least = max(defined, key=lambda n: defined[n]), min(defined, key=lambda n: defined[n])
    count = len(found[rows[0]].y)
    scope = f"these {count} examples only: the table's sparsity rows score many more"
    if top == least:
        return (f"{label} maps of {top}: the top {TOP_SHARE:.0%} of features hold {fmt(100 * defined[top])}% of "
                f"the map's mass ({scope}).")
    text = (f"{label} maps: the top {TOP_SHARE:.0%} of features hold the most of the map's mass for {top} "
            f"({fmt(100 * defined[top])}%)")
    if standard in defined and standard != top:
        text += f", against {fmt(100 * defined[standard])}% for standard"
    return text + f"; the least for {least} ({fmt(100 * defined[least])}%; {scope})."
