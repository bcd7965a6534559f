"""convnext-roadmap: the ConvNeXt paper's "modernizing a ResNet" roadmap as composable YAML ablations."""

from .config import Config, RoadmapNet, TimmNet
from .errors import RoadmapError
from .roadmap import resolve_config

__all__ = ["Config", "RoadmapError", "RoadmapNet", "TimmNet", "build_model", "load_timm_state_dict", "resolve_config"]


def __getattr__(name):
    # torch is imported only when a model is asked for, so that `roadmap steps` and config work stay quick.
    if name in ("build_model", "load_timm_state_dict"):
        from . import model

        return getattr(model, name)
    raise AttributeError(name)
