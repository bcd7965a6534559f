"""The layers a config names: built-in norms, activations and block extras by name, anyone's as `module:attr`
(from the source the config carries, or from sys.path), each made module remembered with the key that named it."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable

import torch.nn as nn

from ..config import import_refs
from ..errors import RoadmapError
from .layers import GlobalResponseNorm, make_act, make_norm

EXTRAS = {"grn": GlobalResponseNorm}  # block.extras' built-in modules


class UserLayerError(RoadmapError):
    """A named layer that could not be imported, made or used: `key` is the config key that named it."""

    def __init__(self, key: str, ref: str, reason: str):
        super().__init__(f"{key}: {ref}: {reason}")
        self.key, self.ref, self.reason = key, ref, reason


def _carried(name: str, entry) -> types.ModuleType:
    """The module `name` made from the source the config carries, once per version: under a name of its own, so
    that it never takes the place of an installed module of the same name."""
    private = f"convnext_roadmap.user.{name}_{entry.sha256[:16]}"
    if private not in sys.modules:
        module = types.ModuleType(private)
        module.__file__ = f"<{name}.py, sha256 {entry.sha256[:12]}>"
        sys.modules[private] = module  # first, as an import does: dataclasses and pickle look the module up there
        try:
            exec(compile(entry.source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - the user's layer
        except BaseException:
            del sys.modules[private]
            raise
    return sys.modules[private]


class Layers:
    """Makes the layers of one config. Built-ins by name; `module:attr` imported from the config's `code` (a module
    the user wrote beside the YAML) or else from sys.path. Each is asked for with the config key that names it, and
    `made` lists each module made from a `module:attr` with that key, so that a check can say which key failed."""

    def __init__(self, cfg=None):
        self.code = getattr(cfg, "code", None) or {}
        self.made: list[tuple[nn.Module, str]] = []

    def resolve(self, ref: str, key: str) -> Callable:
        name, attr = ref.split(":", 1)
        try:
            obj: Any = _carried(name, self.code[name]) if name in self.code else importlib.import_module(name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as e:  # noqa: BLE001 - the import's own error is the user's to read
            raise UserLayerError(key, ref, f"does not import ({type(e).__name__}: {e})") from None
        if not callable(obj):
            raise UserLayerError(key, ref, f"is a {type(obj).__name__}, not a callable that makes a module")
        return obj

    def _make(self, ref: str, key: str, *args, **kwargs) -> nn.Module:
        try:
            module = self.resolve(ref, key)(*args, **kwargs)
        except UserLayerError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's constructor: its own words
            raise UserLayerError(key, ref, f"raised {type(e).__name__}: {e}") from None
        if not isinstance(module, nn.Module):
            raise UserLayerError(key, ref, f"returned a {type(module).__name__}, expected a torch.nn.Module")
        self.made.append((module, key))
        return module

    def norm(self, kind: str, channels: int, key: str) -> nn.Module:
        return self._make(kind, key, channels) if ":" in kind else make_norm(kind, channels)

    def act(self, kind: str, key: str) -> nn.Module:
        return self._make(kind, key) if ":" in kind else make_act(kind)

    def extra(self, module: str, channels: int, args: dict, key: str) -> nn.Module:
        if ":" in module:
            return self._make(module, key, channels, **args)
        try:
            return EXTRAS[module](channels, **args)
        except TypeError as e:  # an argument it does not take
            raise UserLayerError(key, module, f"raised TypeError: {e}") from None


def probe(cfg, img_size: int = 64) -> None:
    """Build `cfg`'s network and run one small batch through it, in evaluation, so that a layer it names that
    cannot be imported or made, raises, or changes the tensor's shape is a UserLayerError naming its key, before
    anything is written. The random streams are left as they were."""
    import torch

    from ..rng import restored
    from .network import build_model

    with restored():
        model = build_model(cfg, num_classes=2).eval()
        current: list[str] = []

        def before(module, args, key):
            current.append(key)

        def after(module, args, out, key):
            current.pop()
            x = args[0] if args else None
            if not isinstance(out, torch.Tensor) or x is None or out.shape != x.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise UserLayerError(key, refs[key], f"returned {got} for an input of {tuple(x.shape)}: the "
                                     f"network needs the shape kept")

        refs = import_refs(cfg.model_dump())
        for module, key in model.layers.made:
            module.register_forward_pre_hook(lambda m, a, key=key: before(m, a, key))
            module.register_forward_hook(lambda m, a, o, key=key: after(m, a, o, key))
        try:
            with torch.no_grad():
                model(torch.zeros(2, 3, img_size, img_size).normal_())
        except UserLayerError:
            raise
        except Exception as e:  # noqa: BLE001 - inside a layer of the user's: its own words, with its key
            if not current:
                raise
            raise UserLayerError(current[-1], refs[current[-1]], f"raised {type(e).__name__}: {e}") from None
