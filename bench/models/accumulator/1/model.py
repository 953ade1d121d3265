"""A stateful accumulator: OUTPUT is the running sum of INPUT over the requests of one sequence.

The running sums live in the model, keyed by ``request.correlation_id()``; the START and END
control inputs (fed by the sequence batcher) reset and drop them. Written as a Triton user writes
it, so the same file runs on Triton and on Nereid.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.totals = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            start = pb_utils.get_input_tensor_by_name(request, "START").as_numpy()
            end = pb_utils.get_input_tensor_by_name(request, "END").as_numpy()
            key = request.correlation_id()
            total = value if start[0, 0] else self.totals.get(key, 0) + value
            if end[0, 0]:
                self.totals.pop(key, None)
            else:
                self.totals[key] = total
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", total.astype(np.float32))])
            )
        return responses
