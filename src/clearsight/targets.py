"""Target maps for Interpretation Regularization (Noack et al., arXiv 1912.03430): compute, store, attach.

A teacher run's target maps are computed once per dataset (`clearsight targets TEACHER_RUN --out FILE`) for the
train and test splits of the teacher's dataset and written atomically as one safetensors file: a tensor per
split plus the teacher's identity (run directory, sha256 of its config.yaml and model.safetensors), every
setting, and a fingerprint of each split's data (name, split, shape and the sha256 of its inputs and labels).

`attach(dataset, FILE)` returns the dataset with the maps as the per-sample extra `target_map`, which
`ArrayDataset.batch` carries to objectives, so the maps follow the validation split, shuffling and data-parallel
shards. It refuses a file whose data fingerprint differs from the dataset's (another dataset, split, order or
preprocessing) and, for training, a stale one (the teacher run still exists but its config.yaml or weights
changed since). A trained run is evaluated against the sha256 its config.yaml recorded instead
(`clearsight.runs.load_data`), so retraining the teacher later does not make the student unevaluable.

The maps [code]: SmoothGrad of the teacher, 50 noisy copies (sigma 0.15, clipped to [0, 1]) plus the clean image,
signed gradients of the true-class logit, averaged; then each map is sparsified two-sided, keeping the entries
farther than t standard deviations (t = 1) from the map's mean. The `abs` control takes |gradient| of every
copy before averaging (mean |g|, as the authors' code does), to train with ir's `absolute=True`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clearsight import __version__, io
from clearsight.attributions import gradient
from clearsight.attributions.chunks import DEFAULT_MAX_BATCH, reduce_rows
from clearsight.attributions.guard import positive_int
from clearsight.data.base import ArrayDataset
from clearsight.errors import CheckpointError, ConfigError, DataError
from clearsight.metrics.perturb import SampleNoise
from clearsight.modes import eval_mode
from clearsight.progress import reporter

FORMAT = "clearsight-targets/1"
ATTRIBUTIONS = ("smoothgrad", "gradient")
EXTRA = "target_map"


def sparsify(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per map [B, ...]: keep the entries with |m - mean(m)| > threshold * std(m), zero the rest; 0 keeps all.

    The standard deviation is the population one (numpy's default, which the authors' code uses).
    """
    if threshold == 0:
        return maps
    flat = maps.flatten(1)
    mean = flat.mean(1, keepdim=True)
    std = flat.std(1, correction=0, keepdim=True)
    return torch.where((flat - mean).abs() > threshold * std, flat, torch.zeros_like(flat)).view_as(maps)


def teacher_maps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attribution: str = "smoothgrad",
                 n: int = 50, sigma: float = 0.15, threshold: float = 1.0, absolute: bool = False,
                 generator: torch.Generator | None = None, max_batch: int = DEFAULT_MAX_BATCH) -> torch.Tensor:
    """Target maps [B, ...] of inputs x for labels y: see the module docstring.

    `attribution="smoothgrad"`: the mean of the true-class gradient over n noisy copies clip(x + sigma * N(0, 1))
    and the clean image, (sum_k g(x_k) + g(x)) / (n + 1); "gradient": the plain gradient (a control of the
    paper). `absolute` takes |.| of every copy's gradient before the mean (the authors' SmoothGrad with abs:
    mean |g|, not |mean g|), or of the plain gradient. The noise is drawn per sample, as the metrics draw theirs
    (`clearsight.metrics.perturb.SampleNoise`): sample i's copies are the i-th block of `generator`'s stream,
    so on the CPU a sample's map does not depend on how the samples are batched or chunked (`max_batch`). The
    model is used in eval mode (flags restored).
    """
    if attribution not in ATTRIBUTIONS:
        raise ConfigError(f"unknown target attribution {attribution!r}; valid: {', '.join(ATTRIBUTIONS)}")
    if not threshold >= 0:
        raise ConfigError(f"the sparsification threshold must be >= 0 standard deviations, got {threshold}")
    positive_int("n", n)
    positive_int("max_batch", max_batch)
    if not sigma >= 0:
        raise ConfigError(f"sigma must be >= 0 (relative to the input range 1), got {sigma}")

    def attribute(rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        g = gradient(model, rows, target)
        return g.abs() if absolute else g

    with eval_mode(model):
        if attribution == "gradient":
            return sparsify(attribute(x, y), threshold)
        noise = SampleNoise(n, tuple(x.shape[1:]), kind="normal", generator=generator, dtype=x.dtype,
                            device=x.device)
        src = x.detach()

        def perturb(sample: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
            rows, noisy = src[sample], copy < n  # indexing copies; copies 0..n-1 are noisy, copy n is clean
            rows[noisy] = (rows[noisy] + sigma * noise.rows(sample[noisy], copy[noisy])).clamp(0.0, 1.0)
            return rows

        maps = reduce_rows(attribute, perturb, y, n=n + 1, max_batch=max_batch)
    return sparsify(maps, threshold)


def fingerprint(data: ArrayDataset) -> dict[str, Any]:
    """What identifies a split's samples and their order: name, split, shape and the sha256 of inputs and labels."""
    digest = hashlib.sha256()
    digest.update(data.x.detach().cpu().contiguous().numpy().tobytes())
    digest.update(data.y.detach().cpu().contiguous().numpy().tobytes())
    return {"dataset": data.name, "split": data.split, "shape": list(data.x.shape), "sha256": digest.hexdigest()}


def teacher_identity(run_dir: Path) -> dict[str, str]:
    run_dir = Path(run_dir).resolve()
    return {"run": str(run_dir), "config_sha256": io.sha256_file(run_dir / "config.yaml"),
            "weights_sha256": io.sha256_file(run_dir / "model.safetensors")}


def compute(run_dir: str | Path, out: str | Path, *, attribution: str = "smoothgrad", n: int = 50,
            sigma: float = 0.15, threshold: float = 1.0, absolute: bool = False, seed: int = 0,
            batch_size: int = 256, device: str | torch.device = "cpu", progress: str = "auto") -> Path:
    """Compute the teacher run's target maps for the train and test splits of its dataset and write `out`.

    The noise is drawn from one generator seeded with `seed` (on `device`), sample after sample in dataset
    order (the train split, then the test split), so the file is reproducible from its recorded settings: on
    the CPU the maps do not depend on `batch_size` (per-sample noise, `teacher_maps`); on CUDA one draw of many
    samples is not many draws of one, so there they also depend on the batching, which the settings record
    too. `out` must not exist (nothing is ever overwritten); it is written atomically.
    """
    from clearsight.runs import load_data, open_run  # runs imports models and data: keep this module light

    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} already exists; give another --out or delete it first. Nothing was changed.")
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: the folder {out.parent} does not exist")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    run = open_run(run_dir, device=device)
    splits = {split: load_data(run.config, split) for split in ("train", "test")}
    generator = torch.Generator(device=torch.device(device)).manual_seed(int(seed))
    report = reporter(progress)
    bar = report.bar(sum(-(-len(d) // batch_size) for d in splits.values()), f"targets ({attribution})")
    maps = {}
    for split, data in splits.items():
        parts = []
        for i in range(0, len(data), batch_size):
            x, y = data.x[i : i + batch_size].to(device), data.y[i : i + batch_size].to(device)
            parts.append(teacher_maps(run.model, x, y, attribution=attribution, n=n, sigma=sigma,
                                      threshold=threshold, absolute=absolute, generator=generator).cpu())
            bar.update(1)
        maps[split] = torch.cat(parts)
    bar.close()
    meta = {"format": FORMAT, "clearsight": __version__, "teacher": teacher_identity(run.path),
            "settings": {"attribution": attribution, "n": n, "sigma": sigma, "threshold": threshold,
                         "abs": absolute, "seed": seed, "device": torch.device(device).type,
                         "batch_size": int(batch_size), "max_batch": DEFAULT_MAX_BATCH},
            "data": {split: fingerprint(data) for split, data in splits.items()}}
    io.save_weights(out, maps, meta)
    return out


def load(path: str | Path, data: ArrayDataset, *, check_teacher: bool = True,
         absolute: bool | None = None) -> torch.Tensor:
    """The maps in `path` for the samples of `data`, checked against its fingerprint.

    Args:
        check_teacher: refuse a stale file, whose teacher run still exists but has another config.yaml or other
            weights than when the maps were computed (training). False for a file already verified otherwise
            (evaluating a trained run: against the sha256 its config.yaml recorded).
        absolute: the student's `absolute` option: refuse a file whose `abs` setting differs (None: unchecked).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"target-map file {path} does not exist; compute it with `clearsight targets TEACHER_RUN "
                        f"--out {path}`")
    tensors, meta = io.load_tensors(path)
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} is not a clearsight target-map file (format {meta.get('format')!r}, expected "
                        f"{FORMAT!r})")
    recorded = meta["data"].get(data.split)
    if recorded is None or data.split not in tensors:
        raise DataError(f"{path} holds target maps for the splits {', '.join(sorted(tensors))}, not {data.split!r}")
    if recorded != fingerprint(data):
        raise DataError(f"{path} was computed for other data than this {data.name!r} {data.split!r} split "
                        f"(it holds {recorded['dataset']!r} {recorded['split']!r}, shape {recorded['shape']}, and "
                        "the inputs or their order differ); compute target maps for this dataset")
    if absolute is not None and bool(meta["settings"]["abs"]) != bool(absolute):
        raise ConfigError(f"{path} holds {'absolute' if meta['settings']['abs'] else 'signed'} target maps but the "
                          f"objective has absolute={bool(absolute)}; set objective.absolute="
                          f"{str(bool(meta['settings']['abs'])).lower()} or compute the maps "
                          f"{'without' if meta['settings']['abs'] else 'with'} --abs")
    if check_teacher:
        _check_teacher(path, meta["teacher"])
    return tensors[data.split]


def _check_teacher(path: Path, teacher: dict[str, str]) -> None:
    run = Path(teacher["run"])
    for name, key in (("config.yaml", "config_sha256"), ("model.safetensors", "weights_sha256")):
        file = run / name
        if file.exists() and io.sha256_file(file) != teacher[key]:
            raise CheckpointError(f"{path} is stale: the teacher {run} has another {name} than when the maps were "
                                  "computed (it was retrained or resumed since); compute the target maps again")


def attach(data: ArrayDataset, path: str | Path, *, check_teacher: bool = True,
           absolute: bool | None = None) -> ArrayDataset:
    """`data` with its target maps from `path` as the per-sample extra "target_map" (a new dataset); the checks
    and options of `load`."""
    maps = load(path, data, check_teacher=check_teacher, absolute=absolute)
    return ArrayDataset(data.x, data.y, classes=data.classes, name=data.name, split=data.split,
                        feature_names=data.feature_names, sensitive=data.sensitive,
                        extras={**data.extras, EXTRA: maps})


def read_extra(data: ArrayDataset, path: str | Path, *, options: Mapping[str, Any], verified: bool) -> ArrayDataset:
    """How the run loader attaches the file of ir's `targets` option (`clearsight.runs.EXTRA_FILES`): for
    training checked against the teacher and the objective's `absolute` option; a file `verified` by the hash a
    trained run recorded, against the data only."""
    if verified:
        return attach(data, path, check_teacher=False)
    return attach(data, path, absolute=bool(options.get("absolute", False)))
