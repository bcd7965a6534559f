from .network import Network, build_model
from .timm_keys import load_timm_state_dict

__all__ = ["Network", "build_model", "load_timm_state_dict"]
