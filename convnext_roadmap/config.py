"""The typed config schema: every field once, with its default and its constraint; cross-field rules as validators.

A constraint on one field sits on the field (`Field(ge=1)`); a rule between fields is a model validator that
raises `Problem(key, text)`, so that `loading` can name the file that set that key. Nothing here reads files.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, field_validator, model_validator

from .errors import RoadmapError

# a callable anyone wrote, as `module:attr`: a module beside the YAML that names it (its source then travels in the
# config's `code`), or one on sys.path (`timm.layers:GlobalResponseNorm`)
ImportRef = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")]
Norm = Union[Literal["batchnorm", "layernorm", "none"], ImportRef]  # called with the channel count
Act = Union[Literal["relu", "gelu", "none"], ImportRef]  # called with nothing
Position = Literal["conv1", "conv2", "conv3"]
Positive = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0, lt=1)]


class Problem(ValueError):
    """A cross-field rule broken at `key` (relative to the section whose validator raises it)."""

    def __init__(self, key: str, text: str, against: str | None = None):
        super().__init__(text)
        self.key = key
        self.against = against  # the other key of the rule, whose source the error names too


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Stem(Section):
    """conv kernel_size×kernel_size / stride → norm → act → optional 3×3/2 max-pool."""

    kernel_size: Positive
    stride: Positive
    width: Positive
    norm: Norm
    act: Act
    pool: Literal["max", "none"]


class Stages(Section):
    """Blocks per stage and each stage's width; the multipliers scale both for small proxy runs."""

    depths: list[Positive] = Field(min_length=1)
    widths: list[Positive] = Field(min_length=1)
    depth_mult: float = Field(1.0, gt=0)
    width_mult: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _one_width_per_stage(self):
        if len(self.widths) != len(self.depths):
            raise Problem("widths", f"got {self.widths}, expected {len(self.depths)} widths, one per stage",
                          against="depths")
        return self


class Extra(Section):
    """A module inserted into the block after conv1, conv2 or conv3 (after that conv's norm and activation: where
    the block's tensor has one channel count, the conv's own), called with that channel count first, then `args`;
    it must keep the tensor's shape. After conv3 is the residual branch's end, before layer scale and the add."""

    at: Position
    module: Union[Literal["grn"], ImportRef]  # grn: ConvNeXt V2's Global Response Normalization
    args: dict[str, Any] = {}


class Block(Section):
    """One residual block. conv1..conv3 are the layout's three convs in the order they run (model/geometry.py)."""

    layout: Literal["bottleneck", "inverted", "dw_first"]
    kernel_size: Positive
    groups: Union[Positive, Literal["depthwise"]]  # of the k×k conv; depthwise: as many groups as channels
    expansion: Positive
    act: Act
    act_at: list[Union[Position, Literal["output"]]]  # after which convs, and/or after the residual add
    norm: Norm
    norm_at: list[Position]
    layer_scale: Union[Annotated[float, Field(gt=0)], None] = None  # initial value of a learnable per-channel scale
    drop_path: Probability = 0.0  # stochastic depth of the last block; rises linearly from 0 over the blocks
    # the initial weights of the whole network. trunc_normal: every conv and linear truncated-normal, std 0.02,
    # as the paper trains every step (Table 5); resnet: timm's ResNet init (Kaiming-normal convs, fan-out; the scale
    # of each block's last norm zero, so that a ResNet block, whose branch ends in it, starts as its shortcut)
    init: Literal["trunc_normal", "resnet"] = "trunc_normal"
    extras: list[Extra] = []  # in order; several at one point run in the order given

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, k: int) -> int:
        if k % 2 == 0:
            raise ValueError("an odd kernel size ≥ 1 (padding keeps the size)")
        return k


class Downsample(Section):
    """in_block: the first block of stages 2-4 strides its k×k conv and projects its shortcut (conv + norm);
    separate: a norm and a kernel_size×kernel_size/2 conv between stages, and blocks that never stride."""

    type: Literal["in_block", "separate"]
    norm: Norm
    kernel_size: Positive


class Head(Section):
    """Global average pooling → norm → dropout → linear classifier."""

    norm: Norm
    dropout: Probability = 0.0


class Train(Section):
    """How a network is trained; set by a recipe (ablations/recipes/)."""

    # sized for GPUs (days on a CPU): a request whose jobs would get no GPU is refused unless --device cpu says so
    needs_gpu: bool = False
    epochs: Positive
    batch_size: Positive  # per process; the effective batch is batch_size × processes × accum_steps
    accum_steps: Positive = 1  # micro-batches whose gradients add up to one optimizer step
    target_batch: Union[Positive, None] = None  # or: pick accum_steps to reach this effective batch
    lr: float = Field(gt=0)  # at base_batch_size, scaled linearly to the effective batch
    base_batch_size: Positive
    sched: Literal["cosine", "step"] = "cosine"  # per optimizer step, after a linear warm-up
    min_lr: float = Field(ge=0)  # cosine: the lr it ends at
    decay_epochs: Positive = 30  # step: multiply the lr by decay_rate every decay_epochs
    decay_rate: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(ge=0)
    warmup_lr: float = Field(ge=0)
    opt: str  # a timm optimizer name: adamw, momentum (SGD with momentum), sgd (Nesterov), …
    betas: list[Probability] = Field(min_length=2, max_length=2)  # Adam-style optimizers
    momentum: Probability = 0.9  # SGD-style optimizers
    weight_decay: float = Field(ge=0)
    filter_bias_and_bn: bool = True  # no weight decay on norms and biases (timm's default; torchvision decays all)
    clip_grad: Union[Annotated[float, Field(gt=0)], None]
    label_smoothing: Probability
    mixup: float = Field(ge=0)
    cutmix: float = Field(ge=0)
    ema: bool
    ema_decay: float = Field(gt=0, lt=1)
    # autocast. auto: bf16 where the device computes it natively (a V100/T4 or a CPU without it emulates bf16 at a
    # fraction of fp32's speed), else fp32; bf16 (or true): bf16 on any device; fp16: fp16 with a GradScaler, as
    # the official code and timm train on GPUs without bf16; false: fp32
    amp: Union[bool, Literal["auto", "bf16", "fp16"]]
    channels_last: bool  # NHWC memory format, on any device
    compile: bool
    # CUDA only: cuDNN picks the fastest conv algorithms for each shape (timm and the official code turn it on);
    # TF32 matmuls and convs on Ampere and newer (PyTorch's default for convs, not for matmuls)
    cudnn_benchmark: bool = Field(True, json_schema_extra={"bookkeeping": True})
    tf32: bool = True
    # a progress line every this many batches (step, loss, lr, img/s, data wait, peak GPU memory), with or without
    # a terminal: ~a minute of the paper's recipe on one H100 (~18 batches of 128 a second)
    log_every: Positive = Field(1000, json_schema_extra={"bookkeeping": True})
    # a save of the run's place every this many minutes, in the middle of an epoch too (0: at epoch ends only), for
    # what no signal announces (a node lost, the OOM killer, SIGKILL): ConvNeXt-T's state with AdamW and EMA is
    # 458 MB, written and fsynced in under a second (docs/runs.md), ~0.1% of 10 minutes; a crash then loses 5
    # minutes on average, not half an epoch. SLURM's signals, SIGTERM and Ctrl-C save where the run is anyway
    checkpoint_every_min: float = Field(10.0, ge=0, json_schema_extra={"bookkeeping": True})
    seed: int  # the first seed; --seeds N runs seed, seed+1, …
    # false; true: timm's hub weights of this network; timm:NAME: the hub weights of NAME; a path: a local file
    pretrained: Union[bool, str] = False

    @model_validator(mode="after")
    def _warmup_within_training(self):
        if self.warmup_epochs >= self.epochs:
            raise Problem("warmup_epochs", f"got {self.warmup_epochs}, expected fewer than epochs ({self.epochs})",
                          against="epochs")
        if self.target_batch is not None and self.accum_steps != 1:
            raise Problem("accum_steps", f"got {self.accum_steps} beside target_batch {self.target_batch}, "
                                         f"expected one of the two (target_batch picks accum_steps)",
                          against="target_batch")
        return self

    def accumulation(self, processes: int) -> int:
        """Micro-batches per optimizer step for this many processes: accum_steps, or what target_batch asks."""
        if self.target_batch is None:
            return self.accum_steps
        per_step = self.batch_size * processes
        if self.target_batch % per_step:
            raise RoadmapError(f"train.target_batch: got {self.target_batch}, expected a multiple of batch_size × "
                               f"processes = {self.batch_size} × {processes} = {per_step}")
        return self.target_batch // per_step


class Data(Section):
    """What a network is trained on and how images are augmented; set by a recipe, `--data` sets `source`."""

    source: str = Field(pattern=r"^(synthetic|imagefolder:.+|csv:.+)$",
                        description="synthetic, imagefolder:PATH or csv:PATH (give --data)")
    img_size: int = Field(ge=16)
    crop_scale: list[Annotated[float, Field(gt=0, le=1)]] = Field(min_length=2, max_length=2)  # RandomResizedCrop
    crop_pct: float = Field(gt=0, le=1)  # evaluation: resize to img_size / crop_pct, centre crop img_size
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"  # of the crops' resizing (timm's; torchvision's)
    auto_augment: Union[str, None]  # timm's RandAugment spec, e.g. rand-m9-mstd0.5-inc1
    color_jitter: Union[Annotated[float, Field(ge=0)], None] = None  # pil pipeline; timm drops it beside RandAugment
    random_erasing: float = Field(ge=0, le=1)
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)
    # loader worker processes per training process (pil pipeline); auto: as many as the CPUs the process may use
    # (its affinity, shared with the other processes of its job here). Each image's random draws come from its
    # place in the epoch, so the count changes the speed, not the run.
    workers: Union[Annotated[int, Field(ge=0)], Literal["auto"]] = Field(
        "auto", json_schema_extra={"bookkeeping": True})
    # pil: each image read and augmented by timm's transforms in loader workers (any data set);
    # tensor: the set decoded once into a uint8 cache, batches augmented as tensors (small sets; the CPU proxy)
    pipeline: Literal["pil", "tensor"] = "pil"

    @model_validator(mode="after")
    def _consistent(self):
        if self.crop_scale[0] > self.crop_scale[1]:
            raise Problem("crop_scale", f"got {self.crop_scale}, expected [min, max] with min ≤ max")
        if self.pipeline == "tensor" and self.color_jitter:
            raise Problem("color_jitter", f"got {self.color_jitter}, expected null with pipeline: tensor "
                                          f"(it has no color jitter; pipeline: pil has timm's)")
        return self  # whether the augmentation's pipeline can read auto_augment: preflight.check_configs (timm)


class TimmModel(Section):
    """A timm model trained beside the roadmap (a reference), in place of the roadmap's network."""

    name: str
    drop_path: Probability = 0.0
    img_size: Union[Annotated[int, Field(ge=16)], None] = None  # have timm adapt a fixed-size model (ViT, Swin)
    # whether timm knows `name`: preflight.check_configs, which may import timm


class UserCode(Section):
    """A module of the user's, carried in the config so that a job imports the source the launch checked, wherever
    it runs; the digest names the version (a changed module is a different network)."""

    sha256: str
    source: str

    @model_validator(mode="after")
    def _digest_matches(self):
        import hashlib

        if hashlib.sha256(self.source.encode()).hexdigest() != self.sha256:
            raise Problem("sha256", "does not match the source (edited by hand?)")
        return self


class RoadmapNet(Section):
    """The roadmap's configurable network, every architecture section in full; with a recipe, train and data."""

    stem: Stem
    stages: Stages
    block: Block
    downsample: Downsample
    head: Head
    code: dict[str, UserCode] = {}  # by module name: the modules beside the YAML files its `module:attr`s name
    train: Union[Train, None] = None  # None: architecture only, no recipe applied
    data: Union[Data, None] = None

    @model_validator(mode="after")
    def _groups_divide(self):
        if isinstance(self.block.groups, int):
            from .model.geometry import grouped_conv_channels

            for channels in sorted(grouped_conv_channels(self)):
                if channels % self.block.groups:
                    raise Problem("block.groups", f"got {self.block.groups}, expected a divisor of every k×k "
                                                  f"conv's channels ({channels} is not divisible by it)")
        return self


ARCHITECTURE = ("stem", "stages", "block", "downsample", "head")


class TimmNet(Section):
    """A timm model in place of the roadmap's network (a reference); with a recipe, train and data."""

    timm: TimmModel
    train: Union[Train, None] = None  # the same two sections as RoadmapNet's
    data: Union[Data, None] = None

    @model_validator(mode="before")
    @classmethod
    def _alone(cls, data):
        both = [s for s in ARCHITECTURE if isinstance(data, dict) and s in data]
        if both:
            timm = data.get("timm")
            name = timm.get("name") if isinstance(timm, dict) else timm
            raise Problem("timm", f"the timm model {name} beside the roadmap's network ({both[0]} …), expected one "
                                  f"of the two")
        return data


def _kind(data) -> str:
    if isinstance(data, dict):
        return "timm" if data.get("timm") is not None else "roadmap"
    return "timm" if isinstance(data, TimmNet) else "roadmap"


# A config: the roadmap's network or a timm model, told apart by whether it names a timm model. Each kind is its
# own type, so code that differs by kind dispatches on the type (`functools.singledispatch`), never on a field.
Config = Annotated[Union[Annotated[RoadmapNet, Tag("roadmap")], Annotated[TimmNet, Tag("timm")]],
                   Discriminator(_kind)]
KINDS = {"roadmap": RoadmapNet, "timm": TimmNet}  # the union's tags, which pydantic puts first in an error's loc
SECTIONS = (*ARCHITECTURE, "code", "timm", "train", "data")  # what a config's top level may hold, of either kind
# the keys that may name a callable as `module:attr`, besides each block.extras[i].module
IMPORTABLE = ("stem.norm", "stem.act", "block.norm", "block.act", "downsample.norm", "head.norm")


def import_refs(data: dict) -> dict[str, str]:
    """Every `module:attr` a config's plain data names, by the dotted key that names it (extras as
    `block.extras[i].module`)."""
    out = {}
    for key in IMPORTABLE:
        section, field = key.split(".")
        value = (data.get(section) or {}).get(field) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and ":" in value:
            out[key] = value
    extras = (data.get("block") or {}).get("extras") if isinstance(data.get("block"), dict) else None
    for i, extra in enumerate(extras if isinstance(extras, list) else []):
        if isinstance(extra, dict) and isinstance(extra.get("module"), str) and ":" in extra["module"]:
            out[f"block.extras[{i}].module"] = extra["module"]
    return out
_CONFIG = TypeAdapter(Config)


def parse(data: Any) -> RoadmapNet | TimmNet:
    """A config from plain data (a merged YAML, a job's recorded config). Sections that are null are absent: a
    config recorded before the union (`timm: null` beside a roadmap network) still reads."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if v is not None}
    return _CONFIG.validate_python(data)


# the official ConvNeXt's run_with_submitit.py: 10 CPUs for each GPU's task, its 10 loader workers' worth
CPUS_PER_GPU_TASK = 10


class ClusterProfile(Section):
    """Where and how SLURM jobs run (slurm/*.yaml); see slurm/default.yaml for each field. A field a profile leaves
    out takes the default here, which is default.yaml's (a test holds the two together)."""

    partition: Union[str, None] = None
    account: Union[str, None] = None
    qos: Union[str, None] = None
    constraint: Union[str, None] = None
    nodes: Positive = 1
    gpus_per_node: int = Field(0, ge=0)
    tasks_per_node: Union[Positive, None] = None
    cpus_per_task: Union[Positive, None] = None  # None: CPUS_PER_GPU_TASK with GPUs, 2 without
    mem_gb: Union[Positive, None] = None  # None: the cluster's default
    timeout_min: Positive = 60
    array_parallelism: Positive = 16
    max_requeues: int = Field(3, ge=0)
    signal_delay_s: int = Field(90, ge=1)  # how long before its time limit SLURM signals a job to checkpoint
    additional_parameters: dict[str, Any] = {}

    def tasks(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    def cpus(self) -> int:
        """CPUs per task: as set, or a GPU task's CPUS_PER_GPU_TASK, a CPU job's 2."""
        return self.cpus_per_task or (CPUS_PER_GPU_TASK if self.gpus_per_node else 2)


def bookkeeping() -> set[str]:
    """Dotted keys that change how a run reports or how fast it goes, not what it trains (declared on the field):
    a run's seeds may differ in them."""
    return {f"{name}.{key}" for name, section in (("train", Train), ("data", Data))
            for key, field in section.model_fields.items()
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("bookkeeping")}


def diff(a: BaseModel, b: BaseModel, trained_only: bool = False) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two configs, with (a's value, b's value); `trained_only`: not the
    bookkeeping keys."""
    out: dict[str, tuple[Any, Any]] = {}

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in x.keys() | y.keys():
                walk(x.get(k), y.get(k), f"{prefix}{k}.")
        elif x != y:
            out[prefix[:-1]] = (x, y)

    walk(a.model_dump(), b.model_dump(), "")
    skip = bookkeeping() if trained_only else set()

    def short(value):  # a module's source by its digest: the change, not the file
        return f"sha256 {value['sha256'][:12]}" if isinstance(value, dict) and "sha256" in value else value

    return {k: (short(x), short(y)) for k, (x, y) in sorted(out.items())
            if k not in skip and not (k.startswith("code.") and k.endswith(".source"))}
