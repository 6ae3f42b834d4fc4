"""The README's functional-API snippet runs as written (it is the notebook entry point),
also from outside the repository once the set-up command has installed jaxdiff."""

import os
import pathlib
import re
import subprocess
import sys
import venv

import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def snippet() -> str:
    text = README.read_text()
    match = re.search(r"## Functional API \(notebooks\)\n\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its '## Functional API (notebooks)' python block"
    return match.group(1)


def test_functional_api_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet(), "README.md", "exec"), namespace)
    samples = namespace["samples"]
    assert samples.shape == (10, 16, 16, 1)
    assert Image.open(tmp_path / "grid.png").size[0] > 10 * 16
    assert Image.open(tmp_path / "denoise.gif").n_frames > 1


def test_both_setup_commands_install_jaxdiff_in_place():
    top = README.read_text().split("\n## ")[0]  # the text above the first section
    commands = re.findall(r"```bash\n(.*?)\n```", top, re.S)
    assert len(commands) == 2
    for command in commands:
        assert command.startswith("python3 -m pip install -r requirements.txt -e . && ")


def test_tensorboard_command_watches_the_runs():
    text = README.read_text()
    assert "tensorboard --logdir runs\n" in text  # finds runs/<name>/tensorboard/ of each run
    assert "--workdir runs/digits" in text


@pytest.mark.slow
def test_snippet_runs_from_another_directory_after_the_editable_install(tmp_path):
    """What `pip install -e .` gives a new user: a fresh environment (seeing the installed
    dependencies, as after `-r requirements.txt`) whose python imports jaxdiff anywhere."""
    env_dir = tmp_path / "env"
    # No pip inside: the outer pip installs into it, with the system's setuptools (offline).
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-index", "--no-deps", "--no-build-isolation", "-e", str(ROOT)],
        env=clean, capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "snippet.py").write_text(snippet() + "\nprint(jd.__file__, samples.shape)\n")
    run = subprocess.run([str(python), "snippet.py"], cwd=work,
                         env={**clean, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[0] == str(ROOT / "jaxdiff" / "__init__.py")  # this checkout
    assert "(10, 16, 16, 1)" in run.stdout
    assert (work / "grid.png").exists() and (work / "denoise.gif").exists()
