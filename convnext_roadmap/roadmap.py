"""The roadmap as data: bases, the ordered steps, sweeps. Turns a request into named, resolved configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .config import ARCHITECTURE, Config, Merged, load_yaml, parse_override, validate
from .errors import RoadmapError

ABLATIONS = Path(__file__).resolve().parent.parent / "ablations"
PAPER_CSV = Path(__file__).resolve().parent.parent / "results" / "paper_reference.csv"


@dataclass(frozen=True)
class Step:
    name: str
    label: str
    about: str
    patch: Path
    group: str = ""


@dataclass(frozen=True)
class Variant:
    """One network of a request: its name (a step, `step@key=value` for a sweep value), label and config."""

    name: str
    label: str
    cfg: Config
    sources: tuple[str, ...] = field(default=(), compare=False)
    group: str = ""


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
        out.append(Step(name, meta["label"], meta["about"], ABLATIONS / "steps" / file, meta.get("group", "")))
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
                   overrides: Sequence[str] = (), recipe: str | Path | None = None,
                   data: str | None = None) -> Config:
    """The config of `base` with the path's steps up to `upto`, then `patches` (step names or YAML files, in
    order), then `overrides` ("block.kernel_size=9"). With a `recipe` (a name under ablations/recipes/ or a file)
    the config also says how to train: its `train` and `data` sections, and the scale it trains at; `data` is a
    `--data` spec for `data.source`."""
    files = [s.patch for s in _upto(upto, base)] + [_patch_file(p, base) for p in patches]
    return _resolve(base, files, overrides, recipe, data)[0]


def recipe_files(recipe: str | Path) -> list[Path]:
    """A recipe's file and the files it inherits from, the most general first."""
    path = Path(recipe)
    if not path.suffix:
        path = ABLATIONS / "recipes" / f"{recipe}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in (ABLATIONS / "recipes").glob("*.yaml")))
            raise RoadmapError(f"--recipe {recipe}: unknown recipe (recipes: {known})")
    chain = [path]
    while "inherit" in (doc := load_yaml(chain[0])):
        parent = doc["inherit"]
        parent_path = ABLATIONS / "recipes" / f"{parent}.yaml"
        if not isinstance(parent, str) or not parent_path.is_file() or parent_path in chain:
            raise RoadmapError(f"{shown(chain[0])}: inherit: got {parent!r}, expected the name of another recipe")
        chain.insert(0, parent_path)
    return chain


def _resolve(base: str, files: Iterable[Path], overrides: Sequence[str], recipe: str | Path | None = None,
             data: str | None = None) -> tuple[Config, tuple[str, ...]]:
    if base not in bases():
        raise RoadmapError(f"--base {base}: unknown base (bases: {', '.join(bases())})")
    base_file = ABLATIONS / "base" / f"{base}.yaml"
    layers = [(shown(base_file), load_yaml(base_file)), *_recipe_layers(recipe),
              *[(shown(f), load_yaml(f)) for f in files], *_command_line(data, overrides, skip=("timm",))]
    cfg, _ = _merge(layers)
    return cfg, tuple(source for source, _ in layers)


def _recipe_layers(recipe: str | Path | None, skip: Sequence[str] = ()) -> list[tuple[str, dict]]:
    return [(shown(f), {k: v for k, v in load_yaml(f).items() if k not in ("inherit", *skip)})
            for f in (recipe_files(recipe) if recipe else [])]


def _command_line(data: str | None, overrides: Sequence[str], skip: Sequence[str]) -> list[tuple[str, dict]]:
    """--data and --set as layers. Overrides of sections this kind of network does not have (`timm.` for the
    roadmap's, the architecture's for a timm model) are left to the networks that have them."""
    layers = [(f"--data {data}", {"data": {"source": data}})] if data else []
    for text in overrides:
        layer = parse_override(text)
        if next(iter(layer)) not in skip:
            layers.append((f"--set {text}", layer))
    return layers


def _merge(layers: list[tuple[str, dict]]) -> tuple[Config, Merged]:
    merged = Merged()
    for source, doc in layers:
        merged.merge(doc, source)
    return validate(merged), merged


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
                  overrides: Sequence[str] = (), recipe: str | Path | None = None,
                  data: str | None = None) -> list[Variant]:
    """The base and every step of its path up to `upto` (all of it when None), each with the steps before it;
    with `sweep`, the sweep's values of its step beside it, in the order of the values."""
    path = steps(base)
    chosen = _upto(upto, base) if upto is not None else path
    variants = [Variant(base, bases()[base], *_resolve(base, [], overrides, recipe, data), group="baseline")]
    sw = load_sweep(sweep) if sweep else None
    for i, step in enumerate(chosen):
        files = [s.patch for s in path[: i + 1]]
        own = Variant(step.name, step.label, *_resolve(base, files, overrides, recipe, data), group=step.group)
        if sw is None or sw["step"] != step.name:
            variants.append(own)
            continue
        leaf = sw["key"].rsplit(".", 1)[-1]
        label = sw.get("label", leaf + " {value}")
        if _get(own.cfg, sw["key"]) not in sw["values"]:
            variants.append(own)
        for value in sw["values"]:
            cfg, sources = _resolve(base, files, [*overrides, f"{sw['key']}={value}"], recipe, data)
            if cfg == own.cfg:
                variants.append(own)
            elif all(cfg != v.cfg for v in variants):
                variants.append(Variant(f"{step.name}@{leaf}={value}", label.format(value=value), cfg, sources,
                                        step.group))
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


def request(upto: str | None = None, base: str = "resnet50", only: Sequence[str] = (),
            patches: Sequence[str | Path] = (), leave_one_out: bool = False, sweep: str | None = None,
            overrides: Sequence[str] = (), recipe: str | Path | None = None, data: str | None = None) -> list[Variant]:
    """The networks one command asks for:
    - the path up to `upto` (all of it by default), the sweep's variants beside their step, `only` those named;
    - with `patches`: the one network of the base, the path up to `upto`, and the patches ("gelu+layernorm");
    - with `leave_one_out`: for each step up to `upto`, the path without it ("no_gelu"), after the full path."""
    if patches:
        cfg, sources = _resolve(base, [s.patch for s in _upto(upto, base)] + [_patch_file(p, base) for p in patches],
                                overrides, recipe, data)
        name = "+".join(([upto] if upto else []) + [Path(str(p)).stem for p in patches])
        return [Variant(name, name, cfg, sources, "patched")]
    variants = path_variants(upto, base, sweep, overrides, recipe, data)
    if leave_one_out:
        chosen = _upto(upto, base) if upto else steps(base)
        full = variants[-1]
        variants = [full]
        for dropped in chosen:
            files = [s.patch for s in chosen if s is not dropped]
            variants.append(Variant(f"no_{dropped.name}", f"– {dropped.label}",
                                    *_resolve(base, files, overrides, recipe, data), group="leave one out"))
    if only:
        known = [v.name for v in variants]
        unknown = [n for n in only if n not in known]
        if unknown:
            raise RoadmapError(f"--steps {','.join(only)}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
        variants = [v for v in variants if v.name in only]
    return variants


def references(base: str | None = None) -> dict[str, dict]:
    """Reference models (ablations/references.yaml) by timm name; with `base`, those listed for that roadmap."""
    refs = load_yaml(ABLATIONS / "references.yaml")
    return {name: spec for name, spec in refs.items() if base is None or base in spec.get("bases", [])}


def reference_variant(name: str, recipe: str | Path | None, overrides: Sequence[str] = (),
                      data: str | None = None) -> Variant:
    """A timm model with the roadmap's recipe. The recipe's settings of the roadmap's network (its scale, its
    drop path) do not apply to it; the model's own drop path comes from references.yaml."""
    import timm

    spec = references().get(name, {})
    if not timm.is_model(name):
        raise RoadmapError(f"--references {name}: not a timm model name")
    entry = {"timm": {"name": name, "drop_path": spec.get("drop_path", 0.0)}}
    layers = [*_recipe_layers(recipe, skip=ARCHITECTURE), (shown(ABLATIONS / "references.yaml"), entry),
              *_command_line(data, overrides, skip=ARCHITECTURE)]
    cfg, merged = _merge(layers)
    if cfg.data is not None:
        check_input_size(cfg, merged)
    sources = [source for source, _ in layers]
    return Variant(name, spec.get("label", name), cfg, tuple(sources), "reference")


def check_input_size(cfg: Config, merged: Merged) -> None:
    """A model made for one input size (ViT, Swin) gets that size, unless timm is asked to adapt it."""
    import timm

    need = timm.models.get_pretrained_cfg(cfg.timm.name)
    if need is None or not need.fixed_input_size:
        return
    size = need.input_size[-1]
    asked = cfg.timm.img_size or size
    if cfg.data.img_size != asked:
        raise RoadmapError(
            f"{merged.source_of('data.img_size')}: data.img_size: {cfg.timm.name} needs {asked}×{asked} input, "
            f"got {cfg.data.img_size} (use --set data.img_size={asked}, or --set timm.img_size={cfg.data.img_size} "
            f"to have timm adapt the model)")


def timm_twin(cfg: Config) -> str | None:
    """The timm model whose network this config builds exactly (a path's end), if any."""
    arch = {s: getattr(cfg, s) for s in ARCHITECTURE}
    for base in bases():
        for step, name in timm_models(base).items():
            other = resolve_config(None if step == base else step, base)
            if arch == {s: getattr(other, s) for s in ARCHITECTURE}:
                return name
    return None
