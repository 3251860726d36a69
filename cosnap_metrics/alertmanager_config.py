"""`cosnap-metrics alertmanager config`: the shipped Alertmanager configuration
(sinks/notify/alertmanager/alertmanager.yml, a template) rendered with the secrets and addresses
of the environment, beside its notification texts (docs/reference.md, "Routing").

Alertmanager reads secrets from its file or from `*_file` fields, never from the environment;
so the file is rendered where the environment is (docker-compose runs this before Alertmanager)
and written mode 0600. A placeholder is a whole YAML value: `${NAME}` or `${NAME:-default}`; an
empty variable counts as unset, `true` and `false` become booleans, and a key whose value comes
out empty is left out. An integration (an item of a `*_configs` list) naming a variable that is
not set is left out and reported; one outside any integration is an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import sinks.notify
from plumbing.private_files import replace_private
from schemas.errors import CosnapError

TEMPLATE_DIR = Path(sinks.notify.__file__).parent / "alertmanager"
CONFIG_NAME, TEXTS_NAME = "alertmanager.yml", "cosnap.tmpl"
_PLACEHOLDER = re.compile(r"^\$\{([A-Z_][A-Z0-9_]*)(?::-(.*))?\}$")


class ConfigError(CosnapError):
    """A variable the configuration cannot do without is not set."""


class _Unset(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass
class Rendered:
    text: str  # the configuration, YAML
    left_out: list[str] = field(default_factory=list)  # "receiver slack-high: ..., X is not set"


def _value(text: str, env: Mapping[str, str]) -> Any:
    found = _PLACEHOLDER.match(text)
    if found is None:
        return text
    value = env.get(found[1]) or found[2]
    if value is None:
        raise _Unset(found[1])
    return {"true": True, "false": False}.get(value, value)


def _render(node: Any, env: Mapping[str, str], receiver: str, left_out: list[str]) -> Any:
    if isinstance(node, str):
        return _value(node, env)
    if isinstance(node, list):
        return [_render(item, env, receiver, left_out) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    receiver = str(node.get("name", receiver))
    for key, value in node.items():
        if str(key).endswith("_configs") and isinstance(value, list):
            kept = []
            for integration in value:
                try:
                    kept.append(_render(integration, env, receiver, left_out))
                except _Unset as unset:
                    left_out.append(f"receiver {receiver}: {key} left out, {unset.name} is not set")
            if kept:
                out[key] = kept
            continue
        rendered = _render(value, env, receiver, left_out)
        if rendered != "":
            out[key] = rendered
    return out


def render(env: Mapping[str, str], template: Path = TEMPLATE_DIR / CONFIG_NAME) -> Rendered:
    """The template rendered with `env`; raises ConfigError for a variable outside any integration
    that is not set."""
    left_out: list[str] = []
    try:
        config = _render(yaml.safe_load(template.read_text()), env, "", left_out)
    except _Unset as unset:
        raise ConfigError(f"{unset.name} must be set ({template.name})") from None
    return Rendered(yaml.safe_dump(config, sort_keys=False, width=120), left_out)


def write_config(
    out: Path, env: Mapping[str, str] = os.environ, owner: tuple[int, int] | None = None
) -> Rendered:
    """Render the configuration into `out` (mode 0600) and its notification texts beside it,
    owned by `owner` (uid, gid) when given: Alertmanager's user, where it is not this one."""
    rendered = render(env)
    texts = out.with_name(TEXTS_NAME)
    replace_private(out, rendered.text)
    replace_private(texts, (TEMPLATE_DIR / TEXTS_NAME).read_text())
    if owner is not None:
        for path in (out, texts):
            os.chown(path, *owner)
    return rendered
