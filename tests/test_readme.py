"""The README and the docs/ pages say what is true: the README's functional-API snippet runs
as written (it is the notebook entry point), also from outside the repository once the
set-up command has installed jaxdiff; every `python -m experiments.<program>` line in the
README and docs/ names a program that exists and only flags it defines (`--config.<field>`
overrides only fields of the config it names); every relative link and every repository
path in backticks resolves."""

import functools
import importlib
import os
import pathlib
import re
import site
import subprocess
import sys
import sysconfig
import venv

import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

TOP_DIRS = ("jaxdiff", "experiments", "configs", "tests", "notebooks", "docs")
# Flags that absl defines for every program.
ABSL_FLAGS = {"help", "helpfull", "helpshort", "flagfile", "undefok", "only_check_args",
              "verbosity", "v", "logtostderr", "alsologtostderr", "log_dir"}


def resolves(relative: str) -> bool:
    """A repository path (file or folder) exists."""
    return (ROOT / relative.rstrip("/")).exists()


def snippet() -> str:
    text = README.read_text()
    match = re.search(r"## Functional API \(notebooks\)\n\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its '## Functional API (notebooks)' python block"
    return match.group(1)


@pytest.mark.slow
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
    assert commands[0].endswith("-m experiments.train --config configs/digits.py "
                                "--workdir runs/digits")
    assert commands[1].endswith("-m pytest -q tests")


def test_tensorboard_command_watches_the_runs():
    text = README.read_text()
    assert "tensorboard --logdir runs\n" in text  # finds runs/<name>/tensorboard/ of each run
    assert "--workdir runs/digits" in text


def test_readme_is_a_front_page_that_links_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)", text))
    assert {p.name for p in DOCS.glob("*.md")} <= linked
    for page in ("guidance", "controlnet", "few_step_sampling", "pretrained", "multihost",
                 "failures", "evaluation", "performance", "notebooks", "tests",
                 "architecture"):
        assert (DOCS / f"{page}.md").exists(), page


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.*)$", page.read_text(), re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue  # https:, mailto:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: link {link} does not resolve"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{page.name}: no heading for {link}"


def expand_braces(text: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", text)
    if not match:
        return [text]
    return [out for part in match.group(1).split(",")
            for out in expand_braces(text[: match.start()] + part + text[match.end():])]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_repository_paths_in_backticks_resolve(page):
    top = "|".join(TOP_DIRS)
    spans = re.findall(r"`([^`\n]+)`", page.read_text())
    for span in spans:
        for token in span.split():
            if not re.fullmatch(rf"(\.\./)?({top})/[\w./{{}},-]*", token):
                continue
            for path in expand_braces(token.removeprefix("../")):
                assert resolves(path), f"{page.name}: `{path}` does not exist"


@functools.cache
def defined_flag_names() -> frozenset[str]:
    """Every string literal in experiments/: a flag is defined by its name in quotes."""
    names = set()
    for path in (ROOT / "experiments").rglob("*.py"):
        names.update(re.findall(r"""["']([a-z][a-z0-9_]*)["']""", path.read_text()))
    return frozenset(names)


def commands(page: pathlib.Path) -> list[str]:
    """Each `python -m experiments.<program> ...` command of a page, continuation lines
    joined, comments dropped."""
    text = page.read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = re.sub(r"\\\n\s*", " ", block)
        for line in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)
            found.extend(re.split(r"&&|;|\|\|", line))
    for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        found.extend(re.split(r"&&|;", re.sub(r"\s+", " ", span)))
    return [c.strip() for c in found if re.search(r"-m experiments\.\w", c)]


def config_field_exists(config_path: str, field: str) -> bool:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(config_path.removesuffix(".py").replace("/", "."))
    node = module.get_config()
    for part in field.split("."):
        if part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_names_a_program_and_its_flags(page):
    found = commands(page)
    if page == README:
        assert len(found) >= 10
    for command in found:
        program = re.search(r"-m (experiments(?:\.\w+)+)", command).group(1)
        relative = program.replace(".", "/") + ".py"
        assert resolves(relative), f"{page.name}: {program} does not exist: {command}"
        if (ROOT / relative).exists():
            assert '__name__ == "__main__"' in (ROOT / relative).read_text(), command
        args = command[command.index(program) + len(program):]
        config = re.search(r"--config[ =](configs/\w+\.py)", args)
        for name in re.findall(r"(?:^|\s)--([a-z][\w.]*)", args):
            if name.startswith("config."):
                assert config, f"{page.name}: {name} without --config: {command}"
                field = name.removeprefix("config.")
                assert config_field_exists(config.group(1), field), (
                    f"{page.name}: {config.group(1)} has no field {field}: {command}")
                continue
            known = defined_flag_names() | ABSL_FLAGS
            assert name in known or (name.startswith("no") and name[2:] in known), (
                f"{page.name}: {program} defines no --{name}: {command}")
        if config:
            assert (ROOT / config.group(1)).exists(), command


def site_packages() -> list[str]:
    """The folders the running interpreter imports installed packages from."""
    paths = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    return list(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def run_snippet_elsewhere(python: pathlib.Path | str, tmp_path: pathlib.Path, clean: dict):
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


@pytest.mark.slow
def test_snippet_runs_from_another_directory_after_the_editable_install(tmp_path):
    """What `pip install -e .` gives a new user: their environment's python imports this
    checkout's jaxdiff from any directory. Where the set-up command has run in the running
    environment (a virtual environment or not), that environment is checked as it is.
    Otherwise jaxdiff is installed in place into a fresh environment that sees the running
    one's packages (its setuptools builds the editable wheel, offline), and that is checked.
    """
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([sys.executable, "-c", "import jaxdiff; print(jaxdiff.__file__)"],
                           cwd=tmp_path, env={**clean, "JAX_PLATFORMS": "cpu"},
                           capture_output=True, text=True, timeout=300)
    if where.stdout.strip() == str(ROOT / "jaxdiff" / "__init__.py"):
        run_snippet_elsewhere(sys.executable, tmp_path, clean)
        return
    setuptools = subprocess.run(
        [sys.executable, "-c", "import importlib.util, setuptools; print(setuptools.__version__,"
         " importlib.util.find_spec('wheel') is not None)"],
        capture_output=True, text=True, timeout=60).stdout.split()
    major, minor = (int(x) for x in setuptools[0].split(".")[:2])
    if (major, minor) < (70, 1) and setuptools[1] != "True":
        pytest.skip(f"this environment's setuptools {setuptools[0]} cannot build an editable "
                    "wheel offline (it needs >= 70.1, or the wheel package); run the README's "
                    "set-up command in it, which installs this checkout")
    env_dir = tmp_path / "env"
    # Not the base interpreter's packages (a virtual environment may be running the tests),
    # but the running environment's, by path: their .pth files (another editable jaxdiff)
    # stay inactive. No pip inside: the running pip installs into it, offline.
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    python = env_dir / "bin" / "python"
    inner = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                            "['purelib'])"], capture_output=True, text=True, timeout=60)
    (pathlib.Path(inner.stdout.strip()) / "running_environment.pth").write_text(
        "\n".join(site_packages()) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-index", "--no-deps", "--no-build-isolation", "-e", str(ROOT)],
        env=clean, capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    run_snippet_elsewhere(python, tmp_path, clean)
