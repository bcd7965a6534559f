"""The roadmap as data, and the requests on it: bases, steps, sweeps, references → named, resolved configs.

`request` is the front door: every command that takes networks (run, flops, bench, the doctor) asks it, with
explicit arguments. Each kind of request is one small function returning `Variant`s: `path_runs` (the path, a
sweep beside its step), `patched_run` (one network of chosen patches), `leave_one_out_runs` (the full path, and
the path without each step) and `reference_runs` (timm models); `select` keeps those `--steps` names.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from .config import ARCHITECTURE, Config, RoadmapNet, TimmNet
from .errors import RoadmapError
from .loading import Merged, load_yaml, merge_layers, parse_override
from .resources import ABLATIONS, shown


DEFAULT_BASE = "resnet50"  # the paper's Section 2 path; `--base` picks another of ablations/roadmap.yaml's


@dataclass(frozen=True)
class Step:
    name: str
    label: str
    about: str
    patch: Path
    group: str = ""


@dataclass(frozen=True)
class Variant:
    """One network of a request: its name (a step, `step@key=value` for a sweep value), label and config.
    `baseline` names the run its Δ top-1 is measured against (None: no Δ, e.g. a reference model)."""

    name: str
    label: str
    cfg: Config
    sources: tuple[str, ...] = field(default=(), compare=False)
    group: str = ""
    baseline: str | None = None
    # the file or flag that set a key, for the error lines of the checks the schema leaves to the plan
    source_of: Callable[[str], str] = field(default=lambda key: "config", compare=False, repr=False)


# ---------------------------------------------------------------------------------------------- the roadmap file

@dataclass(frozen=True)
class Roadmap:
    """A roadmap file: its bases, each with its path of steps, and the steps' labels. The built-in one is
    ablations/roadmap.yaml; a user's (`--roadmap FILE`) has the same layout, its step files in steps/ beside it
    (or beside it), its bases' configs in base/ beside it (or beside it), and may name the built-in steps and bases,
    whose files and labels it then takes from the built-in roadmap."""

    file: Path

    def doc(self) -> dict:
        return _read_roadmap(self.file)

    @property
    def folder(self) -> Path:
        return self.file.parent

    def _find(self, kind: str, file: str) -> Path | None:
        for where in (self.folder / kind / file, self.folder / file, ABLATIONS / kind / file):
            if where.is_file():
                return where
        return None

    def bases(self) -> dict[str, str]:
        """Base name → label."""
        return {name: spec["label"] for name, spec in self.doc()["bases"].items()}

    def default_base(self) -> str:
        return DEFAULT_BASE if DEFAULT_BASE in self.bases() else next(iter(self.bases()))

    def timm_models(self, base: str) -> dict[str, str]:
        """Step name → the timm model it is exactly (a path's ends)."""
        return dict(self.doc()["bases"][base].get("timm", {}))

    def check_base(self, base: str) -> None:
        if base not in self.bases():
            where = "" if self == BUILT_IN else f" of {shown(self.file)}"
            raise RoadmapError(f"--base {base}: unknown base{where} (bases: {', '.join(self.bases())})")

    def base_file(self, base: str) -> Path:
        self.check_base(base)
        found = self._find("base", f"{base}.yaml")
        if found is None:
            raise RoadmapError(f"{shown(self.file)}: bases.{base}: no base/{base}.yaml beside it, and no built-in "
                               f"base of that name")
        return found

    def steps(self, base: str) -> list[Step]:
        """The steps of a base's path, in order."""
        self.check_base(base)
        out = []
        for entry in self.doc()["bases"][base]["path"]:
            name, file = next(iter(entry.items())) if isinstance(entry, dict) else (entry, f"{entry}.yaml")
            meta = self.doc().get("steps", {}).get(name) or BUILT_IN.doc()["steps"].get(name)
            patch = self._find("steps", file)
            if meta is None or patch is None:
                raise RoadmapError(f"{shown(self.file)}: bases.{base}.path: {name}: "
                                   + ("not in its steps, nor a built-in step" if meta is None else
                                      f"no steps/{file} beside it, nor a built-in step's file"))
            out.append(Step(name, meta["label"], meta.get("about", ""), patch, meta.get("group", "")))
        return out

    def upto_steps(self, upto: str | None, base: str) -> list[Step]:
        """The path's steps up to and including `upto`; the whole path when None, none for the base itself."""
        path = self.steps(base)
        if upto is None:
            return path
        if upto == base:
            return []
        names = [s.name for s in path]
        if upto not in names:
            raise RoadmapError(f"--upto {upto}: unknown step (steps of {base}: {base}, {', '.join(names)})")
        return path[: names.index(upto) + 1]

    def patch_file(self, patch: str | Path, base: str) -> Path:
        """A step name of the base's path, or a YAML file of the user's."""
        by_name = {s.name: s.patch for s in self.steps(base)}
        if str(patch) in by_name:
            return by_name[str(patch)]
        path = Path(patch)
        if path.suffix in (".yaml", ".yml") or path.exists():
            if not path.is_file():
                raise RoadmapError(f"--patch {patch}: no such file")
            return path
        raise RoadmapError(f"--patch {patch}: unknown step or patch file (steps: {', '.join(by_name)})")


@functools.cache
def _read_roadmap(file: Path) -> dict:
    doc = load_yaml(file)
    bases_ = doc.get("bases")
    if not isinstance(bases_, dict) or not bases_:
        raise RoadmapError(f"{shown(file)}: bases: missing (a roadmap has bases, each with a label and a path)")
    for name, spec in bases_.items():
        for key in ("label", "path"):
            if not isinstance(spec, dict) or key not in spec:
                raise RoadmapError(f"{shown(file)}: bases.{name}.{key}: missing (a base has a label and a path)")
        if not isinstance(spec["path"], list):
            raise RoadmapError(f"{shown(file)}: bases.{name}.path: got {spec['path']!r}, expected a list of steps")
    steps_ = doc.get("steps", {})
    if not isinstance(steps_, dict):
        raise RoadmapError(f"{shown(file)}: steps: expected a mapping of step names to label, about and group")
    for name, meta in steps_.items():
        if not isinstance(meta, dict) or "label" not in meta:
            raise RoadmapError(f"{shown(file)}: steps.{name}.label: missing (a step has a label, and may have about "
                               f"and group)")
    return doc


def load_roadmap(file: str | Path | None) -> Roadmap:
    """The built-in roadmap, or the user's file (`--roadmap FILE`), read and checked here: one line if it is not."""
    if file is None:
        return BUILT_IN
    path = Path(file).resolve()
    if not path.is_file():
        raise RoadmapError(f"--roadmap {file}: no such file")
    roadmap = Roadmap(path)
    roadmap.doc()
    for base in roadmap.bases():
        roadmap.base_file(base), roadmap.steps(base)
    return roadmap


BUILT_IN = Roadmap(ABLATIONS / "roadmap.yaml")
# the built-in roadmap's, as functions (most code asks about the paper's roadmap)
bases, timm_models, check_base = BUILT_IN.bases, BUILT_IN.timm_models, BUILT_IN.check_base


def steps(base: str = DEFAULT_BASE) -> list[Step]:
    return BUILT_IN.steps(base)


def upto_steps(upto: str | None, base: str) -> list[Step]:
    return BUILT_IN.upto_steps(upto, base)


def patch_file(patch: str | Path, base: str) -> Path:
    return BUILT_IN.patch_file(patch, base)


def recipes() -> list[str]:
    """The recipes under ablations/recipes/, by name."""
    return sorted(p.stem for p in (ABLATIONS / "recipes").glob("*.yaml"))


def recipe_files(recipe: str | Path) -> list[Path]:
    """A recipe's file and the files it inherits from, the most general first."""
    path, named = Path(recipe), ABLATIONS / "recipes" / f"{recipe}.yaml"
    if not path.suffix and named.is_file():
        path = named
    elif not path.is_file():
        raise RoadmapError(f"--recipe {recipe}: no such recipe or file (recipes: {', '.join(recipes())})")
    chain = [path]
    while "inherit" in (doc := load_yaml(chain[0])):
        parent = doc["inherit"]
        parent_path = ABLATIONS / "recipes" / f"{parent}.yaml"
        if not isinstance(parent, str) or not parent_path.is_file() or parent_path in chain:
            raise RoadmapError(f"{shown(chain[0])}: inherit: got {parent!r}, expected the name of another recipe")
        chain.insert(0, parent_path)
    return chain


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


def references(base: str | None = None) -> dict[str, dict]:
    """Reference models (ablations/references.yaml) by timm name; with `base`, those listed for that roadmap."""
    refs = load_yaml(ABLATIONS / "references.yaml")
    return {name: spec for name, spec in refs.items() if base is None or base in spec.get("bases", [])}


# ------------------------------------------------------------------------------------------------ resolving

@dataclass(frozen=True)
class Context:
    """What every network of one request shares: the base, the recipe, `--data` and `--set`."""

    base: str = DEFAULT_BASE
    recipe: str | Path | None = None
    data: str | None = None
    overrides: tuple[str, ...] = ()
    roadmap: Roadmap = BUILT_IN  # or a user's (--roadmap FILE)

    def recipe_layers(self, skip: Sequence[str] = ()) -> list[tuple[str, dict]]:
        """The recipe's files as (source, mapping) layers, the most general first, without the `skip` sections."""
        files = recipe_files(self.recipe) if self.recipe else []
        docs = [load_yaml(f) for f in files]
        for section in ("train", "data") if files else ():
            if not any(section in doc for doc in docs):
                raise RoadmapError(f"{shown(files[-1])}: {section}: missing (a recipe sets train and data, or "
                                   f"inherits them: inherit: paper_in1k)")
        return [(shown(f), {k: v for k, v in doc.items() if k not in ("inherit", *skip)}) for f, doc in zip(files, docs)]

    def command_line(self, skip: Sequence[str]) -> list[tuple[str, dict]]:
        """--data and --set as layers. A `--set` of a section this kind of network does not have (`timm.` for the
        roadmap's, the architecture's for a timm model) is left to the networks that have it."""
        layers = [(f"--data {self.data}", {"data": {"source": self.data}})] if self.data else []
        for text in self.overrides:
            layer = parse_override(text)
            if next(iter(layer)) not in skip:
                layers.append((f"--set {text}", layer))
        return layers

    def config(self, files: Sequence[Path] = ()) -> tuple[Config, tuple[str, ...], Callable[[str], str]]:
        """The base's config, the recipe, these patch files, then the command line; the layers' sources, and which
        of them set each key."""
        base_file = self.roadmap.base_file(self.base)
        layers = [(shown(base_file), load_yaml(base_file)), *self.recipe_layers(),
                  *[(shown(f), load_yaml(f)) for f in files], *self.command_line(skip=("timm",))]
        cfg, merged = merge_layers(layers)
        return cfg, tuple(source for source, _ in layers), merged.source_of

    def variant(self, name: str, label: str, files: Sequence[Path], group: str, baseline: str | None) -> Variant:
        cfg, sources, source_of = self.config(files)
        return Variant(name, label, cfg, sources, group, baseline, source_of)


def resolve_config(upto: str | None = None, base: str = DEFAULT_BASE, patches: Sequence[str | Path] = (),
                   overrides: Sequence[str] = (), recipe: str | Path | None = None,
                   data: str | None = None, roadmap: Roadmap = BUILT_IN) -> Config:
    """`resolve_with_sources`'s config alone."""
    return resolve_with_sources(upto, base, patches, overrides, recipe, data, roadmap)[0]


def resolve_with_sources(upto: str | None = None, base: str = DEFAULT_BASE, patches: Sequence[str | Path] = (),
                         overrides: Sequence[str] = (), recipe: str | Path | None = None, data: str | None = None,
                         roadmap: Roadmap = BUILT_IN) -> tuple[Config, Callable[[str], str]]:
    """The config of `base` with the path's steps up to `upto` (none when None), then `patches` (step names or
    YAML files, in order), then `overrides` ("block.kernel_size=9"). With a `recipe` (a name under
    ablations/recipes/ or a file) the config also says how to train: its `train` and `data` sections, and the scale
    it trains at; `data` is a `--data` spec for `data.source`. Also which file or flag set each key."""
    files = [s.patch for s in (roadmap.upto_steps(upto, base) if upto else [])]
    files += [roadmap.patch_file(p, base) for p in patches]
    cfg, _, source_of = Context(base, recipe, data, tuple(overrides), roadmap).config(files)
    return cfg, source_of


# ------------------------------------------------------------------------------------------ the request modes

def request(context: Context, *, upto: str | None = None, patches: Sequence[str | Path] = (),
            leave_one_out: bool = False, sweep: str | None = None, steps: Sequence[str] = (),
            references: Sequence[str] = ()) -> list[Variant]:
    """The networks a request asks for, refusing what cannot go together: one patched network (`patches`), or the
    path up to `upto` without each step in turn (`leave_one_out`), or the path up to `upto` (all of it when None);
    a sweep's values beside its step; `steps` picks among them by name; then the timm `references` (alone, when
    neither `upto`, `steps` nor `sweep` is given). Their `train.pretrained: true` is left for `with_hub_weights`,
    once the pre-flight has checked the configs."""
    if patches:
        for flag, given in (("--leave-one-out", leave_one_out), ("--sweep", sweep), ("--steps", steps)):
            if given:
                raise RoadmapError(f"--patch makes one network; it does not combine with {flag}")
        variants = patched_run(context, patches, upto)
    elif leave_one_out:
        variants = select(leave_one_out_runs(context, upto, sweep), steps)
    elif references and not (upto or steps or sweep):
        variants = []
    else:
        variants = select(path_runs(context, upto, sweep), steps)
    return variants + reference_runs(context, references)


def path_runs(context: Context, upto: str | None = None, sweep: str | None = None) -> list[Variant]:
    """The base and every step of its path up to `upto` (all of it when None), each with the steps before it and
    its Δ against the step before; with `sweep`, the sweep's values of its step beside it, each measured against
    the step before the swept one."""
    chosen = context.roadmap.upto_steps(upto, context.base)
    sw = _sweep_on(chosen, sweep, upto)
    variants = [context.variant(context.base, context.roadmap.bases()[context.base], [], "baseline", None)]
    previous = context.base
    for i, step in enumerate(chosen):
        files = [s.patch for s in chosen[: i + 1]]
        own = context.variant(step.name, step.label, files, step.group, previous)
        if sw is None or sw["step"] != step.name:
            variants.append(own)
        else:  # the sweep's values in their order, the step itself among them, no network twice
            if _get(own.cfg, sw["key"]) not in sw["values"]:
                variants.append(own)
            label = sw.get("label", _leaf(sw) + " {value}")
            for value in sw["values"]:
                v = _swept(context, sw, value, step.name, label.format(value=value), files, step.group, previous)
                _add_new(variants, own if v.cfg == own.cfg else v)
        previous = step.name
    return variants


def _sweep_on(chosen: list[Step], sweep: str | None, upto: str | None) -> dict | None:
    """The sweep, whose step must be on the chosen path: one that is not would be dropped without a word."""
    if sweep is None:
        return None
    sw = load_sweep(sweep)
    if sw["step"] not in {s.name for s in chosen}:
        raise RoadmapError(f"--sweep {sweep}: its step {sw['step']} is not on the path up to {upto} "
                           f"(--upto {sw['step']} or later reaches it)")
    return sw


def _leaf(sw: dict) -> str:
    return sw["key"].rsplit(".", 1)[-1]


def _swept(context: Context, sw: dict, value, name: str, label: str, files: list[Path], group: str,
           baseline: str) -> Variant:
    """The network of `files` with the sweep's key set to `value`, named `name@key=value`."""
    with_value = replace(context, overrides=(*context.overrides, f"{sw['key']}={value}"))
    return with_value.variant(f"{name}@{_leaf(sw)}={value}", label, files, group, baseline)


def _add_new(variants: list[Variant], v: Variant) -> None:
    """Add `v` unless the same network is there already (a sweep value can give a network of the path)."""
    if all(v.cfg != other.cfg for other in variants):
        variants.append(v)


def _get(cfg: Config, key: str):
    value = cfg.model_dump()
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def patched_run(context: Context, patches: Sequence[str | Path], upto: str | None = None) -> list[Variant]:
    """One network: the base, the path up to `upto` (none when None), then the patches. Its name says where it
    starts ("resnet50+gelu+layernorm", "widen+gelu"), so that it never takes the folder of a path's step."""
    files = [s.patch for s in (context.roadmap.upto_steps(upto, context.base) if upto else [])]
    files += [context.roadmap.patch_file(p, context.base) for p in patches]
    name = "+".join([upto or context.base] + [Path(str(p)).stem for p in patches])
    return [context.variant(name, name, files, "patched", None)]


def leave_one_out_runs(context: Context, upto: str | None = None, sweep: str | None = None) -> list[Variant]:
    """The full path up to `upto` (all of it when None), then for each of its steps the path without it
    ("no_gelu"), each measured against the full path. With `sweep`, then the sweep's values of the full network
    (`<full>@kernel_size=5`) where the swept step is on the path, without repeating a network already there."""
    chosen = context.roadmap.upto_steps(upto, context.base)
    if not chosen:
        raise RoadmapError(f"--leave-one-out: --upto {upto} leaves no step to leave out")
    full = chosen[-1]
    variants = [context.variant(full.name, full.label, [s.patch for s in chosen], full.group, None)]
    for dropped in chosen:
        files = [s.patch for s in chosen if s is not dropped]
        variants.append(context.variant(f"no_{dropped.name}", f"– {dropped.label}", files, "leave one out",
                                       full.name))
    sw = _sweep_on(chosen, sweep, upto)
    if sw is not None:
        for value in sw["values"]:
            _add_new(variants, _swept(context, sw, value, full.name, f"{full.label}, {_leaf(sw)} {value}",
                                      [s.patch for s in chosen], "sweep", full.name))
    return variants


def reference_runs(context: Context, names: Sequence[str]) -> list[Variant]:
    """timm models with the request's recipe. The recipe's settings of the roadmap's network (its scale, its
    drop path) do not apply to them; each model's own drop path comes from references.yaml."""
    import timm

    known, out = references(), []
    for name in dict.fromkeys(names):
        if not timm.is_model(name):
            raise RoadmapError(f"--references {name}: not a timm model name")
        spec = known.get(name, {})
        entry = {"timm": {"name": name, "drop_path": spec.get("drop_path", 0.0)}}
        layers = [*context.recipe_layers(skip=ARCHITECTURE), (shown(ABLATIONS / "references.yaml"), entry),
                  *context.command_line(skip=ARCHITECTURE)]
        cfg, merged = merge_layers(layers)
        if cfg.data is not None:
            _check_input_size(cfg, merged)
        out.append(Variant(name, spec.get("label", name), cfg, tuple(s for s, _ in layers), "reference", None,
                           merged.source_of))
    return out


def select(variants: list[Variant], only: Sequence[str]) -> list[Variant]:
    """Only the named runs (`--steps a,b`), in the request's order."""
    if not only:
        return variants
    known = [v.name for v in variants]
    unknown = [n for n in only if n not in known]
    if unknown:
        raise RoadmapError(f"--steps {','.join(only)}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return [v for v in variants if v.name in only]


def _check_input_size(cfg: Config, merged: Merged) -> None:
    """A model made for one input size (ViT, Swin) gets that size, unless timm is asked to adapt it."""
    from .model.network import fixed_input_size

    size = fixed_input_size(cfg.timm.name)
    if size is None:
        return
    asked = cfg.timm.img_size or size
    if cfg.data.img_size != asked:
        raise RoadmapError(
            f"{merged.source_of('data.img_size')}: data.img_size: {cfg.timm.name} needs {asked}×{asked} input, "
            f"got {cfg.data.img_size} (use --set data.img_size={asked}, or --set timm.img_size={cfg.data.img_size} "
            f"to have timm adapt the model)")


# ------------------------------------------------------------------------------------------ pretrained weights

@functools.cache
def _ends() -> list[tuple[dict, str]]:
    """(architecture sections, timm name) of every path's ends."""
    out = []
    for base in bases():
        for step, name in timm_models(base).items():
            cfg = resolve_config(None if step == base else step, base)
            out.append((_structure(cfg), name))
    return out


def _structure(cfg: Config) -> dict:
    """The architecture sections that decide which weights fit: all of them but the regularizers a recipe sets
    (drop path, dropout), which change how a network trains, not what it is."""
    arch = {s: getattr(cfg, s) for s in ARCHITECTURE}
    arch["block"] = arch["block"].model_copy(update={"drop_path": 0.0})
    arch["head"] = arch["head"].model_copy(update={"dropout": 0.0})
    return arch


@functools.singledispatch
def timm_twin(cfg: Config) -> str | None:
    """The timm model whose network this config builds (a path's end, or the timm model it names), if any."""
    raise TypeError(f"not a config: {type(cfg).__name__}")


@timm_twin.register
def _(cfg: RoadmapNet) -> str | None:
    arch = _structure(cfg)
    return next((name for end, name in _ends() if end == arch), None)


@timm_twin.register
def _(cfg: TimmNet) -> str | None:
    return cfg.timm.name


def with_hub_weights(v: Variant) -> Variant:
    """`train.pretrained: true` becomes `timm:NAME`, the hub weights of the timm model this network is, so that
    the job never needs the roadmap to know where its weights come from. After `--steps` has picked: a path's
    other networks have no hub weights, and need none unless they are asked for."""
    cfg = v.cfg
    if cfg.train is None or cfg.train.pretrained is not True:
        return v
    twin = timm_twin(cfg)
    if twin is None:
        raise RoadmapError(f"train.pretrained: true asks for timm's hub weights, but {v.name} is not a timm model "
                           f"(a path's ends and the references are); give a checkpoint file (--pretrained PATH)")
    train = cfg.train.model_copy(update={"pretrained": f"timm:{twin}"})
    return replace(v, cfg=cfg.model_copy(update={"train": train}))
