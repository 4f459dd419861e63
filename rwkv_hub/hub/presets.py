"""Parameter presets: named sampling settings, validated, with the RWKV guide's recommendations built in.

A request's parameters come from four layers, each overriding the one before: the model's defaults
(`SamplingParams()`), the format's defaults, the preset's `params`, and the request's own `params`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import RWKVHubError

PRESET_FIELDS = ("name", "description", "description_zh", "format", "params")
# SamplingParams fields a preset or request may set, and their JSON types.
PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "temperature": (int, float),
    "top_p": (int, float),
    "top_k": (int,),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "penalty_decay": (int, float),
    "max_tokens": (int,),
    "seed": (int,),
    "stop": (list, tuple, str),
    "logit_bias": (dict,),
}


class PresetError(RWKVHubError):
    """A preset or a request's parameters are malformed."""


def check_params(where: str, params: Any) -> dict[str, Any]:
    """A dict of sampling parameters with known names and JSON types (ranges are checked by SamplingParams)."""
    if not isinstance(params, Mapping):
        raise PresetError(f"{where}: params must be an object of sampling parameters")
    out = {}
    for k, v in params.items():
        if k not in PARAM_TYPES:
            raise PresetError(f"{where}: unknown parameter {k!r}; known: {', '.join(PARAM_TYPES)}")
        if isinstance(v, bool) or not isinstance(v, PARAM_TYPES[k]):
            raise PresetError(f"{where}: {k} has the wrong type ({type(v).__name__})")
        if k == "logit_bias":
            v = _bias(where, v)
        out[k] = tuple(v) if k == "stop" and not isinstance(v, str) else v
    return out


def _bias(where: str, bias: dict) -> dict[int, Any]:
    """JSON and TOML keys are strings: {"15": -100} biases token 15 (values are checked by SamplingParams)."""
    out = {}
    for key, value in bias.items():
        text = str(key)
        if isinstance(key, bool) or not (isinstance(key, int) or text.isascii() and text.isdigit()):
            raise PresetError(f'{where}: logit_bias key {key!r} is not a token id (a whole number as text, "15")')
        out[int(key)] = value
    return out


def sampling(where: str, params: Any):
    """SamplingParams of `params`, checked for names, JSON types and ranges; a PresetError names `where`."""
    from ..core.sampling.params import ParameterError, SamplingParams

    checked = check_params(where, params)
    try:
        return SamplingParams(**checked)
    except (ParameterError, TypeError) as e:
        raise PresetError(f"{where}: {e}") from None


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    description_zh: str = ""
    format: str | None = None  # the format this preset is meant for, used when the request names none
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", self.name):
            raise PresetError(f"preset name {self.name!r}: use 1-64 lowercase letters, digits, '_', '-', '.'")
        for k in ("description", "description_zh"):
            if not isinstance(getattr(self, k), str):
                raise PresetError(f"preset {self.name!r}: {k} must be text")
        if self.format is not None and not isinstance(self.format, str):
            raise PresetError(f"preset {self.name!r}: format must be a format name")
        object.__setattr__(self, "params", check_params(f"preset {self.name!r}", self.params))
        self.sampling()  # ranges, now rather than at the first request

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preset:
        if not isinstance(d, Mapping):
            raise PresetError("a preset must be an object with name, description and params")
        name = d.get("name", "?")
        unknown = sorted(set(d) - set(PRESET_FIELDS))
        if unknown:
            raise PresetError(f"preset {name!r}: unknown field {unknown[0]!r}; fields are {', '.join(PRESET_FIELDS)}")
        if "name" not in d or "description" not in d:
            raise PresetError(f"preset {name!r}: name and description are required")
        return cls(**d)

    def sampling(self, base: Mapping[str, Any] | None = None):
        """SamplingParams of base (format defaults) overridden by this preset; raises on bad ranges."""
        return sampling(f"preset {self.name!r}", {**(base or {}), **self.params})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"params": dict(self.params)}


def resolve_params(
    format_defaults: Mapping[str, Any], preset: Preset | None, request: Mapping[str, Any] | None
) -> dict[str, Any]:
    """request > preset > format defaults (> the model's defaults, which SamplingParams fills in)."""
    merged = dict(format_defaults)
    if preset is not None:
        merged.update(preset.params)
    merged.update(check_params("request", request or {}))
    return merged


def _p(name, temperature, top_p, penalty, en, zh, fmt="chat", **extra) -> Preset:
    params = {"temperature": temperature, "top_p": top_p, "presence_penalty": penalty, "frequency_penalty": penalty}
    return Preset(name, en, zh, fmt, params | extra)


# The guide's recommendations (docs/formats.md): creative pairs of high temperature and low top_p, with
# the presence penalty inside the range the guide gives for that top_p; mechanical tasks at temperature
# 1 with low top_p; keyword extraction greedy without penalties.
BUILTIN_PRESETS = (
    _p(
        "chat",
        1.0,
        0.3,
        0.5,
        "everyday chat (ChatRWKV's and RWKV Runner's defaults)",
        "日常聊天(ChatRWKV 与 RWKV Runner 的默认值)",
    ),
    _p("creative", 1.2, 0.5, 0.3, "creative writing and dialogue", "创意写作与对话"),
    _p("creative-bold", 1.4, 0.4, 0.4, "creative writing, bolder", "创意写作,更大胆"),
    _p("creative-bolder", 1.4, 0.3, 0.5, "creative writing, bolder still", "创意写作,更加大胆"),
    _p("creative-wild", 2.0, 0.2, 0.5, "creative writing, wildest", "创意写作,最狂放"),
    _p("novel", 2.0, 0.15, 0.3, "continue a novel", "小说续写", fmt="raw"),
    _p("precise", 1.0, 0.2, 0.2, "Q&A on material, summaries, translation", "材料问答、摘要、翻译"),
    _p("precise-strict", 1.0, 0.1, 0.2, "mechanical Q&A, more literal", "机械问答,更严格"),
    _p(
        "exact",
        1.0,
        0.0,
        0.2,
        "yes/no, multiple choice, numbers: always the likeliest token",
        "是非题、选择题、数字:总取最可能的词",
    ),
    _p("keywords", 1.0, 0.0, 0.0, "keyword extraction (no penalties)", "关键词提取(无惩罚)", fmt="instruction"),
)
