"""Every check a request passes before anything is written, each one error line naming the file, flag or key:
the configs (what the schema leaves to timm), the data, initial weights, the training's needs against what the
executor gives (GPUs, CPUs, processes), the launch's flags (--wait, --log). A new check goes here, and `check`
runs it."""

from __future__ import annotations

from collections.abc import Sequence

from .config import Config, RoadmapNet, TimmNet, import_refs
from .errors import RoadmapError
from .executors import Executor, registry
from .roadmap import Variant


def check(variants: list[Variant], executor: Executor, *, device: str = "auto", seeds: int = 1, wait: bool = False,
          timeout_wait: float | None = None, log: Sequence[str] = (), log_every_steps: int | None = None,
          wandb: dict | None = None) -> int:
    """Run every check on a request of `variants` × `seeds` for `executor`; return the training set's number of
    classes (the data is read here: a bad --data fails before anything is written)."""
    from .data import load_splits

    check_log_flags(log, log_every_steps, wandb)
    check_wait(type(executor), wait, timeout_wait)
    check_configs(variants)
    classes = len(load_splits(variants[0].cfg.data.source)[0].classes)
    check_initial_weights(variants, classes)
    check_training(variants, executor.processes)
    executor.check(device)
    check_gpu(variants, device, executor.no_gpu_reason(device))
    check_workers(variants, *executor.cpus(len(variants) * seeds))
    check_tracker_installed(log)
    return classes


def check_configs(variants: list[Variant]) -> None:
    """The checks of a config that need torch or timm, so the schema leaves them here (it imports neither), each
    one error line naming the file or flag that set the key: a layer of the user's that does not import, make or
    keep the shape, a timm model timm does not know, a RandAugment spec the data pipeline cannot read."""
    for v in variants:
        check_config(v.cfg, v.source_of)


def check_config(cfg: Config, source_of) -> None:
    # built once with a small batch where a layer could fail: one of the user's, or a built-in given arguments
    if isinstance(cfg, RoadmapNet) and (import_refs(cfg.model_dump()) or any(e.args for e in cfg.block.extras)):
        from .model.imports import UserLayerError, probe

        try:
            probe(cfg)
        except UserLayerError as e:
            raise RoadmapError(f"{source_of(e.key)}: {e}") from None
    if isinstance(cfg, TimmNet):
        import timm

        if not timm.is_model(cfg.timm.name):
            raise RoadmapError(f"{source_of('timm.name')}: timm.name: got {cfg.timm.name!r}, expected a model timm "
                               f"knows (timm.list_models() lists them)")
    if cfg.data is not None and cfg.data.auto_augment:
        from .data import augmentation_problem

        problem = augmentation_problem(cfg.data)
        if problem:
            raise RoadmapError(f"{source_of('data.auto_augment')}: data.auto_augment: {problem}")


def check_gpu(variants: list[Variant], device: str, no_gpu: str | None) -> None:
    """A recipe sized for GPUs (`train.needs_gpu`) on jobs that would get none is refused, unless `--device cpu`
    says that is meant: otherwise 300 epochs would start on a CPU without a word. `no_gpu`: why the jobs would get
    none (Executor.no_gpu_reason), or None."""
    if no_gpu is None or device == "cpu":
        return
    for v in variants:
        if v.cfg.train is not None and v.cfg.train.needs_gpu:
            raise RoadmapError(f"{no_gpu}; but {v.name} trains with a recipe sized for GPUs "
                               f"({v.source_of('train.needs_gpu')}: train.needs_gpu): give the jobs a GPU, or "
                               f"--device cpu to train on the CPU all the same")


def check_workers(variants: list[Variant], cpus: int, where: str) -> None:
    """Loader workers (`data.workers`, pil pipeline) beyond the CPUs each process of a job will have are refused:
    they would contend for the cores the training needs. `where`: what gives the jobs `cpus` CPUs, in words."""
    for v in variants:
        d = v.cfg.data
        if d is not None and d.pipeline == "pil" and d.workers != "auto" and d.workers > cpus:
            raise RoadmapError(f"{v.source_of('data.workers')}: data.workers: {d.workers} loader workers per "
                               f"process, but {where}: give the jobs more CPUs, or --set data.workers=auto (one "
                               f"per CPU they have)")


def check_training(variants: list[Variant], processes: int) -> None:
    """What the schema alone cannot check, as one error line before anything runs: an optimizer timm has not, a
    target batch that the processes of each job cannot reach."""
    from timm.optim import list_optimizers

    known = set(list_optimizers())
    for v in variants:
        if v.cfg.train.opt.lower() not in known:
            raise RoadmapError(f"train.opt: got {v.cfg.train.opt!r}, expected a timm optimizer "
                               f"(adamw, momentum, sgd, lamb, …: timm.optim.list_optimizers())")
        v.cfg.train.accumulation(processes)


def check_initial_weights(variants: list[Variant], num_classes: int) -> None:
    """Load each pretrained file into its network before anything is written, so that a file that does not fit
    is one error line, not a failed run."""
    from .model import build_model
    from .model.pretrained import HUB, load_initial_weights

    for v in variants:
        source = v.cfg.train.pretrained
        if isinstance(source, str) and not source.startswith(HUB):
            load_initial_weights(build_model(v.cfg, num_classes), v.cfg)


def check_wait(executor: type[Executor], wait: bool, timeout_wait: float | None) -> None:
    """--wait (and --timeout-wait) are the launch's: only an executor whose `submit` returns before its jobs end
    has anything to wait for."""
    if executor.blocking and (wait or timeout_wait is not None):
        flag = "--wait" if wait else "--timeout-wait"
        waiting = [name for name, cls in registry().items() if not cls.blocking]
        raise RoadmapError(f"{flag} is for --executor {' or '.join(waiting)}, not {executor.name}")


def check_log_flags(log: Sequence[str], log_every_steps: int | None, wandb: dict | None = None) -> None:
    """A step spacing asks for a tracker whose points it spaces; W&B's project or entity, for W&B."""
    if log_every_steps is not None and not log:
        raise RoadmapError("--log-every-steps: only with --log tensorboard or --log wandb (what it spaces are their "
                           "points)")
    for key in wandb or {}:
        if "wandb" not in log:
            raise RoadmapError(f"--wandb-{key}: only with --log wandb")


INSTALL = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def check_tracker_installed(log: Sequence[str]) -> None:
    """The package of each tracker `--log` names is installed; W&B, logged in (or offline)."""
    for name in log:
        module, extra = INSTALL[name]
        try:
            __import__(module)
        except ImportError:
            raise RoadmapError(f"--log {name}: the {extra} package is not installed "
                               f"(pip install 'convnext-roadmap[{extra}]')") from None
    if "wandb" in log and not wandb_can_log():
        raise RoadmapError("--log wandb: no W&B login here (run `wandb login`, or set WANDB_API_KEY; or "
                           "WANDB_MODE=offline, and `wandb sync` the runs later)")


def wandb_can_log() -> bool:
    """Whether a job's `wandb.init` will find what it needs without asking at a terminal (a job has none): an
    offline or disabled mode, or a key (the environment, or the netrc entry `wandb login` writes for the server).
    Read as wandb reads them: WANDB_* first, then its settings file (`wandb offline` writes the mode there)."""
    import configparser
    import netrc
    import os
    from pathlib import Path
    from urllib.parse import urlsplit

    settings = configparser.ConfigParser()
    folder = os.environ.get("WANDB_CONFIG_DIR") or Path("~/.config/wandb").expanduser()
    try:
        settings.read(Path(folder) / "settings")
    except configparser.Error:  # wandb itself warns of it; here it only means no settings
        settings = configparser.ConfigParser()
    saved = settings["default"] if settings.has_section("default") else {}
    mode = os.environ.get("WANDB_MODE") or saved.get("mode", "")
    if mode in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_DISABLED", "").lower() == "true" or \
            os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or saved.get("api_key"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or saved.get("base_url", "https://api.wandb.ai")).netloc
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])
