"""The Dockerfile has the shape the README promises (no Docker daemon here to build it), and the
HAProxy example is a valid HAProxy configuration."""

from __future__ import annotations

import json
import re
import shutil
import subprocess


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    rows = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def test_dockerfile_is_multi_stage_non_root_with_an_exec_form_entry_point(root):
    rows = _instructions((root / "Dockerfile").read_text())
    stages = [rest for word, rest in rows if word == "FROM"]
    assert len(stages) >= 2 and all("slim" in s for s in stages)
    final = rows[max(i for i, (word, _) in enumerate(rows) if word == "FROM") :]
    final_words = dict(final)
    assert any(word == "COPY" and rest.startswith("--from=build") for word, rest in final)
    user = final_words["USER"].split(":")[0]
    assert user not in ("root", "0")
    entry = json.loads(final_words["ENTRYPOINT"])  # exec form: signals reach the process
    assert entry[-2:] == ["nereid", "serve"] and entry[0].endswith("tini")
    assert set(final_words["EXPOSE"].split()) == {"8000", "8001", "8002"}
    assert "NEREID_MODEL_REPOSITORY=/models" in final_words["ENV"]
    args = {rest.split("=")[0]: rest.split("=", 1)[1] for word, rest in rows if word == "ARG" and "=" in rest}
    assert args["EXTRAS"] == "torch" and args["TORCH_INDEX_URL"].endswith("/whl/cpu")


def test_dockerignore_keeps_the_context_small(root):
    ignored = set((root / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "model_repository", "**/__pycache__"} <= ignored


def test_haproxy_example_is_valid(root, tmp_path):
    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy is missing: `make test` installs it (apt-get install haproxy)"
    result = subprocess.run(
        [haproxy, "-c", "-f", str(root / "deploy/haproxy/haproxy.cfg")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
