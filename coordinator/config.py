"""The run's configuration: Flower's run_config turned into a frozen ``MergeConfig``, once,
at the edge. Keys are Flower's hyphenated names ([tool.flwr.app.config] in pyproject.toml);
an unknown key or an out-of-range value fails at start with a message naming the key."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from client.tasks.api import TaskError

# Run-config keys of older versions, still read (with a warning): the built-in task's name
# and its model are now `task` and `task-config`.
DEPRECATED_KEYS = ("model", "dataset")


class ConfigError(ValueError):
    """The run configuration is invalid; the message names each offending key."""


class MergeConfig(BaseModel):
    """Every knob of a run. Field aliases are the run_config keys."""

    # NaN or an infinity is never a meaningful knob (a NaN would even pass gt/lt checks).
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True,
                              allow_inf_nan=False)

    # --- rounds and sampling
    num_server_rounds: int = Field(5, ge=1, alias="num-server-rounds")
    fraction_train: float = Field(1.0, gt=0.0, le=1.0, alias="fraction-train")
    fraction_evaluate: float = Field(1.0, ge=0.0, le=1.0, alias="fraction-evaluate")
    # the clients' evaluation of theta: in the train reply (one exchange per round), in
    # its own evaluate exchange, or none (the central evaluation runs in every mode)
    federated_evaluation: Literal["folded", "separate", "off"] = Field(
        "folded", alias="federated-evaluation")
    min_nodes: int = Field(2, ge=1, alias="min-nodes")
    # SuperNodes that `fedmerge demo` / `fedmerge resume` simulate (deployment: ignored)
    num_clients: int = Field(10, ge=1, alias="num-clients")
    round_timeout: float = Field(600.0, gt=0.0, alias="round-timeout")
    # --- asynchronous buffered merges (docs/async.md); in async mode a "round" is a version
    merge: Literal["sync", "async"] = "sync"
    buffer_size: int = Field(4, ge=1, alias="buffer-size")  # M replies per merge step
    concurrency: int = Field(0, ge=0)  # nodes training at once; 0: every connected node
    staleness: Literal["constant", "polynomial", "hinge"] = "polynomial"
    staleness_exponent: float = Field(0.5, ge=0.0, alias="staleness-exponent")
    staleness_hinge: int = Field(4, ge=0, alias="staleness-hinge")
    max_staleness: int = Field(20, ge=0, alias="max-staleness")
    # --- the objective and the server step
    mode: Literal["global", "personal"] = "global"
    optimizer: Literal["sgd", "momentum", "adagrad", "adam", "yogi"] = "sgd"
    server_lr: float = Field(1.0, gt=0.0, alias="server-lr")
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.99, ge=0.0, lt=1.0)
    tau: float = Field(1e-3, gt=0.0)
    lam: float = Field(1.0, gt=0.0)
    combiner: Literal["mean", "fisher", "median", "trimmed-mean", "krum", "multi-krum",
                      "bucketed-median", "bucketed-trimmed-mean", "bucketed-krum",
                      "bucketed-multi-krum", "centered-clipping", "fltrust"] = "mean"
    trim_beta: float = Field(0.1, ge=0.0, lt=0.5, alias="trim-beta")
    krum_byzantine: int = Field(1, ge=0, alias="krum-byzantine")
    clip_norm: float = Field(0.0, ge=0.0, alias="clip-norm")
    # robust rules for non-IID clients (docs/robustness.md)
    bucket_size: int = Field(2, ge=1, alias="bucket-size")
    cc_tau: float = Field(0.0, ge=0.0, alias="cc-tau")  # 0 = the round's median distance
    cc_iterations: int = Field(3, ge=1, le=100, alias="cc-iterations")
    fltrust_root_size: int = Field(100, ge=1, alias="fltrust-root-size")
    fltrust_scale: Literal["server", "median"] = Field("server", alias="fltrust-scale")
    fltrust_byzantine: int = Field(0, ge=0, alias="fltrust-byzantine")
    # --- validation of updates
    max_update_norm: float = Field(0.0, ge=0.0, alias="max-update-norm")
    max_norm_ratio: float = Field(0.0, ge=0.0, alias="max-norm-ratio")
    norm_ratio_byzantine: int = Field(0, ge=0, alias="norm-ratio-byzantine")
    max_examples: int = Field(1_000_000, ge=1, le=2**31 - 1, alias="max-examples")
    # --- the merge's own speed: workers of the single-pass mean; 0 = by the model's size
    merge_threads: int = Field(0, ge=0, le=256, alias="merge-threads")
    # --- user-level differential privacy (docs/privacy.md); 0 = unset / automatic
    dp: Literal["off", "central"] = "off"
    dp_clip: float = Field(0.0, ge=0.0, alias="dp-clip")
    dp_noise_multiplier: float = Field(0.0, ge=0.0, alias="dp-noise-multiplier")
    dp_adaptive_clip: bool = Field(False, alias="dp-adaptive-clip")
    dp_target_quantile: float = Field(0.5, gt=0.0, lt=1.0, alias="dp-target-quantile")
    dp_clip_lr: float = Field(0.2, gt=0.0, alias="dp-clip-lr")
    dp_quantile_noise: float = Field(0.05, gt=0.0, alias="dp-quantile-noise")
    dp_delta: float = Field(0.0, ge=0.0, lt=1.0, alias="dp-delta")
    dp_epsilon_budget: float = Field(0.0, ge=0.0, alias="dp-epsilon-budget")
    # --- the clients' task (sent to them in each round's config; client/tasks/)
    task: str = "digits"  # a built-in (digits, shakespeare) or an import string "module:attr"
    task_config: str = Field("", alias="task-config")  # its settings: JSON or TOML inline table
    partition: Literal["iid", "dirichlet", "pathological"] = "dirichlet"
    dirichlet_alpha: float = Field(0.5, gt=0.0, alias="dirichlet-alpha")
    classes_per_client: int = Field(2, ge=1, le=10, alias="classes-per-client")
    seed: int = Field(0, ge=0)
    local_epochs: int = Field(2, ge=1, alias="local-epochs")
    local_lr: float = Field(0.05, gt=0.0, alias="local-lr")
    batch_size: int = Field(32, ge=1, alias="batch-size")
    prox_mu: float = Field(0.0, ge=0.0, alias="prox-mu")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # --- where things go
    db: str = ""
    out_dir: str = Field("~/.fedmerge", alias="out-dir")
    run_name: str = Field("", alias="run-name")
    resume_run: str = Field("", alias="resume-run")

    @model_validator(mode="before")
    @classmethod
    def _deprecated_keys(cls, data: Any) -> Any:
        return task_from_deprecated_keys(data) if isinstance(data, Mapping) else data

    @field_validator("task_config", mode="before")
    @classmethod
    def _canonical_task_config(cls, value: Any) -> str:
        from client.tasks.registry import canonical

        try:
            return canonical(value if isinstance(value, Mapping) else str(value))
        except TaskError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("out_dir")
    @classmethod
    def _usable_dir(cls, value: str) -> str:
        try:
            Path(value).expanduser().resolve()
        except (ValueError, RuntimeError, OSError) as exc:  # NUL byte, ~nosuchuser
            raise ValueError(f"not a usable path: {exc}") from None
        return value

    @field_validator("db")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value:
            try:
                make_url(value)
            except ArgumentError as exc:
                raise ValueError(f"not a SQLAlchemy database URL: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MergeConfig:
        if self.combiner in ("krum", "multi-krum") and self.min_nodes < 2 * self.krum_byzantine + 3:
            raise ValueError(
                f"min-nodes: combiner {self.combiner} with krum-byzantine="
                f"{self.krum_byzantine} needs min-nodes >= {2 * self.krum_byzantine + 3}"
            )
        self._check_privacy()
        self._check_async()
        return self

    def _check_async(self) -> None:
        """Async keys only with merge async, and no combination it cannot honour."""
        keys = ("buffer-size", "concurrency", "staleness", "staleness-exponent",
                "staleness-hinge", "max-staleness")
        if self.merge == "sync":
            defaults = MergeConfig.model_construct().as_run_config()
            now = self.as_run_config()
            stray = [k for k in keys if now[k] != defaults[k]]
            if stray:
                raise ValueError(f"{', '.join(stray)}: set while merge is sync (it would do "
                                 'nothing): set merge = "async" or leave it out')
            return
        if self.dp != "off":
            raise ValueError("merge: dp central accounts for sampled synchronous rounds; "
                             'use merge = "sync" with dp')
        byzantine = self.krum_byzantine
        if self.combiner in ("krum", "multi-krum") and self.buffer_size < 2 * byzantine + 3:
            raise ValueError(f"buffer-size: combiner {self.combiner} with krum-byzantine="
                             f"{byzantine} needs buffer-size >= {2 * byzantine + 3}")

    def _check_privacy(self) -> None:
        """dp-* keys only with dp on, and no combination that voids the guarantee."""
        dp_keys = {k: v for k, v in self.as_run_config().items() if k.startswith("dp-")}
        if self.dp == "off":
            defaults = MergeConfig.model_construct().as_run_config()
            stray = sorted(k for k, v in dp_keys.items() if v != defaults[k])
            if stray:
                raise ValueError(f"{', '.join(stray)}: set while dp is off (it would protect "
                                 'nothing): set dp = "central" or leave it out')
            return
        voiding = {
            "dp-clip": (self.dp_clip <= 0, "must be > 0 with dp central"),
            "dp-noise-multiplier": (self.dp_noise_multiplier <= 0, "must be > 0 with dp central"),
            "combiner": (self.combiner != "mean", "dp central needs the mean (the DP mean "
                         "replaces it); robust and fisher combiners void the guarantee"),
            "clip-norm": (self.clip_norm > 0, "dp central clips to dp-clip; leave clip-norm 0"),
            "max-norm-ratio": (self.max_norm_ratio > 0, "with dp central a client's fate must "
                               "not depend on other clients' norms; leave it 0"),
        }
        for key, (bad, why) in voiding.items():
            if bad:
                raise ValueError(f"{key}: {why}")
        from coordinator.privacy import plan_of, sample_size  # dp-accounting, only if dp on

        m = sample_size(self.num_clients, self.fraction_train, self.min_nodes)
        if m > self.num_clients:
            raise ValueError(f"num-clients: dp central samples {m} clients per round "
                             f"(min-nodes, fraction-train) out of num-clients={self.num_clients}")
        plan = plan_of(self)
        if plan is not None and plan.rounds_allowed(1) < 1:
            raise ValueError(f"dp-epsilon-budget: {self.dp_epsilon_budget:g} is below one "
                             f"round's epsilon {plan.epsilon(1):.4g}")

    @property
    def client_evaluation(self) -> str:
        """How the clients evaluate theta: ``federated-evaluation``, or "off" when
        ``fraction-evaluate`` is 0 (no client is asked) or the merge is async (the
        buffered loop records no client evaluation: its nodes are busy training)."""
        if self.fraction_evaluate == 0 or self.merge == "async":
            return "off"
        return self.federated_evaluation

    @property
    def gradient_scale(self) -> float:
        """grad F = -lam sum_i w_i theta_i in personal mode; FedOpt's pseudo-gradient
        (scale 1) in global mode, where theta_i is an E-epoch update, not an optimum."""
        return self.lam if self.mode == "personal" else 1.0

    @property
    def out_path(self) -> Path:
        from coordinator.home import out_dir_or_home

        return out_dir_or_home(self.out_dir)  # the default follows $FEDMERGE_HOME

    def as_run_config(self) -> dict[str, Any]:
        """The hyphenated mapping, as Flower's run_config has it."""
        return self.model_dump(by_alias=True)


def task_from_deprecated_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """``model``/``dataset`` as the ``task``/``task-config`` they stand for, with a warning
    that says what to write instead."""
    out = dict(data)
    model, dataset = out.pop("model", None), out.pop("dataset", None)
    if model is None and dataset is None:
        return out
    task = "shakespeare" if "shakespeare" in (dataset, model) or model == "gru" else "digits"
    given = out.get("task", task)
    if given != task:
        raise ValueError(f"task: {given!r} conflicts with the deprecated key(s) model/dataset "
                         f"(they mean task {task!r}); give only task and task-config")
    out["task"] = task
    instead = f'task="{task}"'
    if task == "digits" and model is not None:
        from client.tasks.registry import parse_settings

        settings = {**parse_settings(out.get("task-config", ""), task), "model": model}
        out["task-config"] = json.dumps(settings, sort_keys=True)
        instead += f" task-config='{{model=\"{model}\"}}'"
    old = [k for k, v in (("model", model), ("dataset", dataset)) if v is not None]
    message = f"run-config key(s) {', '.join(old)} deprecated: write {instead}"
    warnings.warn(message, DeprecationWarning, stacklevel=2)
    logging.getLogger(__name__).warning(message)
    return out

def resume_overrides(
    stored: Mapping[str, Any], cfg: MergeConfig, keys: tuple[str, ...]
) -> dict[str, tuple[Any, Any]]:
    """Of ``keys``, those ``cfg`` was given explicitly (not defaulted) with a value other
    than the ``stored`` run config's: key -> (stored value, given value)."""
    given = {MergeConfig.model_fields[name].alias or name for name in cfg.model_fields_set}
    now = cfg.as_run_config()
    return {k: (stored.get(k), now[k]) for k in keys if k in given and stored.get(k) != now[k]}


def parse_run_config(run_config: Mapping[str, Any]) -> MergeConfig:
    """Validate Flower's run_config. Raises ``ConfigError`` naming every bad key."""
    known = {f.alias or name for name, f in MergeConfig.model_fields.items()}
    known.update(DEPRECATED_KEYS)
    unknown = sorted(set(run_config) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    try:
        cfg = MergeConfig.model_validate(dict(run_config))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "config"
            problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid run config: " + "; ".join(problems)) from None
    check_task(cfg)
    return cfg


def check_task(cfg: MergeConfig) -> None:
    """The task resolves and its settings validate, at start (the message names the task
    and the field)."""
    from client.tasks.registry import load_task

    try:
        task = load_task(cfg.task, cfg.task_config)
    except TaskError as exc:
        raise ConfigError(f"invalid run config: {exc}") from None
    if cfg.combiner == "fltrust" and task.central_data() is None:
        raise ConfigError(f"invalid run config: combiner: fltrust needs the coordinator's "
                          f"held-out data for its root set, and task {cfg.task!r} has none; "
                          "choose another combiner (centered-clipping needs no data)")
