"""Models for the clients' tasks, configured by one dataclass each (nanoGPT's shape)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ModelConfig:
    in_features: int = 64  # digits: 8 x 8 pixels
    hidden: int = 128  # MLP width: 64-128-10, the reference setting of bench/
    num_classes: int = 10
    channels: int = 16  # CNN: first conv's channels, doubled in the second


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.in_features, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)  # (B, 64)
        return self.fc2(torch.relu(self.fc1(x)))  # (B, 10)


class CNN(nn.Module):
    """Two 3x3 convolutions and a linear head for 8 x 8 images."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.head = nn.Linear(2 * c * 4 * 4, cfg.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.view(-1, 1, 8, 8)  # (B, 1, 8, 8)
        x = torch.relu(self.conv1(x))  # (B, c, 8, 8)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)  # (B, 2c, 4, 4)
        return self.head(x.flatten(1))  # (B, 10)


def build_model(name: str, *, seed: int = 0, cfg: ModelConfig | None = None) -> nn.Module:
    """A freshly initialised model; the same ``seed`` gives the same weights."""
    cfg = cfg or ModelConfig()
    kinds: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "gru": CharGRU}
    if name not in kinds:
        raise ValueError(f"unknown model {name!r}; known: {sorted(kinds)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return kinds[name](cfg)


@dataclass(frozen=True)
class CharGRUConfig:
    vocab_size: int = 96  # client/shakespeare.py: 0 = other, 1..95 = printable ASCII
    embedding: int = 8
    hidden: int = 128
    layers: int = 1


class CharGRU(nn.Module):
    """Next-character prediction (LEAF's Shakespeare task): embed the characters, run a
    GRU over the window, predict the next character from the last hidden state."""

    def __init__(self, cfg: ModelConfig | None = None, gru: CharGRUConfig | None = None) -> None:
        super().__init__()  # ``cfg`` (the image models' config) is not used
        g = gru or CharGRUConfig()
        self.embed = nn.Embedding(g.vocab_size, g.embedding)
        self.gru = nn.GRU(g.embedding, g.hidden, num_layers=g.layers, batch_first=True)
        self.head = nn.Linear(g.hidden, g.vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.gru(self.embed(x))  # (B, T) -> (B, T, E) -> (B, T, H)
        return self.head(h[:, -1])  # (B, V)
