"""Ensemble costs measured in-process (no transport): concurrency of branches, overhead per step.

    python bench/ensembles.py [--requests 300]

* diamond: two Python sleeper branches of 100 ms each behind one ensemble; one request should
  take ~100 ms (branches run at once), not ~200 ms.
* overhead: an ensemble of N Python identity steps against the same N calls made one after the
  other with ``core.infer`` (what a client or BLS chain would do in-process). The difference per
  step is what the ensemble scheduler adds. Steps are the Triton ``model.py`` files of
  ``bench/models/identity``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nereid.server.core import InferenceCore
from nereid.server.types import InferRequest, Tensor

HERE = Path(__file__).resolve().parent
SLEEP_MODEL = """
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.1)
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())])
            for r in requests
        ]
"""


def _step(model: str, src: str, dst: str) -> str:
    return (
        f'{{ model_name: "{model}" model_version: -1 input_map {{ key: "INPUT0" value: "{src}" }} '
        f'output_map {{ key: "OUTPUT0" value: "{dst}" }} }}'
    )


def _ensemble(root: Path, name: str, outputs: list[str], steps: list[str]) -> None:
    (root / name / "1").mkdir(parents=True)
    outs = ", ".join(f'{{ name: "{o}" data_type: TYPE_FP32 dims: [ -1 ] }}' for o in outputs)
    (root / name / "config.pbtxt").write_text(
        f'platform: "ensemble"\nmax_batch_size: 32\n'
        f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]\noutput [ {outs} ]\n'
        f"ensemble_scheduling {{ step [ {', '.join(steps)} ] }}\n"
    )


def build(root: Path, steps: int) -> None:
    shutil.copytree(HERE / "models" / "identity", root / "identity")
    config = (HERE / "models" / "identity" / "config.pbtxt").read_text()
    for branch in ("sleep_a", "sleep_b"):
        (root / branch / "1").mkdir(parents=True)
        (root / branch / "1" / "model.py").write_text(SLEEP_MODEL)
        (root / branch / "config.pbtxt").write_text(config.replace('"identity"', f'"{branch}"'))
    _ensemble(root, "diamond", ["A", "B"], [_step("sleep_a", "INPUT0", "A"), _step("sleep_b", "INPUT0", "B")])
    names = ["INPUT0", *[f"t{i}" for i in range(1, steps)], "OUTPUT0"]
    chain = [_step("identity", names[i], names[i + 1]) for i in range(steps)]
    _ensemble(root, "chain", ["OUTPUT0"], chain)


def request(model: str, data: np.ndarray) -> InferRequest:
    return InferRequest(model, [Tensor("INPUT0", "FP32", data.shape, data)])


async def timed(core: InferenceCore, make, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await make()
        samples.append(time.perf_counter() - start)
    return samples


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, args.steps)
        core = InferenceCore([root])
        await core.start()
        data = np.ones((1, 16), np.float32)
        diamond = await timed(core, lambda: core.infer(request("diamond", data)), 10)

        async def direct() -> None:
            x = data
            for _ in range(args.steps):
                x = (await core.infer(request("identity", x))).outputs[0].data

        for _ in range(2):  # alternate, so drift in the machine's load hits both
            direct_s = await timed(core, direct, args.requests)
            chain_s = await timed(core, lambda: core.infer(request("chain", data)), args.requests)
        await core.stop()
    med = statistics.median
    print(
        f"diamond (2 x 100 ms branches): median {med(diamond) * 1000:.1f} ms, max {max(diamond) * 1000:.1f} ms"
    )
    per_step = (med(chain_s) - med(direct_s)) / args.steps * 1e6
    print(
        f"{args.steps}-step chain of Python identity: direct calls median {med(direct_s) * 1e6:.0f} us, "
        f"ensemble median {med(chain_s) * 1e6:.0f} us; ensemble overhead {per_step:.0f} us per step"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--steps", type=int, default=3)
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
