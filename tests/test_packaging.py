"""What the base install (``pip install -e '.[cpu]'``) must hold for the commands it offers."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_tqdm_is_a_base_dependency():
    # `mimlsort replay` draws its progress bar with tqdm (and `evaluate --simulated` its
    # simulation bar); tqdm came only with the train extra, so a replay on an install without
    # it ended in a ModuleNotFoundError traceback once the run had started
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    assert any(re.match(r"tqdm\b", d) for d in deps), deps
