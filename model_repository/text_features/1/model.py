"""Text normaliser of the ``sentiment`` ensemble, written against Triton's Python backend API.

TEXT [-1, 1] BYTES (UTF-8) -> FEATURES [-1, 24] FP32 (counts of the vocabulary's words, after
NFKC, lower-casing and accent stripping) and LANG [-1, 1] BYTES ("en" or "es", from common
function words). The vocabulary's order is the classifiers' weight rows
(``model_repository/build_sentiment.py``).
"""

import re
import unicodedata

import numpy as np
import triton_python_backend_utils as pb_utils

VOCABULARY = [
    "good",
    "great",
    "love",
    "excellent",
    "happy",
    "wonderful",
    "bad",
    "terrible",
    "hate",
    "awful",
    "sad",
    "horrible",
    "bueno",
    "genial",
    "encanta",
    "excelente",
    "feliz",
    "maravilloso",
    "malo",
    "fatal",
    "odio",
    "pesimo",
    "triste",
    "horrible_es",
]
INDEX = {word: i for i, word in enumerate(VOCABULARY)}

SPANISH = frozenset(
    ["el", "la", "los", "las", "es", "muy", "que", "una", "esta", "este", "pero", "y", "lo", "me", "encanta"]
)
ENGLISH = frozenset(["the", "is", "a", "this", "it", "and", "very", "i", "was", "of", "my"])


def words(text):
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.findall(r"[a-z]+", text)


def featurize(text):
    tokens = words(text)
    spanish = sum(t in SPANISH for t in tokens) > sum(t in ENGLISH for t in tokens)
    counts = np.zeros(len(VOCABULARY), dtype=np.float32)
    for token in tokens:
        if spanish and token == "horrible":
            token = "horrible_es"
        if token in INDEX:
            counts[INDEX[token]] += 1
    return counts, b"es" if spanish else b"en"


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            try:
                rows = [featurize(item.decode("utf-8")) for item in texts]
            except UnicodeDecodeError as exc:
                error = pb_utils.TritonError(f"TEXT must be UTF-8: {exc}", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            features = np.stack([counts for counts, _ in rows])
            lang = np.array([[code] for _, code in rows], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("FEATURES", features), pb_utils.Tensor("LANG", lang)]
                )
            )
        return responses
