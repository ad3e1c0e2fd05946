"""The README keeps exactly two set-up commands, and CI runs the test one verbatim."""

import re

from conftest import REPO


def _setup_commands() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set up (fresh machine)", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = _setup_commands()
    assert len(commands) == 2
    assert commands[0].endswith("prunekit demo")
    assert commands[1].endswith("python -m pytest")
    for command in commands:
        assert "\n" not in command and "pip install -q torch==2.13.0" in command


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert _setup_commands()[1] in ci.splitlines()


def test_readme_python_quickstart_runs(tmp_path, monkeypatch) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## Python quickstart\n\n```python\n(.+?)\n```", readme, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)  # it writes runs/quick/...
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "quick" / "small.safetensors").is_file()
