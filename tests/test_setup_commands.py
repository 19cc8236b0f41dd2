"""The README's two set-up commands are the ones CI and the quick start really run."""
import os
import re
import subprocess

from tests.conftest import ROOT


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def make_dry_run(target):
    """The commands ``make TARGET`` would run, without running them."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def test_readme_commands_are_what_ci_and_the_quick_start_run():
    section = read("README.md").split("## Set up and run, two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \w+)", section, flags=re.M)
    assert commands == ["make quickstart", "make test"]
    ci = [line.strip() for line in read(".ci/run").splitlines()
          if line.strip() and not line.startswith("#")]
    assert "make quickstart" in ci and "make test" in ci  # both, in that order, in a fresh venv
    assert ci.index("make quickstart") < ci.index("make test")
    assert any(re.match(r"python3 -m venv ", line) for line in ci)
    assert make_dry_run("test") == ["bash scripts/install.sh --test",
                                    "python3 -m pytest -q tests"]
    assert make_dry_run("quickstart") == ["bash scripts/install.sh", "bash scripts/quickstart.sh"]


SHIM = """#!/usr/bin/env bash
# stands in for python3: answers torch's version from $TORCH_FILE, logs pip calls
case "$*" in
  *"import torch; print"*) [ -s "$TORCH_FILE" ] && cut -d+ -f1 "$TORCH_FILE" || exit 1 ;;
  *"-m pip install"*) echo "$*" >> "$PIP_LOG"
                      case "$*" in *" torch==2.13.0"*) echo 2.13.0+cpu > "$TORCH_FILE" ;; esac ;;
esac
exit 0
"""


def run_install(tmp_path, installed_torch):
    tmp_path = tmp_path / (installed_torch or "none")
    tmp_path.mkdir()
    shim, torch_file, pip_log = tmp_path / "python", tmp_path / "torch", tmp_path / "pip.log"
    shim.write_text(SHIM)
    shim.chmod(0o755)
    torch_file.write_text(installed_torch)
    env = dict(os.environ, PYTHON=str(shim), TORCH_FILE=str(torch_file), PIP_LOG=str(pip_log),
               PATH="/usr/bin:/bin")  # no nvidia-smi: a CPU machine
    subprocess.run(["bash", "scripts/install.sh", "--test"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    return [line.split("--disable-pip-version-check ")[1] for line in pip_log.read_text().splitlines()]


def test_install_pins_the_cpu_torch_and_keeps_an_installed_one(tmp_path):
    assert run_install(tmp_path, "") == [
        "torch==2.13.0", "-e .[test] torch==2.13.0"]
    assert run_install(tmp_path, "2.9.1+cu121") == [  # a GPU user's torch stays
        "-e .[test] torch==2.9.1"]
