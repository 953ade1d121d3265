"""Typed parameter values leave the process as the JSON text wire clients always got."""

from __future__ import annotations

import json

import numpy as np

from nereid.server.parameters import wire_parameters
from nereid.server.textgen import TokenLogprob, TopLogprob, read_logprobs, read_token_ids


def test_structured_values_become_json_dumps_text_and_scalars_stay() -> None:
    lp = TokenLogprob(7, "a", -0.5, [TopLogprob(7, "a", -0.5), TopLogprob(9, "b", -9999.0)])
    as_dicts = [
        {
            "token_id": 7,
            "token": "a",
            "logprob": -0.5,
            "top_logprobs": [
                {"token_id": 7, "token": "a", "logprob": -0.5},
                {"token_id": 9, "token": "b", "logprob": -9999.0},
            ],
        }
    ]
    wire = wire_parameters({"token_ids": [1, 2], "logprobs": [lp], "n": np.int64(3), "reason": "stop"})
    assert wire == {"token_ids": "[1, 2]", "logprobs": json.dumps(as_dicts), "n": 3, "reason": "stop"}
    assert read_token_ids(wire["token_ids"]) == [1, 2] and read_logprobs(wire["logprobs"]) == [lp]
