"""The task API (api.py), how a run names its task (registry.py) and what fedmerge does
with one (runtime.py). Built-in tasks: digits.py, shakespeare.py."""

from client.tasks.api import (
    Arrays,
    Batch,
    DataError,
    LowRank,
    NodeData,
    NoSettings,
    PartitionRequest,
    Splits,
    Task,
    TaskError,
)
from client.tasks.registry import BUILTIN, load_task, resolve

__all__ = [
    "BUILTIN", "Arrays", "Batch", "DataError", "LowRank", "NoSettings", "NodeData",
    "PartitionRequest", "Splits", "Task", "TaskError", "load_task", "resolve",
]
