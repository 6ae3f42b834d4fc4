"""The README's functional-API snippet runs as written (it is the notebook entry point)."""

import pathlib
import re

from PIL import Image

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_functional_api_snippet_runs(tmp_path, monkeypatch):
    text = README.read_text()
    match = re.search(r"## Functional API \(notebooks\)\n\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its '## Functional API (notebooks)' python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    samples = namespace["samples"]
    assert samples.shape == (10, 16, 16, 1)
    assert Image.open(tmp_path / "grid.png").size[0] > 10 * 16
    assert Image.open(tmp_path / "denoise.gif").n_frames > 1
