"""Configs from layers: YAML loading, deep-merge of patches, `--set`, and which source set each leaf (for errors).

A config is the merge of mappings in order: a base, the recipe, the patches, the command line. A patch names only
the fields it changes; lists are replaced whole. Every leaf remembers the source that set it last, so that a
validation error names the file (or the `--set`) and the key in one line.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .config import ARCHITECTURE, KINDS, SECTIONS, Config, ImportRef, Problem, import_refs, parse
from .errors import RoadmapError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `4e-3` as a string; accept exponent floats without a dot, as YAML 1.2 does. A key given
    twice in one mapping is an error (PyYAML keeps the last without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged below, its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key is PyYAML's own error
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key}: given twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


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


# lists that add up over the layers rather than being replaced: each patch inserts its own modules into the block
ADDED_UP = ("block.extras",)


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
            elif dotted in ADDED_UP:
                self._add_up(into, key, value, source, dotted)
            else:
                into[key] = copy.deepcopy(value)
                self.origin = {k: v for k, v in self.origin.items() if not k.startswith(dotted + ".")}
                self.origin[dotted] = source

    def _add_up(self, into: dict, key: str, value, source: str, dotted: str) -> None:
        """A list whose items add up over the layers (`ADDED_UP`): a layer's items are appended, each remembering
        its own source, but for one equal to an item already there; null empties it."""
        have = into.get(key) if isinstance(into.get(key), list) else []
        if value is None or not isinstance(value, list):
            into[key] = [] if value is None else copy.deepcopy(value)  # not a list: the schema's error to give
            self.origin = {k: v for k, v in self.origin.items() if not k.startswith(dotted)}
            self.origin[dotted] = source
            return
        into[key] = have
        for item in value:
            if item not in have:
                have.append(copy.deepcopy(item))
                self.origin[f"{dotted}[{len(have) - 1}]"] = source
        self.origin.setdefault(dotted, source)

    def source_of(self, key: str) -> str:
        """The source that set `key` (a list's item as `key[i]`: its own where the list adds up, else the list's),
        or the nearest enclosing key; the first source when none did."""
        for candidate in (key, re.sub(r"\[\d+\]", "", key)):
            parts = candidate.split(".")
            for n in range(len(parts), 0, -1):
                found = self.origin.get(".".join(parts[:n]))
                if found:
                    return found
        return next(iter(self.origin.values()), "config")


def merge_layers(layers: list[tuple[str, dict]]) -> tuple[Config, Merged]:
    """Merge (source, mapping) layers in order, take in the user's modules they name, and validate the result as a
    config."""
    merged = Merged()
    for source, doc in layers:
        merged.merge(doc, source)
    bind_code(merged)
    return validate(merged), merged


def bind_code(merged: Merged) -> None:
    """Put the source of each module a `module:attr` names into the config's `code`, when that module is a file
    beside the YAML that names it (for a `--set`, in the current directory): the job then imports what was
    checked here, on any machine. A module already in `code` (a run's own config.yaml) keeps its recorded source;
    one found nowhere beside is left to sys.path. Modules no longer named are dropped."""
    import hashlib

    refs = import_refs(merged.data)
    if not refs and not merged.data.get("code"):
        return
    code = dict(merged.data.get("code") or {})
    named = set()
    for key, ref in refs.items():
        module = ref.split(":", 1)[0]
        named.add(module)
        source = merged.source_of(key)
        folder = Path.cwd() if source.startswith("--") else Path(source).parent
        file = folder / f"{module}.py"
        if "." in module or not file.is_file() or (module in code and f"code.{module}" not in merged.origin):
            continue  # a package, a module on sys.path, or one a run's config.yaml carries already
        text = file.read_text()
        entry = {"sha256": hashlib.sha256(text.encode()).hexdigest(), "source": text}
        if module in code and code[module] != entry:
            raise RoadmapError(f"{source}: {key}: {ref}: {file} is another {module}.py than the one beside "
                               f"{merged.origin[f'code.{module}']}, which the config names too (one module name, "
                               f"one source: rename one of them)")
        code[module] = entry
        merged.origin[f"code.{module}"] = source
    merged.data["code"] = {m: v for m, v in code.items() if m in named}


def validate(merged: Merged, schema: type[BaseModel] | None = None) -> BaseModel:
    """Check keys, types and constraints (a config's, or `schema`'s); the first problem becomes one RoadmapError
    line."""
    try:
        return parse(merged.data) if schema is None else schema.model_validate(merged.data)
    except ValidationError as e:
        err = e.errors()[0]
        if schema is None:  # the union's tag comes first in the loc: the kind of network it was read as
            tag = err["loc"][0] if err["loc"] else "roadmap"
            schema, err = KINDS[tag], {**err, "loc": err["loc"][1:]}
        raise RoadmapError(_describe(err, merged, schema)) from None


def _describe(err: dict, merged: Merged, schema: type[BaseModel]) -> str:
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    # pydantic reports a failed Union/Literal member in the loc (e.g. "literal['depthwise']"); keep the field path
    member = r"^(int|float|str|bool|none|literal\[.*\]|list\[.*\]|dict\[.*\]|constrained-.*)$"
    loc = [p for p in loc if not re.match(member, p)]
    shown = []  # the key as written, a list's item as key[i]
    for p in err["loc"]:
        if isinstance(p, int) and shown:
            shown[-1] += f"[{p}]"
        elif not isinstance(p, int) and not re.match(member, str(p)):
            shown.append(str(p))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, Problem):  # a cross-field rule: its key is relative to the section that raised it
        key = ".".join([*loc, cause.key])
        if cause.against is None:
            return f"{merged.source_of(key)}: {key}: {cause}"
        other = ".".join([*loc, cause.against])
        return f"{merged.source_of(key)}: {key}: {cause} ({other}: {merged.source_of(other)})"
    key = ".".join(loc)
    source = merged.source_of(key)
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _section(schema, loc[:-1])
        allowed = ", ".join(SECTIONS if schema in KINDS.values() and len(loc) == 1 else
                            parent.model_fields if parent else "?")
        where = ".".join(loc[:-1]) or "the top level"
        return f"{source}: {key}: unknown key ({where} takes: {allowed})"
    if kind == "missing" and loc == [loc[0]] and loc[0] in ARCHITECTURE:
        return f"{source}: {key}: missing (a config describes the roadmap's network in full, or names a timm model)"
    if kind == "missing":
        return f"{source}: {key}: missing (the base config and the recipe must set every field)"
    field = _field(schema, loc)
    return f"{source}: {'.'.join(shown)}: got {err.get('input')!r}, expected {_expected(err, field)}"


def _expected(err: dict, field) -> str:
    """What a field takes, in words: its constraint when one failed, else its type."""
    ctx, kind = err.get("ctx") or {}, err["type"]
    bounds = {"greater_than_equal": ("≥", "ge"), "greater_than": (">", "gt"), "less_than": ("<", "lt"),
              "less_than_equal": ("≤", "le")}
    if kind in bounds:
        sign, name = bounds[kind]
        return f"{sign} {ctx[name]}"
    if kind in ("too_short", "too_long"):
        lengths = {m.min_length for m in field.metadata if hasattr(m, "min_length")} if field else set()
        return f"a list of {lengths.pop()} values" if len(lengths) == 1 else err["msg"].lower()
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if field is not None and field.description:
        return field.description
    return _type_words(field.annotation) if field is not None else err["msg"]


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
    if annotation == ImportRef:
        return "module:attr (a callable of your own, or a library's)"
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is Union:
        return " or ".join(_type_words(a) for a in args)
    if origin is list:
        return f"a list, each {_type_words(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping of names to values" if args and args[0] is str else "a mapping"
    if args and hasattr(annotation, "__metadata__"):  # Annotated[int, Field(...)]
        return _type_words(args[0])
    if _is_model(annotation):
        return "a mapping of " + ", ".join(annotation.model_fields)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(annotation, str(annotation))


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (a module's source in `code`) as literal blocks, readable as the file they came from."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def to_yaml(cfg: BaseModel) -> str:
    sections = {k: v for k, v in cfg.model_dump().items() if v not in (None, {})}  # no train/data: no recipe applied
    return yaml.dump(sections, Dumper=_Dumper, sort_keys=False, default_flow_style=None, allow_unicode=True)


def read_config(path: Path) -> Config:
    """A config written by `to_yaml` (a run's config.yaml); one that no longer fits the schema (edited by hand, or
    written by another version) is one line naming the file and the key."""
    return validate(Merged().merge(load_yaml(path), str(path)))
