"""From a run's ``task`` and ``task-config`` to a configured ``Task``: the import string
("module:attr", Flower's convention; a built-in by its short name), the settings parsed
(a JSON object or a TOML inline table) and validated by the task's pydantic model. Every
failure is a ``TaskError`` naming the task and the field."""

from __future__ import annotations

import importlib
import json
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ValidationError

from client.tasks.api import Task, TaskError

BUILTIN = {
    "digits": "client.tasks.digits:DigitsTask",
    "shakespeare": "client.tasks.shakespeare:ShakespeareTask",
    "causal-lm": "client.tasks.causal_lm:CausalLMTask",
}


def resolve(spec: str) -> type[Task]:
    """The Task subclass ``spec`` names: a built-in's short name or "module:attr"."""
    ref = BUILTIN.get(spec, spec)
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise TaskError(f"task {spec!r}: neither a built-in ({', '.join(sorted(BUILTIN))}) "
                        "nor an import string 'module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskError(f"task {spec!r}: cannot import module {module_name!r} ({exc}); a task "
                        "package must be installed on the coordinator and every worker") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TaskError(f"task {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Task)):
        raise TaskError(f"task {spec!r}: {ref} is a {type(obj).__name__}, not a subclass of "
                        "client.tasks.Task")
    if obj.build_model is Task.build_model:
        raise TaskError(f"task {spec!r}: {ref} does not define build_model")
    if not (isinstance(obj.Settings, type) and issubclass(obj.Settings, BaseModel)):
        raise TaskError(f"task {spec!r}: Settings must be a pydantic BaseModel subclass")
    if obj.kind not in ("classification", "regression"):
        raise TaskError(f"task {spec!r}: kind {obj.kind!r} is not classification or regression")
    return obj


def parse_settings(text: str | Mapping[str, Any], spec: str = "") -> dict[str, Any]:
    """``task-config`` as a dict: a mapping as it is, or a string holding a JSON object or
    a TOML inline table (``{label = "y", hidden = 32}``); "" is no settings."""
    if isinstance(text, Mapping):
        return dict(text)
    text = str(text).strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise TaskError(f"{_task(spec)}task-config is neither a JSON object nor a TOML "
                            f"inline table ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise TaskError(f"{_task(spec)}task-config must be a table of settings, got {text!r}")
    return value


def _task(spec: str) -> str:
    return f"task {spec!r}: " if spec else ""


def canonical(text: str | Mapping[str, Any], spec: str = "") -> str:
    """``task-config`` as canonical JSON (sorted keys): what travels to the nodes."""
    settings = parse_settings(text, spec)
    return json.dumps(settings, sort_keys=True) if settings else ""


def validate_settings(cls: type[Task], spec: str, values: Mapping[str, Any]) -> BaseModel:
    try:
        return cls.Settings.model_validate(dict(values))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            problems.append(f"task-config.{field}: {err['msg']} (got {err.get('input')!r})")
        raise TaskError(f"task {spec!r}: " + "; ".join(problems)) from None


@lru_cache(maxsize=8)
def _load(spec: str, settings_json: str) -> Task:
    cls = resolve(spec)
    settings = validate_settings(cls, spec, json.loads(settings_json) if settings_json else {})
    return cls(settings, ref=spec)


def load_task(spec: str, config: str | Mapping[str, Any] = "") -> Task:
    """The configured task (cached per process: a task may cache its data)."""
    return _load(spec, canonical(config, spec))
