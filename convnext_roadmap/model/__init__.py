"""The roadmap's network: geometry, layers, the block, the builder, and initial weights."""


def __getattr__(name):
    # torch is imported only when a network is asked for: the config's validators use the geometry alone
    if name in ("Network", "build_model", "input_size_note"):
        from . import network

        return getattr(network, name)
    if name == "load_timm_state_dict":
        from .pretrained import load_timm_state_dict

        return load_timm_state_dict
    raise AttributeError(name)


__all__ = ["Network", "build_model", "input_size_note", "load_timm_state_dict"]
