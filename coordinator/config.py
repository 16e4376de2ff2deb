"""The run's configuration: Flower's run_config turned into a frozen ``MergeConfig``, once,
at the edge. Keys are Flower's hyphenated names ([tool.flwr.app.config] in pyproject.toml);
an unknown key or an out-of-range value fails at start with a message naming the key."""

from __future__ import annotations

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
    min_nodes: int = Field(2, ge=1, alias="min-nodes")
    # SuperNodes that `fedmerge demo` / `fedmerge resume` simulate (deployment: ignored)
    num_clients: int = Field(10, ge=1, alias="num-clients")
    round_timeout: float = Field(600.0, gt=0.0, alias="round-timeout")
    # --- the objective and the server step
    mode: Literal["global", "personal"] = "global"
    optimizer: Literal["sgd", "momentum", "adagrad", "adam", "yogi"] = "sgd"
    server_lr: float = Field(1.0, gt=0.0, alias="server-lr")
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.99, ge=0.0, lt=1.0)
    tau: float = Field(1e-3, gt=0.0)
    lam: float = Field(1.0, gt=0.0)
    combiner: Literal["mean", "fisher", "median", "trimmed-mean", "krum", "multi-krum"] = "mean"
    trim_beta: float = Field(0.1, ge=0.0, lt=0.5, alias="trim-beta")
    krum_byzantine: int = Field(1, ge=0, alias="krum-byzantine")
    clip_norm: float = Field(0.0, ge=0.0, alias="clip-norm")
    # --- validation of updates
    max_update_norm: float = Field(0.0, ge=0.0, alias="max-update-norm")
    max_norm_ratio: float = Field(0.0, ge=0.0, alias="max-norm-ratio")
    max_examples: int = Field(1_000_000, ge=1, le=2**31 - 1, alias="max-examples")
    # --- the clients' task (sent to them in each round's config)
    model: Literal["mlp", "cnn", "gru"] = "mlp"
    dataset: Literal["digits", "shakespeare"] = "digits"
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
        return self

    @property
    def gradient_scale(self) -> float:
        """grad F = -lam sum_i w_i theta_i in personal mode; FedOpt's pseudo-gradient
        (scale 1) in global mode, where theta_i is an E-epoch update, not an optimum."""
        return self.lam if self.mode == "personal" else 1.0

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir).expanduser().resolve()

    def as_run_config(self) -> dict[str, Any]:
        """The hyphenated mapping, as Flower's run_config has it."""
        return self.model_dump(by_alias=True)


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
    unknown = sorted(set(run_config) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    try:
        return MergeConfig.model_validate(dict(run_config))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "config"
            problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid run config: " + "; ".join(problems)) from None
