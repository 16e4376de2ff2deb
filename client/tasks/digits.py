"""The built-in ``digits`` task: scikit-learn's 8x8 digits, an MLP (64-128-10) or a CNN.

Simulated nodes get a partition of the pool (client/data.py, the run's partition keys);
a worker's own ``data-dir`` holds train.npz/val.npz or CSV files (client/local_data.py);
the coordinator evaluates on the fixed held-out split."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from client.data import ClientData, PartitionSpec, digits_split, load_partition
from client.local_data import DIGITS_FORMAT, read_arrays_dir
from client.models import CNN, MLP, ModelConfig
from client.tasks.api import Arrays, PartitionRequest, Task


class DigitsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["mlp", "cnn"] = "mlp"
    hidden: int = Field(128, ge=1, description="MLP width")
    channels: int = Field(16, ge=1, description="CNN: first conv's channels")


class DigitsTask(Task):
    Settings = DigitsSettings
    settings: DigitsSettings

    def build_model(self) -> nn.Module:
        s = self.settings
        cfg = ModelConfig(hidden=s.hidden, channels=s.channels)
        return MLP(cfg) if s.model == "mlp" else CNN(cfg)

    def partition(self, request: PartitionRequest) -> ClientData:
        spec = PartitionSpec(request.scheme, request.num_partitions, seed=request.seed,
                             alpha=request.alpha, classes_per_client=request.classes_per_client)
        return load_partition(spec, request.partition_id)

    def read_data_dir(self, directory: Path, seed: int) -> ClientData:
        return read_arrays_dir(directory, DIGITS_FORMAT, seed)

    def central_data(self) -> Arrays:
        _, _, x, y = digits_split()
        return Arrays(x, y)
