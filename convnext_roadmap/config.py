"""The config schema, YAML loading, deep-merge of patches, `--set` overrides and validation.

A config is the merge of mappings in order: a base, the patches, the overrides. A patch names only the fields it
changes; lists are replaced whole. Every leaf remembers the source that set it last, so that a validation error
names the file (or the `--set`) and the key.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import RoadmapError

Norm = Literal["batchnorm", "layernorm", "none"]
Act = Literal["relu", "gelu", "none"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Stem(Section):
    """conv kernel_size×kernel_size / stride → norm → act → optional 3×3/2 max-pool."""

    kernel_size: int
    stride: int
    width: int
    norm: Norm
    act: Act
    pool: Literal["max", "none"]


class Stages(Section):
    """Blocks per stage and each stage's width; the multipliers scale both for small proxy runs."""

    depths: list[int]
    widths: list[int]
    depth_mult: float = 1.0
    width_mult: float = 1.0

    def scaled_depths(self) -> list[int]:
        return [max(1, round(d * self.depth_mult)) for d in self.depths]

    def scaled_widths(self) -> list[int]:
        return [scale_width(w, self.width_mult) for w in self.widths]


def scale_width(width: int, mult: float, divisor: int = 8) -> int:
    """Scale a width and round it to a multiple of `divisor` (unchanged when mult is 1)."""
    if mult == 1.0:
        return width
    return max(divisor, int(round(width * mult / divisor)) * divisor)


# The three convs of each block layout as (is it the k×k conv, output width), given the block's input width c,
# its stage width w and the expansion e. The k×k conv is the one that is grouped and carries the stride.
LAYOUTS = {
    "bottleneck": lambda c, w, e: [(False, w), (True, w), (False, w * e)],  # ResNet: 1×1 reduce, k×k, 1×1 expand
    "inverted": lambda c, w, e: [(False, w * e), (True, w * e), (False, w)],  # MobileNetV2: 1×1 expand, k×k, 1×1 reduce
    "dw_first": lambda c, w, e: [(True, c), (False, w * e), (False, w)],  # ConvNeXt: k×k, 1×1 expand, 1×1 reduce
}
Position = Literal["conv1", "conv2", "conv3"]


class Block(Section):
    """One residual block. conv1..conv3 are the layout's three convs in the order they run."""

    layout: Literal["bottleneck", "inverted", "dw_first"]
    kernel_size: int
    groups: Union[int, Literal["depthwise"]]  # of the k×k conv; depthwise: as many groups as channels
    expansion: int
    act: Act
    act_at: list[Union[Position, Literal["output"]]]  # after which convs, and/or after the residual add
    norm: Norm
    norm_at: list[Position]
    layer_scale: Union[float, None] = None  # initial value of a learnable per-channel scale; None: no scale
    drop_path: float = 0.0  # stochastic depth of the last block; rises linearly from 0 over the blocks


class Downsample(Section):
    """in_block: the first block of stages 2-4 strides its k×k conv and projects its shortcut (1×1/2 conv + norm);
    separate: a norm and a kernel_size×kernel_size/2 conv between stages, and blocks that never stride."""

    type: Literal["in_block", "separate"]
    norm: Norm
    kernel_size: int


class Head(Section):
    """Global average pooling → norm → dropout → linear classifier."""

    norm: Norm
    dropout: float = 0.0


class Train(Section):
    """How a network is trained; set by a recipe (ablations/recipes/)."""

    epochs: int
    batch_size: int  # per process; the effective batch is batch_size × processes
    lr: float  # at base_batch_size, scaled linearly to the effective batch
    base_batch_size: int
    min_lr: float
    warmup_epochs: int
    warmup_lr: float
    opt: str  # a timm optimizer name
    betas: list[float]
    weight_decay: float  # none on norms and biases
    clip_grad: Union[float, None]
    label_smoothing: float
    mixup: float
    cutmix: float
    ema: bool
    ema_decay: float
    amp: bool  # bf16 autocast, on CUDA
    channels_last: bool  # on CUDA
    compile: bool
    seed: int  # the first seed; --seeds N runs seed, seed+1, …
    pretrained: Union[bool, str] = False  # true: timm's hub weights; a path: a local .safetensors/.pth file


class Data(Section):
    """What a network is trained on and how images are augmented; set by a recipe, `--data` sets `source`."""

    source: str  # synthetic | imagefolder:PATH | csv:PATH
    img_size: int
    crop_scale: list[float]  # RandomResizedCrop's area range
    crop_pct: float  # evaluation: resize to img_size / crop_pct, centre crop img_size
    auto_augment: Union[str, None]  # timm's RandAugment spec, e.g. rand-m9-mstd0.5-inc1
    random_erasing: float
    mean: list[float]
    std: list[float]
    workers: int


class TimmModel(Section):
    """A timm model trained beside the roadmap (a reference), in place of the roadmap's network."""

    name: str
    drop_path: float = 0.0
    img_size: Union[int, None] = None  # have timm adapt a fixed-input-size model (ViT, Swin) to this size


ARCHITECTURE = ("stem", "stages", "block", "downsample", "head")


class Config(Section):
    """The roadmap's network (stem … head), or a timm model (timm); with a recipe, also train and data."""

    stem: Union[Stem, None] = None
    stages: Union[Stages, None] = None
    block: Union[Block, None] = None
    downsample: Union[Downsample, None] = None
    head: Union[Head, None] = None
    timm: Union[TimmModel, None] = None
    train: Union[Train, None] = None  # None: architecture only, no recipe applied
    data: Union[Data, None] = None


class ClusterProfile(Section):
    """Where and how SLURM jobs run (slurm/*.yaml); see slurm/default.yaml for each field."""

    partition: Union[str, None] = None
    account: Union[str, None] = None
    qos: Union[str, None] = None
    constraint: Union[str, None] = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: Union[int, None] = None
    cpus_per_task: int = 4
    mem_gb: Union[int, None] = 8
    timeout_min: int = 60
    array_parallelism: int = 16
    max_requeues: int = 3
    additional_parameters: dict[str, Any] = {}

    def tasks(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)


# ----------------------------------------------------------------------------------------------- YAML and merging

class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `4e-3` as a string; accept exponent floats without a dot, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(path: Path) -> dict:
    """Read a YAML mapping; an empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise RoadmapError(f"{path}: no such file")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise RoadmapError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RoadmapError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> dict:
    """`block.kernel_size=9` → {"block": {"kernel_size": 9}}; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise RoadmapError(f"--set {text}: expected KEY=VALUE with a dotted key, e.g. block.kernel_size=9")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else raw
    except yaml.YAMLError:
        raise RoadmapError(f"--set {text}: the value is not valid YAML") from None
    tree: Any = value
    for part in reversed(key.strip().split(".")):
        tree = {part: tree}
    return tree


class Merged:
    """A mapping built by deep-merging layers, remembering which source set each leaf."""

    def __init__(self) -> None:
        self.data: dict = {}
        self.origin: dict[str, str] = {}

    def merge(self, layer: dict, source: str) -> "Merged":
        self._merge(self.data, layer, source, prefix="")
        return self

    def _merge(self, into: dict, layer: dict, source: str, prefix: str) -> None:
        for key, value in layer.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                self._merge(into[key], value, source, dotted + ".")
            else:
                into[key] = copy.deepcopy(value)
                self.origin = {k: v for k, v in self.origin.items() if not k.startswith(dotted + ".")}
                self.origin[dotted] = source

    def source_of(self, key: str) -> str:
        """The source that set `key`, or the nearest enclosing key; the first source when none did."""
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            found = self.origin.get(".".join(parts[:n]))
            if found:
                return found
        return next(iter(self.origin.values()), "config")


# ----------------------------------------------------------------------------------------------------- validation

def validate(merged: Merged, schema: type[BaseModel] = Config) -> BaseModel:
    """Check types and keys (pydantic) and then ranges; the first problem becomes one RoadmapError line."""
    try:
        cfg = schema.model_validate(merged.data)
    except ValidationError as e:
        raise RoadmapError(_describe(e.errors()[0], merged, schema)) from None
    for key, problem in (check_ranges(cfg) if schema is Config else check_profile(cfg)):
        raise RoadmapError(f"{merged.source_of(key)}: {key}: {problem}")
    return cfg


def _describe(err: dict, merged: Merged, schema: type[BaseModel]) -> str:
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    # pydantic reports a failed Union/Literal member in the loc (e.g. "literal['depthwise']"); keep the field path
    loc = [p for p in loc if not re.match(r"^(int|float|str|bool|none|literal\[.*\]|list\[.*\])$", p)]
    key = ".".join(loc)
    source = merged.source_of(key)
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _section(schema, loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent else "?"
        where = ".".join(loc[:-1]) or "the top level"
        return f"{source}: {key}: unknown key ({where} takes: {allowed})"
    if kind == "missing":
        return f"{source}: {key}: missing (the base config must set every field)"
    field = _field(schema, loc)
    expected = _type_words(field.annotation) if field is not None else err["msg"]
    return f"{source}: {key}: got {err.get('input')!r}, expected {expected}"


def _section(schema: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    for part in path:
        field = schema.model_fields.get(part)
        models = [a for a in (field.annotation, *get_args(field.annotation)) if _is_model(a)] if field else []
        if not models:
            return None
        schema = models[0]
    return schema


def _is_model(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field(schema: type[BaseModel], path: list[str]):
    parent = _section(schema, path[:-1])
    return parent.model_fields.get(path[-1]) if parent and path else None


def _type_words(annotation) -> str:
    """A type annotation in words: `Union[int, Literal["depthwise"]]` → "an integer or 'depthwise'"."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is Union:
        return " or ".join(_type_words(a) for a in args)
    if origin is list:
        return f"a list, each {_type_words(args[0])}" if args else "a list"
    if _is_model(annotation):
        return "a mapping of " + ", ".join(annotation.model_fields)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(annotation, str(annotation))


def check_profile(p: ClusterProfile):
    for key in ("nodes", "cpus_per_task", "timeout_min", "array_parallelism"):
        if getattr(p, key) < 1:
            yield key, f"got {getattr(p, key)}, expected ≥ 1"
    if p.gpus_per_node < 0 or p.max_requeues < 0 or (p.tasks_per_node is not None and p.tasks_per_node < 1):
        yield "gpus_per_node", "expected gpus_per_node ≥ 0, max_requeues ≥ 0 and tasks_per_node ≥ 1"


def check_ranges(cfg: Config):
    """Yield (key, problem) for values of the right type but out of range."""
    if cfg.train is not None:
        yield from _check_train(cfg.train)
    if cfg.data is not None:
        yield from _check_data(cfg.data)
    if cfg.timm is not None:
        if not 0 <= cfg.timm.drop_path < 1:
            yield "timm.drop_path", f"got {cfg.timm.drop_path}, expected 0 ≤ drop_path < 1"
        return
    missing = [s for s in ARCHITECTURE if getattr(cfg, s) is None]
    if missing:
        yield missing[0], "missing (a config describes the roadmap's network in full, or names a timm model)"
        return
    yield from _check_architecture(cfg)


def _check_architecture(cfg: Config):
    if cfg.stem.kernel_size < 1 or cfg.stem.stride < 1 or cfg.stem.width < 1:
        yield "stem", "expected kernel_size, stride and width ≥ 1"
    st = cfg.stages
    if not st.depths or any(d < 1 for d in st.depths):
        yield "stages.depths", f"got {st.depths}, expected a non-empty list of positive block counts"
    if len(st.widths) != len(st.depths) or any(w < 1 for w in st.widths):
        yield "stages.widths", f"got {st.widths}, expected {len(st.depths)} positive widths, one per stage"
    if st.depth_mult <= 0 or st.width_mult <= 0:
        yield "stages", "expected depth_mult and width_mult > 0"
    b = cfg.block
    if b.kernel_size < 1 or b.kernel_size % 2 == 0:
        yield "block.kernel_size", f"got {b.kernel_size}, expected an odd kernel size ≥ 1 (padding keeps the size)"
    if b.expansion < 1:
        yield "block.expansion", f"got {b.expansion}, expected ≥ 1"
    if isinstance(b.groups, int):
        if b.groups < 1:
            yield "block.groups", f"got {b.groups}, expected ≥ 1 or depthwise"
        else:
            for channels in grouped_conv_channels(cfg):
                if channels % b.groups:
                    yield "block.groups", (f"got {b.groups}, expected a divisor of every k×k conv's channels "
                                           f"({channels} is not divisible by it)")
                    break
    if b.layer_scale is not None and b.layer_scale <= 0:
        yield "block.layer_scale", f"got {b.layer_scale}, expected a positive initial value or null"
    if not 0 <= b.drop_path < 1:
        yield "block.drop_path", f"got {b.drop_path}, expected 0 ≤ drop_path < 1"
    if cfg.downsample.kernel_size < 1:
        yield "downsample.kernel_size", f"got {cfg.downsample.kernel_size}, expected ≥ 1"
    if not 0 <= cfg.head.dropout < 1:
        yield "head.dropout", f"got {cfg.head.dropout}, expected 0 ≤ dropout < 1"


def _check_train(t: Train):
    for key in ("epochs", "batch_size", "base_batch_size"):
        if getattr(t, key) < 1:
            yield f"train.{key}", f"got {getattr(t, key)}, expected ≥ 1"
    for key in ("lr", "min_lr", "warmup_lr", "weight_decay", "label_smoothing", "mixup", "cutmix"):
        if getattr(t, key) < 0:
            yield f"train.{key}", f"got {getattr(t, key)}, expected ≥ 0"
    if t.lr == 0:
        yield "train.lr", "got 0, expected a positive learning rate"
    if not 0 <= t.warmup_epochs < t.epochs:
        yield "train.warmup_epochs", f"got {t.warmup_epochs}, expected 0 ≤ warmup_epochs < epochs ({t.epochs})"
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        yield "train.betas", f"got {t.betas}, expected two values in [0, 1)"
    if not 0 <= t.label_smoothing < 1:
        yield "train.label_smoothing", f"got {t.label_smoothing}, expected 0 ≤ label_smoothing < 1"
    if not 0 < t.ema_decay < 1:
        yield "train.ema_decay", f"got {t.ema_decay}, expected 0 < ema_decay < 1"
    if t.clip_grad is not None and t.clip_grad <= 0:
        yield "train.clip_grad", f"got {t.clip_grad}, expected a positive norm or null"


def _check_data(d: Data):
    if not re.match(r"^(synthetic|imagefolder:.+|csv:.+)$", d.source):
        yield "data.source", f"got {d.source!r}, expected synthetic, imagefolder:PATH or csv:PATH (give --data)"
    if d.img_size < 16:
        yield "data.img_size", f"got {d.img_size}, expected ≥ 16"
    if len(d.crop_scale) != 2 or not 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1:
        yield "data.crop_scale", f"got {d.crop_scale}, expected [min, max] with 0 < min ≤ max ≤ 1"
    if not 0 < d.crop_pct <= 1:
        yield "data.crop_pct", f"got {d.crop_pct}, expected 0 < crop_pct ≤ 1"
    if not 0 <= d.random_erasing <= 1:
        yield "data.random_erasing", f"got {d.random_erasing}, expected a probability"
    if len(d.mean) != 3 or len(d.std) != 3:
        yield "data.mean", "expected three values for mean and for std"
    if d.workers < 0:
        yield "data.workers", f"got {d.workers}, expected ≥ 0"


def stage_plan(cfg: Config) -> list[tuple[int, int, int, int]]:
    """Per stage: (input width of its first block, stage width, output width, depth), at the config's scale."""
    plan, c_in = [], scale_width(cfg.stem.width, cfg.stages.width_mult)
    for width, depth in zip(cfg.stages.scaled_widths(), cfg.stages.scaled_depths()):
        out = LAYOUTS[cfg.block.layout](c_in, width, cfg.block.expansion)[-1][1]
        first_in = out if cfg.downsample.type == "separate" and plan else c_in
        plan.append((first_in, width, out, depth))
        c_in = out
    return plan


def grouped_conv_channels(cfg: Config) -> set[int]:
    """The channel counts of every k×k conv in the network (for the groups check)."""
    channels = set()
    for first_in, width, out, _ in stage_plan(cfg):
        for c in {first_in, out}:
            channels |= {ch for spatial, ch in LAYOUTS[cfg.block.layout](c, width, cfg.block.expansion) if spatial}
    return channels


def to_yaml(cfg: BaseModel) -> str:
    sections = {k: v for k, v in cfg.model_dump().items() if v is not None}  # no train/data: no recipe applied
    return yaml.safe_dump(sections, sort_keys=False, default_flow_style=None, allow_unicode=True)


def diff(a: BaseModel, b: BaseModel) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two configs, with (a's value, b's value)."""
    out: dict[str, tuple[Any, Any]] = {}

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in x.keys() | y.keys():
                walk(x.get(k), y.get(k), f"{prefix}{k}.")
        elif x != y:
            out[prefix[:-1]] = (x, y)

    walk(a.model_dump(), b.model_dump(), "")
    return dict(sorted(out.items()))

