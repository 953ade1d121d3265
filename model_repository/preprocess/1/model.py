"""Text normalisation, written against Triton's Python backend API.

TEXT [-1, 1] BYTES (UTF-8) -> NORMALIZED [-1, 1] BYTES and LENGTH [-1, 1] INT32 (characters).
"""

import json
import unicodedata

import numpy as np
import triton_python_backend_utils as pb_utils


def normalize(text):
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(text.split())


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        normalized_config = pb_utils.get_output_config_by_name(model_config, "NORMALIZED")
        length_config = pb_utils.get_output_config_by_name(model_config, "LENGTH")
        self.normalized_dtype = pb_utils.triton_string_to_numpy(normalized_config["data_type"])
        self.length_dtype = pb_utils.triton_string_to_numpy(length_config["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            try:
                decoded = [item.decode("utf-8") for item in texts.reshape(-1)]
            except UnicodeDecodeError as exc:
                error = pb_utils.TritonError(f"TEXT must be UTF-8: {exc}", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            normalized = [normalize(text) for text in decoded]
            out_text = np.array([text.encode("utf-8") for text in normalized], dtype=self.normalized_dtype)
            out_length = np.array([len(text) for text in normalized], dtype=self.length_dtype)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("NORMALIZED", out_text.reshape(texts.shape)),
                        pb_utils.Tensor("LENGTH", out_length.reshape(texts.shape)),
                    ]
                )
            )
        return responses

    def finalize(self):
        pb_utils.Logger.log_info("preprocess: finalize")
