"""The built-in ``shakespeare`` task: next-character prediction with a character GRU,
one simulated node per speaking role (LEAF's split, client/shakespeare.py); roles are
the natural partitions, so the run's partition scheme does not apply. The coordinator
evaluates on every role's held-out lines."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from client import shakespeare
from client.data import ClientData
from client.models import CharGRU, CharGRUConfig
from client.tasks.api import Arrays, PartitionRequest, Task


class ShakespeareSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding: int = Field(8, ge=1)
    hidden: int = Field(128, ge=1)
    layers: int = Field(1, ge=1)


class ShakespeareTask(Task):
    Settings = ShakespeareSettings
    settings: ShakespeareSettings

    def build_model(self) -> nn.Module:
        s = self.settings
        return CharGRU(gru=CharGRUConfig(embedding=s.embedding, hidden=s.hidden, layers=s.layers))

    def partition(self, request: PartitionRequest) -> ClientData:
        roles = shakespeare.client_roles()
        if request.num_partitions > len(roles):
            raise ValueError(f"num-partitions={request.num_partitions} but only {len(roles)} "
                             f"roles have >= {shakespeare.min_lines()} lines")
        return shakespeare.role_data(roles[request.partition_id])

    def central_data(self) -> Arrays:
        return Arrays(*shakespeare.central_test_set())
