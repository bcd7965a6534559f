"""The roadmap as data: bases, the ordered steps, sweeps. Turns a request into named, resolved configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .config import Config, Merged, load_yaml, parse_override, validate
from .errors import RoadmapError

ABLATIONS = Path(__file__).resolve().parent.parent / "ablations"
PAPER_CSV = Path(__file__).resolve().parent.parent / "results" / "paper_reference.csv"


@dataclass(frozen=True)
class Step:
    name: str
    label: str
    about: str
    patch: Path


@dataclass(frozen=True)
class Variant:
    """One network of a request: its name (a step, `step@key=value` for a sweep value), label and config."""

    name: str
    label: str
    cfg: Config
    sources: tuple[str, ...] = field(default=(), compare=False)


def shown(path: Path) -> str:
    """A path as a user would type it: relative to the current directory when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _roadmap_file() -> dict:
    return load_yaml(ABLATIONS / "roadmap.yaml")


def bases() -> dict[str, str]:
    """Base name → label."""
    return {name: spec["label"] for name, spec in _roadmap_file()["bases"].items()}


def timm_models(base: str = "resnet50") -> dict[str, str]:
    """Step name → the timm model it is exactly (the two ends of a path)."""
    return dict(_roadmap_file()["bases"][base].get("timm", {}))


def steps(base: str = "resnet50") -> list[Step]:
    """The steps of a base's path, in order."""
    doc = _roadmap_file()
    if base not in doc["bases"]:
        raise RoadmapError(f"{shown(ABLATIONS / 'roadmap.yaml')}: unknown base '{base}' "
                           f"(bases: {', '.join(doc['bases'])})")
    out = []
    for entry in doc["bases"][base]["path"]:
        name, file = next(iter(entry.items())) if isinstance(entry, dict) else (entry, f"{entry}.yaml")
        meta = doc["steps"][name]
        out.append(Step(name, meta["label"], meta["about"], ABLATIONS / "steps" / file))
    return out


def _patch_file(patch: str | Path, base: str) -> Path:
    """A step name of the base's path, or a YAML file of the user's."""
    by_name = {s.name: s.patch for s in steps(base)}
    if str(patch) in by_name:
        return by_name[str(patch)]
    path = Path(patch)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise RoadmapError(f"--patch {patch}: no such file")
        return path
    raise RoadmapError(f"--patch {patch}: unknown step or patch file (steps: {', '.join(by_name)})")


def _upto(upto: str | None, base: str) -> list[Step]:
    path = steps(base)
    if upto is None or upto == base:
        return []
    names = [s.name for s in path]
    if upto not in names:
        raise RoadmapError(f"--upto {upto}: unknown step (steps of {base}: {base}, {', '.join(names)})")
    return path[: names.index(upto) + 1]


def resolve_config(upto: str | None = None, base: str = "resnet50", patches: Sequence[str | Path] = (),
                   overrides: Sequence[str] = ()) -> Config:
    """The config of `base` with the path's steps up to `upto`, then `patches` (step names or YAML files, in
    order), then `overrides` ("block.kernel_size=9")."""
    return _resolve(base, [s.patch for s in _upto(upto, base)] + [_patch_file(p, base) for p in patches],
                    overrides)[0]


def _resolve(base: str, files: Iterable[Path], overrides: Sequence[str]) -> tuple[Config, tuple[str, ...]]:
    base_file = ABLATIONS / "base" / f"{base}.yaml"
    if base not in bases():
        raise RoadmapError(f"--base {base}: unknown base (bases: {', '.join(bases())})")
    merged = Merged().merge(load_yaml(base_file), shown(base_file))
    sources = [shown(base_file)]
    for f in files:
        merged.merge(load_yaml(f), shown(f))
        sources.append(shown(f))
    for text in overrides:
        merged.merge(parse_override(text), f"--set {text}")
        sources.append(f"--set {text}")
    return validate(merged), tuple(sources)


def load_sweep(name: str) -> dict:
    path = ABLATIONS / "sweeps" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (ABLATIONS / "sweeps").glob("*.yaml")))
        raise RoadmapError(f"--sweep {name}: unknown sweep (sweeps: {known})")
    sweep = load_yaml(path)
    for key in ("step", "key", "values"):
        if key not in sweep:
            raise RoadmapError(f"{shown(path)}: {key}: missing (a sweep has step, key and values)")
    return sweep


def path_variants(upto: str | None = None, base: str = "resnet50", sweep: str | None = None,
                  overrides: Sequence[str] = ()) -> list[Variant]:
    """The base and every step of its path up to `upto` (all of it when None), each with the steps before it;
    with `sweep`, the sweep's values of its step beside it, in the order of the values."""
    path = steps(base)
    chosen = _upto(upto, base) if upto is not None else path
    variants = [Variant(base, bases()[base], *_resolve(base, [], overrides))]
    sw = load_sweep(sweep) if sweep else None
    for i, step in enumerate(chosen):
        files = [s.patch for s in path[: i + 1]]
        own = Variant(step.name, step.label, *_resolve(base, files, overrides))
        if sw is None or sw["step"] != step.name:
            variants.append(own)
            continue
        leaf = sw["key"].rsplit(".", 1)[-1]
        label = sw.get("label", leaf + " {value}")
        if _get(own.cfg, sw["key"]) not in sw["values"]:
            variants.append(own)
        for value in sw["values"]:
            cfg, sources = _resolve(base, files, [*overrides, f"{sw['key']}={value}"])
            if cfg == own.cfg:
                variants.append(own)
            elif all(cfg != v.cfg for v in variants):
                variants.append(Variant(f"{step.name}@{leaf}={value}", label.format(value=value), cfg, sources))
    return variants


def _get(cfg: Config, key: str):
    value = cfg.model_dump()
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def paper_reference():
    """The paper's numbers (results/paper_reference.csv) as a DataFrame indexed by (base, step)."""
    import pandas as pd

    return pd.read_csv(PAPER_CSV, comment="#").set_index(["base", "step"])
