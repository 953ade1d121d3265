"""Shadow traffic: a copy of a served request goes to a candidate version after the primary answered.

The copy is queued on the candidate from a loop callback scheduled once the primary's response
exists, so the primary never waits for it; the candidate's answer is compared with the
primary's and only counted (never returned).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from nereid.server.errors import ServingError
from nereid.server.model_version import ModelVersion
from nereid.server.responses import UnaryResponse
from nereid.server.routing.config import Shadow
from nereid.server.routing.policy import RoutingPolicy
from nereid.server.types import InferRequest, InferResponse, ResponseSender

log = logging.getLogger(__name__)

Admit = Callable[[ModelVersion, InferRequest, ResponseSender], None]


def outputs_agree(primary: InferResponse, shadow: InferResponse, spec: Shadow) -> bool:
    """Same outputs (names, shapes, datatypes) with values within ``atol + rtol * |primary|``."""
    if shadow.error is not None:
        return False
    theirs = {t.name: t for t in shadow.outputs}
    if len(theirs) != len(primary.outputs):
        return False
    for mine in primary.outputs:
        other = theirs.get(mine.name)
        if other is None or other.datatype != mine.datatype or tuple(other.shape) != tuple(mine.shape):
            return False
        a, b = mine.data, other.data
        if a.dtype.kind in "fc":
            if not np.allclose(a, b, rtol=spec.rtol, atol=spec.atol, equal_nan=True):
                return False
        elif not np.array_equal(a, b):
            return False
    return True


async def run_shadow(
    policy: RoutingPolicy,
    candidate: ModelVersion,
    request: InferRequest,
    primary: InferResponse,
    admit: Admit,
) -> None:
    """Send the copy, wait for it, compare, count. Never raises."""
    spec = policy.config.shadow
    assert spec is not None
    stats = policy.shadow_stats
    copy = InferRequest(
        request.model_name,
        request.inputs,
        model_version=str(candidate.version),
        id=request.id,
        outputs=request.outputs,
        parameters=request.parameters,
    )
    sender = UnaryResponse(asyncio.get_running_loop())
    start = time.monotonic_ns()
    try:
        admit(candidate, copy, sender)
        response = await sender.wait()
    except ServingError as exc:
        response = InferResponse(error=exc)
    except Exception as exc:  # a shadow must never hurt the server
        log.exception("shadow request to '%s' version %d failed", candidate.name, candidate.version)
        response = InferResponse(error=ServingError(str(exc)))
    stats.latency_ns += time.monotonic_ns() - start
    ok = response.error is None
    candidate.stats.record_request(ok, time.monotonic_ns() - copy.arrival_ns, None, "BACKEND")
    agreed = outputs_agree(primary, response, spec)
    if not ok:
        stats.error += 1
    elif agreed:
        stats.agree += 1
    else:
        stats.disagree += 1
    if policy.canary is not None and policy.canary.canary.candidate == candidate.version:
        policy.canary.record_agreement(agreed)
