"""Label mapper of the ``sentiment`` ensemble: PROBS [-1, 3] FP32 -> LABEL [-1, 1] BYTES, SCORE [-1, 1] FP32."""

import numpy as np
import triton_python_backend_utils as pb_utils

CLASSES = (b"negative", b"neutral", b"positive")


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            probs = pb_utils.get_input_tensor_by_name(request, "PROBS").as_numpy()
            best = probs.argmax(axis=1)
            labels = np.array([[CLASSES[i]] for i in best], dtype=np.object_)
            scores = probs[np.arange(len(best)), best].reshape(-1, 1).astype(np.float32)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("LABEL", labels), pb_utils.Tensor("SCORE", scores)]
                )
            )
        return responses
