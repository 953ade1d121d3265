"""Tiny PyTorch models and model folders for the PyTorch backend tests.

Not a test module: the conftests of ``tests/unit/backends/pytorch`` and
``tests/integration/pytorch`` load it by path (see :func:`load_helpers` there), because
``tests/`` has no packages.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

PLATFORM = "pytorch_libtorch"


class Mix(nn.Module):
    """(x - y, 2x + y): neither output is symmetric in x and y, so argument order shows."""

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return x - y, x * 2 + y


class Affine(nn.Module):
    """y = x @ W.T + b with fixed weights (4 -> 3): rows are independent, so batching is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8 - 0.5)
            self.linear.bias.copy_(torch.tensor([0.25, -0.5, 1.0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class Twice(nn.Module):
    """x * 2 for any numeric dtype (``x | x`` for bool)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.bool:
            return x | x
        return x + x


class Steps(nn.Module):
    """(x + 1, x + 2, x + 3): for picking results by index."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return x + 1, x + 2, x + 3


class Picky(nn.Module):
    """Raises for negative input sums (a runtime error inside the TorchScript interpreter)."""

    def forward(self, x: Tensor) -> Tensor:
        if bool(x.sum() < 0):
            raise RuntimeError("Picky refuses negative input")
        return x


class ScaleOptional(nn.Module):
    """x * scale, where ``scale`` is optional and defaults to 10."""

    def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        if scale is None:
            return x * 10
        return x * scale


class Rows(nn.Module):
    """Returns a single row whatever the batch: a batched model must not do this."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:1]


def script_bytes(module: nn.Module) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module.eval()), buffer)
    return buffer.getvalue()


def export_bytes(module: nn.Module, example: tuple[Tensor, ...], batch_dim: bool = True) -> bytes:
    """A torch.export program (``.pt2``) with dim 0 of every input dynamic when ``batch_dim``."""
    import io

    dynamic = None
    if batch_dim:
        batch = torch.export.Dim("batch", min=1, max=64)
        dynamic = tuple({0: batch} for _ in example)
    program = torch.export.export(module.eval(), example, dynamic_shapes=dynamic)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def tensor_config(entries: list[tuple[str, str, list[int]]]) -> str:
    return ", ".join(
        f'{{ name: "{n}" data_type: TYPE_{t} dims: [ {", ".join(str(d) for d in dims)} ] }}'
        for n, t, dims in entries
    )


def config_text(
    inputs: list[tuple[str, str, list[int]]],
    outputs: list[tuple[str, str, list[int]]],
    max_batch_size: int = 8,
    platform: str = PLATFORM,
    extra: str = "",
) -> str:
    lines = [
        f'platform: "{platform}"' if platform else 'backend: "pytorch"',
        f"max_batch_size: {max_batch_size}",
    ]
    if inputs:
        lines.append(f"input [ {tensor_config(inputs)} ]")
    if outputs:
        lines.append(f"output [ {tensor_config(outputs)} ]")
    lines.append(extra)
    return "\n".join(lines) + "\n"


def write_model(root: Path, name: str, data: bytes, config: str, filename: str = "model.pt") -> Path:
    """``<root>/<name>/config.pbtxt`` plus ``<root>/<name>/1/<filename>``."""
    folder = root / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / filename).write_bytes(data)
    (folder / "config.pbtxt").write_text(config)
    return folder


def standard_models(root: Path) -> None:
    """The models the integration tests serve."""
    f4 = [("INPUT__0", "FP32", [4]), ("INPUT__1", "FP32", [4])]
    write_model(
        root,
        "mix_indexed",
        script_bytes(Mix()),
        config_text(f4, [("OUTPUT__0", "FP32", [4]), ("OUTPUT__1", "FP32", [4])]),
    )
    # By name: config order (y, x) differs from forward's (x, y); outputs by config order.
    write_model(
        root,
        "mix_named",
        script_bytes(Mix()),
        config_text(
            [("y", "FP32", [4]), ("x", "FP32", [4])], [("difference", "FP32", [4]), ("blend", "FP32", [4])]
        ),
    )
    write_model(
        root,
        "affine",
        script_bytes(Affine()),
        config_text(
            [("INPUT__0", "FP32", [4])],
            [("OUTPUT__0", "FP32", [3])],
            max_batch_size=16,
            extra="dynamic_batching { max_queue_delay_microseconds: 50000 }",
        ),
    )
    example = (torch.ones(2, 4), torch.ones(2, 4))
    write_model(
        root,
        "mix_export",
        export_bytes(Mix(), example),
        config_text(f4, [("OUTPUT__0", "FP32", [4]), ("OUTPUT__1", "FP32", [4])], platform="torch_aoti"),
        filename="model.pt2",
    )
