"""Triton's PyTorch naming conventions: which config tensor is which forward argument or result.

A TorchScript file has no input/output names, so Triton's libtorch backend reads meaning into
the config names, trying three conventions in order (and so does Nereid):

Inputs
    1. ``FORWARD_ARGUMENT``: every config input is the name of an argument of ``forward``.
    2. ``NAMED_INDEX``: every config input is ``<name>__<index>`` (``INPUT__0``, ``INPUT__1``):
       the index is the argument's position.
    3. ``STRICT_CONFIG_ORDERING``: otherwise the config order is the argument order.

Outputs
    1. ``NAMED_INDEX``: every config output is ``<name>__<index>``: the index picks the item of
       the returned tuple/list (a single returned tensor is index 0).
    2. ``STRICT_CONFIG_ORDERING``: otherwise config order is result order.
    A returned ``dict`` is matched by output name instead.

A plan is built once per instance; :meth:`InputPlan.arguments` and :func:`pick_outputs` run
per call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nereid.server.errors import InternalError, InvalidArgument

FORWARD_ARGUMENT = "FORWARD_ARGUMENT"
NAMED_INDEX = "NAMED_INDEX"
STRICT_CONFIG_ORDERING = "STRICT_CONFIG_ORDERING"

_INDEXED = re.compile(r"^.+__(\d+)$")


@dataclass(frozen=True, slots=True)
class Argument:
    """One parameter of ``forward`` (without ``self``)."""

    name: str
    required: bool


@dataclass(frozen=True, slots=True)
class InputPlan:
    """Where each config input goes in the positional call of ``forward``."""

    convention: str
    positions: dict[str, int]  # config input name -> argument position

    def arguments(self, tensors: Mapping[str, Any]) -> list[Any]:
        """Positional arguments; absent (optional) inputs are None, trailing ones left off."""
        args: list[Any] = [None] * (max(self.positions.values(), default=-1) + 1)
        for name, position in self.positions.items():
            args[position] = tensors.get(name)
        while args and args[-1] is None:
            args.pop()
        return args


def _indices(names: Sequence[str]) -> dict[str, int] | None:
    found: dict[str, int] = {}
    for name in names:
        match = _INDEXED.match(name)
        if match is None:
            return None
        found[name] = int(match.group(1))
    return found


def plan_inputs(model: str, names: Sequence[str], forward: Sequence[Argument] | None) -> InputPlan:
    """The input convention for config ``names`` against ``forward``'s parameters.

    ``forward`` is None when the program does not expose its signature (AOTInductor
    packages); then only the index and order conventions apply. Raises InvalidArgument
    when the config cannot fit the signature.
    """
    arg_names = [a.name for a in forward] if forward is not None else None
    if arg_names is not None and names and all(n in arg_names for n in names):
        plan = InputPlan(FORWARD_ARGUMENT, {n: arg_names.index(n) for n in names})
    elif (indices := _indices(names)) is not None and names:
        seen: dict[int, str] = {}
        for name, index in indices.items():
            if index in seen:
                raise InvalidArgument(
                    f"model '{model}': inputs '{seen[index]}' and '{name}' both claim forward argument {index}"
                )
            seen[index] = name
        plan = InputPlan(NAMED_INDEX, indices)
    else:
        plan = InputPlan(STRICT_CONFIG_ORDERING, {n: i for i, n in enumerate(names)})
    if forward is not None:
        _check_signature(model, plan, forward)
    return plan


def _check_signature(model: str, plan: InputPlan, forward: Sequence[Argument]) -> None:
    signature = f"forward({', '.join(a.name for a in forward)})"
    too_far = {n: p for n, p in plan.positions.items() if p >= len(forward)}
    if too_far:
        raise InvalidArgument(
            f"model '{model}': the config has {len(plan.positions)} inputs ({plan.convention} convention) but "
            f"the model's {signature} takes {len(forward)}; inputs {sorted(too_far)} have no argument"
        )
    covered = set(plan.positions.values())
    missing = [a.name for i, a in enumerate(forward) if a.required and i not in covered]
    if missing:
        raise InvalidArgument(
            f"model '{model}': {signature} needs argument(s) {missing} that no config input feeds "
            f"({plan.convention} convention: name inputs after the arguments, or INPUT__<index>)"
        )


def plan_outputs(model: str, names: Sequence[str]) -> dict[str, int]:
    """Config output name -> index in the returned tuple/list."""
    indices = _indices(names)
    if indices is None or not names:
        return {n: i for i, n in enumerate(names)}
    seen: dict[int, str] = {}
    for name, index in indices.items():
        if index in seen:
            raise InvalidArgument(
                f"model '{model}': outputs '{seen[index]}' and '{name}' both claim result {index}"
            )
        seen[index] = name
    return indices


def pick_outputs(
    model: str, result: Any, plan: Mapping[str, int], wanted: set[str]
) -> dict[str, torch.Tensor]:
    """The tensors of ``result`` for the config outputs in ``wanted``."""
    picked: dict[str, torch.Tensor] = {}
    if isinstance(result, Mapping):
        for name in wanted:
            if name not in result:
                raise InternalError(f"model '{model}': forward returned a dict without output '{name}'")
            picked[name] = result[name]
    else:
        if isinstance(result, torch.Tensor):
            items: Sequence[Any] = (result,)
        elif isinstance(result, (tuple, list)):
            items = result
        else:
            raise InternalError(
                f"model '{model}': forward returned {type(result).__name__}; expected a tensor, "
                f"a tuple/list of tensors or a dict of tensors"
            )
        for name in wanted:
            index = plan[name]
            if index >= len(items):
                raise InternalError(
                    f"model '{model}': output '{name}' is result {index} but forward returned {len(items)} value(s)"
                )
            picked[name] = items[index]
    for name, value in picked.items():
        if not isinstance(value, torch.Tensor):
            raise InternalError(f"model '{model}': output '{name}' is a {type(value).__name__}, not a tensor")
    return picked
