"""Fully connected networks with one elementwise activation (Section 3 of the paper).

.. math::
    z^{(I)} = W^{(I)} a^{(I-1)} + b^{(I)}, \\quad a^{(I)} = σ(z^{(I)}), \\quad a^{(0)} = x,

for I = 1 … L; the logits are z^{(L)} (no activation on the last layer). ``widths`` lists
N_0 = D, N_1, …, N_L = C, so ``MLP([784, 1024, 1024, 10])`` has L = 3 layers.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import torch
from torch import nn

from . import checks
from .activations import Activation, get_activation

Tensor = torch.Tensor

__all__ = ["MLP"]


class MLP(nn.Module):
    """An L-layer fully connected network, L ≥ 2, with PyTorch's default initialization.

    Args:
        widths: ``[D, N_1, …, N_{L-1}, C]``, at least three positive integers.
        activation: ``"softplus"``, ``"sigmoid"``, ``"tanh"`` or ``"relu"``.

    Besides the weights, the module keeps one pair of buffers per layer, ``power_u_{I}`` (N_I,)
    and ``power_v_{I}`` (N_{I-1},): the persistent power-iteration vectors that
    :func:`crc_core.curvature.curvature_penalty` advances by one step per call during training.
    They are saved with the weights.

    Example:
        >>> model = MLP([784, 1024, 1024, 10], activation="softplus")
        >>> model(torch.rand(5, 784)).shape
        torch.Size([5, 10])
    """

    def __init__(self, widths: Sequence[int], activation: str | Activation = "softplus"):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 3 or any(w <= 0 for w in widths):
            raise ValueError(
                "widths must list at least three positive sizes [D, N_1, ..., C] (L >= 2 layers), "
                f"got {widths}"
            )
        self.widths: List[int] = widths
        self.activation: Activation = get_activation(activation)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            # Deterministic start (no draw from the global RNG, so the weights equal those of a
            # plain nn.Linear stack built with the same seed).
            self.register_buffer(f"power_u_{i}", torch.full((b,), b ** -0.5))
            self.register_buffer(f"power_v_{i}", torch.full((a,), a ** -0.5))

    # ----------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """L, the number of linear layers."""
        return len(self.layers)

    @property
    def input_dim(self) -> int:
        """D."""
        return self.widths[0]

    @property
    def num_classes(self) -> int:
        """C = N_L."""
        return self.widths[-1]

    @property
    def weights(self) -> List[Tensor]:
        """[W^(1), …, W^(L)], W^(I) of shape (N_I, N_{I-1})."""
        return [layer.weight for layer in self.layers]

    @property
    def biases(self) -> List[Tensor]:
        """[b^(1), …, b^(L)]."""
        return [layer.bias for layer in self.layers]

    @property
    def spec(self) -> Dict:
        """A JSON-serializable description from which the architecture can be rebuilt."""
        return {"widths": list(self.widths), "activation": self.activation.name}

    def power_vectors(self, layer: int) -> tuple[Tensor, Tensor]:
        """The persistent (u, v) power-iteration buffers of layer ``layer`` (1-based)."""
        return getattr(self, f"power_u_{layer}"), getattr(self, f"power_v_{layer}")

    def extra_repr(self) -> str:
        return f"widths={self.widths}, activation={self.activation.name!r}"

    # ----------------------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> Tensor:
        """Validate a batch ``x`` and flatten images: returns (B, D) (:func:`crc_core.checks.check_inputs`).

        Raises:
            TypeError: x is not a tensor.
            ValueError: for a wrong shape, an integer dtype, or NaN / ±inf (naming the first row).
        """
        return checks.check_inputs(self, x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits z^(L)(x): (B, D) → (B, C)."""
        return self.preactivations(x)[-1]

    def preactivations(self, x: Tensor) -> List[Tensor]:
        """[z^(1), …, z^(L)] for a batch: each (B, N_I)."""
        x = self.check_input(x)
        zs = []
        a = x
        for i, layer in enumerate(self.layers):
            z = layer(a)
            zs.append(z)
            if i < len(self.layers) - 1:
                a = self.activation.fn(z)
        return zs

    # ----------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Save the spec and the state dict (weights and power-iteration buffers) to ``path``."""
        torch.save({"spec": self.spec, "state_dict": self.state_dict()}, Path(path))

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device | None = "cpu") -> "MLP":
        """Load a network written by :meth:`save`."""
        blob = torch.load(Path(path), map_location=map_location, weights_only=True)
        if not isinstance(blob, dict) or "spec" not in blob or "state_dict" not in blob:
            raise ValueError(
                f"{path} is not a file written by MLP.save (expected keys 'spec' and 'state_dict'); "
                "for a plain state dict use MLP.from_state_dict"
            )
        model = cls(blob["spec"]["widths"], blob["spec"]["activation"])
        model.load_state_dict(blob["state_dict"])
        return model

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor], activation: str | Activation) -> "MLP":
        """Build an MLP from the weights of a fully connected net trained elsewhere.

        Accepted key layouts (a leading ``module.`` from DataParallel is stripped):
        this class's own ``layers.{i}.weight``; ``nn.Sequential`` indices ``{k}.weight`` (Linear
        layers at any indices, e.g. 0, 2, 4 with activations between); named layers
        ``fc1.weight``, ``fc2.weight``, … as in the authors' public code. Each layer needs a
        weight and a bias; consecutive shapes must chain.

        Args:
            state_dict: name → tensor.
            activation: the activation the net was trained with (it is not stored in weights).

        Raises:
            ValueError: if the layout is not recognized or the shapes do not chain.
        """
        sd = {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}
        patterns = [r"^layers\.(\d+)\.(weight|bias)$", r"^(\d+)\.(weight|bias)$", r"^fc(\d+)\.(weight|bias)$"]
        for pattern in patterns:
            found: Dict[int, Dict[str, Tensor]] = {}
            for key, value in sd.items():
                match = re.match(pattern, key)
                if match:
                    found.setdefault(int(match.group(1)), {})[match.group(2)] = value
            if found:
                break
        else:
            raise ValueError(
                "unrecognized state dict layout: expected keys like 'layers.0.weight', '0.weight' "
                f"(nn.Sequential) or 'fc1.weight'; got {sorted(sd)[:6]}"
            )
        ordered = [found[k] for k in sorted(found)]
        for index, entry in zip(sorted(found), ordered):
            if set(entry) != {"weight", "bias"}:
                raise ValueError(f"layer {index} needs both a weight and a bias, found {sorted(entry)}")
        widths = [ordered[0]["weight"].shape[1]] + [entry["weight"].shape[0] for entry in ordered]
        for prev, entry in zip(ordered[:-1], ordered[1:]):
            if entry["weight"].shape[1] != prev["weight"].shape[0]:
                raise ValueError(
                    f"layer shapes do not chain: {tuple(prev['weight'].shape)} then "
                    f"{tuple(entry['weight'].shape)}"
                )
        model = cls(widths, activation)
        with torch.no_grad():
            for layer, entry in zip(model.layers, ordered):
                layer.weight.copy_(entry["weight"])
                layer.bias.copy_(entry["bias"])
        return model
