"""Running a study: every cell through its stages (train, target maps for its students, evaluate, examples), each
stage skipped when its result is on disk and valid, then the report.

A worker runs its shard's cells in order (teachers first). Each cell is worked on under its lock; a cell locked
by another live worker is left to it. A student whose teacher is not trained yet trains it (under the teacher's
lock) or, when another worker holds that lock, waits for it. Every stage writes atomically and records itself in
cell.json only once its output is complete, so a kill at any moment loses at most the stage in progress, and the
next run redoes exactly that: training resumes from its last epoch checkpoint (same weights as an uninterrupted
run), an evaluation recomputes its rows with the same seeds (same values).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from clearsight import distributed, io
from clearsight.errors import CheckpointError, ClearsightError, ConfigError
from clearsight.study.plan import Cell, Group, Study, cells, digest, parse_file, shard
from clearsight.study.store import Busy, locked, read_state, set_aside, write_state

WAIT_SECONDS = 10.0  # how often a student polls a teacher that another worker is training
EVALUATE_UNITS = 2   # progress units of a cell's evaluation, against one per training epoch


def run(study: Study, out: str | Path, *, shard_spec: str | None = None, update: bool = False,
        device: str = "auto", progress: str = "auto") -> Path:
    """Run (or continue) `study` in the directory `out`; returns the path of its report.

    Args:
        shard_spec: "K/N" runs every N-th cell starting with the K-th (workers sharing a file system); None: all.
        update: `out` holds this study with other settings: rerun what changed (cells trained with other
            settings move to out/stale/). Without it such a directory is refused and nothing is touched.
        device: where cells train and are evaluated ("auto": CUDA when available).
        progress: "auto" (a bar on a terminal, plain lines otherwise), "bar", "lines" or "none".
    """
    from clearsight.modes import resolve_device

    out = Path(out)
    # Under torchrun: a group set up here is torn down here; one torn down and set up again in the same process
    # waits forever for its store, so a caller running several studies (the CLI, for a file of several) joins
    # the group first (`group`) and every run() uses it.
    with distributed.joined(resolve_device(device), timeout=STUDY_TIMEOUT) as world:
        if not world.is_main:
            _follow(world)
            return out / "report.html"
        crew = _Crew(world)
        try:
            return _lead(study, out, shard_spec=shard_spec, update=update, device=device, progress=progress,
                         crew=crew)
        finally:
            crew.dismiss()


@contextlib.contextmanager
def group(device: str = "auto") -> Iterator[None]:
    """The torchrun process group for every study run inside the block (nothing outside torchrun)."""
    from clearsight.modes import resolve_device

    with distributed.joined(resolve_device(device), timeout=STUDY_TIMEOUT):
        yield


def _lead(study: Study, out: Path, *, shard_spec: str | None, update: bool, device: str, progress: str,
          crew: _Crew) -> Path:
    """The study's work, on a single process or on rank 0 of a torchrun group (which the others help train)."""
    from clearsight.modes import resolve_device
    from clearsight.progress import reporter

    report = reporter(progress)
    mine = shard(cells(study), shard_spec)
    _preflight(study)
    _claim(out, study, update=update)
    dev = str(resolve_device(device))
    units = {c.name: _units(study, c) for c in mine}
    bar = report.bar(sum(units.values()), f"study {study.name}")
    say = _sayer(bar, report.lines)
    began = time.perf_counter()
    worker = _Worker(study, out, dev, bar, say, crew)
    worker.mine = {c.name for c in mine}
    left: list[Cell] = []
    for number, cell in enumerate(mine, 1):
        try:
            worker.cell(cell, f"[{number}/{len(mine)}]")
        except Busy as busy:
            say(f"[{number}/{len(mine)}] {cell.name}: being run by {_who(busy.owner)}; left to it")
            left.append(cell)
        bar.update(units[cell.name] - worker.counted.pop(cell.name, 0))
    bar.close()
    say(f"study {study.name}: {len(mine) - len(left)} of {len(mine)} cells done here in "
        f"{time.perf_counter() - began:.0f} s" + (f"; {len(left)} left to other workers" if left else ""))
    return _render(out)


def load(source: str | Path) -> Group:
    """The studies of a preset name or a YAML file, checked."""
    from clearsight.study import PRESETS, preset_path

    path = preset_path(str(source)) or Path(source)
    if not path.is_file():
        raise ConfigError(f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor a study YAML file")
    doc = io.read_yaml(path, what="study file", error=ConfigError,
                       fix="Give a study as a YAML mapping in UTF-8 (`clearsight study --print quick` writes one)")
    return parse_file(doc, where=str(source))


def folders(group: Group, out: str | Path | None) -> list[tuple[Study, Path]]:
    """Where each study of `group` runs: `out` (default runs/<name>) for a single study, out/<study name> for
    each of several."""
    base = Path(out) if out is not None else Path("runs") / group.name
    return [(s, base if group.single else base / s.name) for s in group.studies]


# ---- the study directory --------------------------------------------------------------------------------------

def _claim(out: Path, study: Study, *, update: bool) -> None:
    """Make `out` this study's directory, or check that it is; another study's settings are never overwritten."""
    config = out / "study.yaml"
    data = study.to_data()
    if config.exists():
        saved = io.read_yaml(config, what="study config", error=ConfigError,
                             fix="It records the settings of the study in this folder: put it back, or run the "
                                 "study into another folder")
        if io.plain(saved) == io.plain(data):
            return
        if not update:
            changed = sorted(k for k in set(saved) | set(data) if io.plain(saved.get(k)) != io.plain(data.get(k)))
            raise ConfigError(f"{out} holds a study with other settings (different: {', '.join(changed)}). Pass "
                              "--update to rerun what the change affects (cells trained with other settings are "
                              "kept in stale/), or choose another --out. Nothing was changed.")
        (out / "stale").mkdir(exist_ok=True)
        io.write_yaml(out / "stale" / f"study-{digest(saved)}.yaml", saved)
        _unmark_changed(out, study)
    elif out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):  # a racing shard's temp file
        raise ConfigError(f"{out} exists and is not a study directory (no study.yaml); choose another --out. "
                          "Nothing was changed.")
    out.mkdir(parents=True, exist_ok=True)
    io.write_yaml(config, data)


def _unmark_changed(out: Path, study: Study) -> None:
    """Cells whose settings the update changes stop counting as complete at once (before any worker reruns them),
    so a report rendered meanwhile never shows their old results as the new study's."""
    hashes = {c.name: c.hash for c in cells(study)}
    for folder in sorted((out / "cells").glob("*")):
        state = read_state(folder) if folder.is_dir() else None
        if state is not None and state.get("complete") and hashes.get(folder.name) != state.get("hash"):
            write_state(folder, {**state, "complete": False})


def _preflight(study: Study) -> None:
    """Everything that can be checked before training: the test split loads, every suite builds on it, every
    attribution of the examples exists."""
    from clearsight.attributions import ATTRIBUTIONS
    from clearsight.evaluation import suite_for
    from clearsight.runs import load_data
    from clearsight.specs import spec

    first = study.methods[0]
    test = load_data(study.run_config(first, study.seeds[0]), "test")
    for s in study.evaluate["suites"]:
        try:
            suite_for(s, test)
        except ClearsightError as err:
            raise ConfigError(f"study {study.name}: evaluate.suites: {err}") from None
    for a in study.examples["attributions"]:
        try:
            ATTRIBUTIONS.get(spec(a)[0])
        except ClearsightError as err:  # an unknown name lists the valid ones
            raise ConfigError(f"study {study.name}: examples.attributions: {err}") from None


def _render(out: Path) -> Path:
    from clearsight.report import render
    return render(out)


# ---- cells ------------------------------------------------------------------------------------------------------

class _Worker:
    """Works cells of one study through their stages; counts progress units as it goes."""

    def __init__(self, study: Study, out: Path, device: str, bar: Any, say: Callable[[str], None],
                 crew: _Crew) -> None:
        self.study, self.out, self.device, self.bar, self.say, self.crew = study, out, device, bar, say, crew
        self.counted: dict[str, int] = {}
        self.mine: set[str] = set()  # the cells of this worker's shard (others' progress is not on its bar)
        self._opened: dict[str, tuple[Any, Any]] = {}  # cell -> (run, test split), until the cell trains again

    def folder(self, cell: Cell) -> Path:
        return self.out / "cells" / cell.name

    def cell(self, cell: Cell, tag: str) -> None:
        with locked(self.out / "locks" / f"{cell.name}.lock"):
            state = self._state(cell)
            if state.get("complete"):
                if self._current(cell, state):
                    self.say(f"{tag} {cell.name}: complete")
                    return
                # redone below: until then the report must not read it as current
                state["complete"] = False
                write_state(self.folder(cell), state)
            self._train(cell, state, tag)
            self._evaluate(cell, state, tag)
            self._examples(cell, state, tag)
            state["complete"] = True
            write_state(self.folder(cell), state)

    def _current(self, cell: Cell, state: dict[str, Any]) -> bool:
        """A complete cell's evaluation and examples are those the study asks for now, and its results file
        still holds every row (a row deleted by hand is recomputed, not silently missing from the report)."""
        from clearsight.results import read_rows

        evaluated = state.get("evaluation", {})
        if not (evaluated.get("settings") == self._eval_settings() and state["stages"].get("examples")
                == self._examples_wanted()):
            return False
        wanted = self._wanted(cell)
        if wanted is None or wanted != evaluated.get("rows"):
            return False
        results = self.folder(cell) / "results.jsonl"
        present = {r["key"] for r in read_rows(results)} if results.exists() else set()
        return set(wanted) <= present

    def _state(self, cell: Cell) -> dict[str, Any]:
        folder = self.folder(cell)
        state = read_state(folder)
        if state is not None and state.get("hash") != cell.hash:
            moved = set_aside(self.out, folder, str(state.get("hash")))
            self.say(f"{cell.name}: its settings changed; the old cell is kept in {moved}")
            state = None
        if state is None:
            if folder.exists() and any(folder.iterdir()):  # a crash before cell.json was first written
                set_aside(self.out, folder, "unrecorded")
            folder.mkdir(parents=True, exist_ok=True)
            state = {"method": cell.method.name, "objective": cell.method.objective, "seed": cell.seed,
                     "hash": cell.hash, "teacher": cell.teacher.name if cell.teacher else None,
                     "stages": {}, "complete": False}
            write_state(folder, state)
        return state

    # -- train ------------------------------------------------------------------------------------------------

    def _train(self, cell: Cell, state: dict[str, Any], tag: str) -> None:
        if state["stages"].get("train"):
            return
        cfg = self.study.run_config(cell.method, cell.seed)
        if cell.teacher is not None:
            targets = self._targets(cell)
            # the student reads the maps as they were made: absolute targets want an absolute student gradient
            options = {"absolute": cell.method.teacher.abs, **cell.method.options,  # type: ignore[union-attr]
                       "targets": str(targets.resolve())}
            with_targets = dataclasses.replace(cell.method, options=options)
            cfg = self.study.run_config(with_targets, cell.seed)
        cfg = _on_device(cfg, self.device)
        folder = self.folder(cell)
        self.bar.set_description(f"{cell.name}: train")
        began = time.perf_counter()

        def epoch_done(row: dict[str, Any]) -> None:
            if cell.name in self.mine:
                self.bar.update(1)
                self.counted[cell.name] = self.counted.get(cell.name, 0) + 1

        self._opened.pop(cell.name, None)

        try:
            history_before = len(io.read_jsonl(folder / "log.jsonl"))
        except CheckpointError:  # a damaged log: the resume below rewrites it from the checkpoint
            history_before = 0
        self.crew.train(cfg, folder, resume=(folder / "config.yaml").exists(), on_epoch=epoch_done)
        log = io.read_jsonl(folder / "log.jsonl", what="training log")
        last = log[-1] if log else {}
        state["stages"]["train"] = {"epochs": len(log), "seconds": round(sum(r.get("seconds", 0) for r in log), 3)}
        write_state(folder, state)
        resumed = f", resumed after epoch {history_before}" if history_before else ""
        accuracy = f", val accuracy {last['val_accuracy']:.3f}" if "val_accuracy" in last else ""
        self.say(f"{tag} {cell.name}: trained {len(log)} epochs in {time.perf_counter() - began:.0f} s"
                 f"{resumed}{accuracy}")

    def _targets(self, cell: Cell) -> Path:
        """The teacher's target maps for `cell` (training the teacher first when needed): computed once per
        teacher and settings, under the teacher's lock."""
        from clearsight import targets

        teacher = cell.teacher
        assert teacher is not None and cell.method.teacher is not None
        settings = cell.method.teacher.settings()
        path = self.folder(teacher) / f"targets-{digest(settings)}.safetensors"
        while True:
            try:
                with locked(self.out / "locks" / f"{teacher.name}.lock"):
                    state = self._state(teacher)
                    self._train(teacher, state, f"(teacher of {cell.name})")
                    if not path.exists():
                        self.bar.set_description(f"{teacher.name}: targets")
                        began = time.perf_counter()
                        targets.compute(self.folder(teacher), path, device=self.device, progress="none",
                                        **settings)
                        self.say(f"{teacher.name}: target maps for {cell.method.name} in "
                                 f"{time.perf_counter() - began:.0f} s")
                    return path
            except Busy as busy:
                self.say(f"{cell.name}: waiting for its teacher {teacher.name} ({_who(busy.owner)})")
                time.sleep(WAIT_SECONDS)

    # -- evaluate -----------------------------------------------------------------------------------------------

    def _eval_settings(self) -> dict[str, Any]:
        from clearsight.results import CONVENTIONS

        ev = self.study.evaluate
        # the conventions' version too: rows an older clearsight computed differently are set aside and redone
        return {"samples": ev["samples"], "batch_size": ev["batch_size"], "seed": ev["seed"],
                "conventions": CONVENTIONS}

    def _test(self, cell: Cell) -> Any:
        """The cell's trained run and its test split, opened once per cell."""
        from clearsight.runs import load_data, open_run

        if cell.name not in self._opened:
            run = open_run(self.folder(cell), device=self.device)
            self._opened[cell.name] = (run, load_data(run.config, "test"))
        return self._opened[cell.name]

    def _suites(self, test: Any) -> list[Any]:
        """The study's suites on the cell's test split; `evaluate.samples` limits every row to the first samples
        (in its key, so a row `clearsight evaluate` adds to the cell on the whole split never stands for it)."""
        from clearsight.evaluation import suite_for

        suites = [suite_for(s, test) for s in self.study.evaluate["suites"]]
        limit = self.study.evaluate["samples"]
        if limit is None:
            return suites
        return [dataclasses.replace(s, rows=[dataclasses.replace(r, samples=min(r.samples or limit, limit))
                                             for r in s.rows]) for s in suites]

    def _wanted(self, cell: Cell) -> list[str] | None:
        """The row keys the study asks of the cell (None when the cell cannot be opened yet)."""
        try:
            _, test = self._test(cell)
        except CheckpointError:
            return None
        return _keys(self._suites(test))

    def _evaluate(self, cell: Cell, state: dict[str, Any], tag: str) -> None:
        from clearsight.evaluation import evaluate_rows
        from clearsight.metrics.suites import Suite
        from clearsight.results import read_rows

        folder = self.folder(cell)
        results = folder / "results.jsonl"
        settings = self._eval_settings()
        if state.get("evaluation", {}).get("settings") not in (None, settings) and results.exists():
            # rows computed with other evaluation settings: kept beside (never over an earlier copy), recomputed
            aside, n = folder / f"results-{digest(state['evaluation']['settings'])}.jsonl", 1
            while aside.exists():
                aside, n = aside.with_name(f"results-{digest(state['evaluation']['settings'])}.{n}.jsonl"), n + 1
            results.rename(aside)
        run, test = self._test(cell)
        suites = self._suites(test)
        present = {r["key"] for r in read_rows(results)}
        self.bar.set_description(f"{cell.name}: evaluate")
        began, computed = time.perf_counter(), 0
        for suite in suites:
            rows = _missing(suite, present)
            hygiene = suite.hygiene if suite.hygiene is not None and _hygiene_key(suite) not in present else None
            if not rows and hygiene is None:
                continue
            new = evaluate_rows(run.model, test, suite=Suite(suite.name, rows, hygiene), device=self.device,
                                batch_size=settings["batch_size"], seed=settings["seed"], progress="none")
            io.append_jsonl(results, [r for r in new if r["key"] not in present])
            present |= {r["key"] for r in new}
            computed += len(new)
        state["evaluation"] = {"settings": settings, "rows": _keys(suites)}
        write_state(folder, state)
        if computed:
            self.say(f"{tag} {cell.name}: evaluated {computed} rows in {time.perf_counter() - began:.0f} s")

    def _examples_wanted(self) -> dict[str, Any]:
        ex = self.study.examples
        return {"count": ex["count"], "attributions": ex["attributions"], "seed": self.study.evaluate["seed"]}

    def _examples(self, cell: Cell, state: dict[str, Any], tag: str) -> None:
        from clearsight.examples import save_examples

        want = self._examples_wanted()
        if state["stages"].get("examples") == want:
            return
        if want["count"]:
            began = time.perf_counter()
            run, test = self._test(cell)
            save_examples(run.model, test, self.folder(cell) / "examples.safetensors",
                          attributions=want["attributions"], count=want["count"], seed=want["seed"],
                          device=self.device)
            self.say(f"{tag} {cell.name}: saliency examples in {time.perf_counter() - began:.0f} s")
        state["stages"]["examples"] = want
        write_state(self.folder(cell), state)


# ---- torchrun: rank 0 runs the study, every rank trains ----------------------------------------------------------
#
# Under `torchrun --nproc_per_node N -m clearsight study ...` rank 0 alone does what touches the study directory
# (locks, cell.json, target maps, evaluation, examples, the report); before each training it sends the run's config
# to the other ranks, and all of them train it data-parallel (`fit` averages gradients; rank 0 writes). Between
# trainings the others wait for the next config, so the group's timeout is long enough for an evaluation.

STUDY_TIMEOUT = datetime.timedelta(days=7)


class _Crew:
    """Rank 0's side: the other ranks of the group, told what to train (nothing to tell on a single process)."""

    def __init__(self, world: distributed.World) -> None:
        self.world = world
        self.training = False  # inside a data-parallel training, where the ranks' collectives must match

    def train(self, cfg: Any, folder: Path, *, resume: bool, on_epoch: Callable[[dict[str, Any]], None]) -> None:
        from clearsight.runs import train_run

        distributed.broadcast({"config": cfg.to_dict(), "folder": str(folder), "resume": resume}, self.world)
        self.training = True
        train_run(cfg, folder, resume=resume, on_epoch=on_epoch, progress="none")
        self.training = False

    def dismiss(self) -> None:
        """Tell the others to stop following; not while a training failed midway (they are in its collectives,
        and leave when torchrun stops them after this process exits)."""
        if not self.training:
            with contextlib.suppress(RuntimeError):  # a peer already gone: rank 0's own error is what matters
                distributed.broadcast(None, self.world)


def _follow(world: distributed.World) -> None:
    """A rank other than 0: train each run rank 0 sends, until it sends None."""
    from clearsight.config import resolve
    from clearsight.runs import train_run

    while (job := distributed.broadcast(None, world)) is not None:
        # rank 0 met the same error and says it; it decides what comes next (its next job, or None)
        with contextlib.suppress(ClearsightError):
            train_run(resolve(job["config"]), Path(job["folder"]), resume=job["resume"], progress="none")


def _keys(suites: Sequence[Any]) -> list[str]:
    keys: list[str] = []
    for suite in suites:
        for key in [r.key for r in suite.rows] + ([_hygiene_key(suite)] if suite.hygiene is not None else []):
            if key not in keys:
                keys.append(key)
    return keys


def _hygiene_key(suite: Any) -> str:
    from clearsight.results import row_key
    return row_key("hygiene", suite.hygiene)


def _missing(suite: Any, present: set[str]) -> list[Any]:
    """The suite's rows not yet in results. A worst-case row computed alone equals the one computed beside its
    prefix rows (`clearsight.evaluation`), so a partly evaluated cell needs only the rows it lacks."""
    return [r for r in suite.rows if r.key not in present]


def _units(study: Study, cell: Cell) -> int:
    cfg = study.run_config(cell.method, cell.seed)
    return cfg.train.epochs + EVALUATE_UNITS


def _on_device(cfg: Any, device: str) -> Any:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))


def _who(owner: dict[str, Any]) -> str:
    return f"{owner.get('host', '?')} pid {owner.get('pid', '?')} (lock since {time.ctime(owner.get('since', 0))})"


def _sayer(bar: Any, lines: bool) -> Callable[[str], None]:
    def say(text: str) -> None:
        if hasattr(bar, "write"):
            bar.write(text, file=sys.stderr)
        elif lines:
            print(text, file=sys.stderr, flush=True)
    return say
