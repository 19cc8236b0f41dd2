"""Every package the documented commands import is a runtime dependency (CI and users start
from a fresh environment), and every package the tests import is one or a test extra:
pyproject.toml is the one dependency list (scripts/install.sh installs from it)."""
import ast
import glob
import importlib.metadata
import os
import re
import sys

from tests.conftest import ROOT

LOCAL = {"tencentpretrain", "inference", "tests", "scripts", "pretrain", "preprocess"}
# used only when installed, imported under try: NVIDIA apex (PyPI's `apex` is another project)
# and transformers (the HF export also checks AutoTokenizer's ids when it is there)
OPTIONAL = {"apex", "transformers"}
# imports that need a distribution other than the one that provides their top-level name
SUBMODULE_NEEDS = {"torch.utils.tensorboard": "tensorboard"}


def requirement_names(lines):
    names = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.match(r"[A-Za-z0-9_.\-]+", line).group(0).lower().replace("_", "-"))
    return names


def pyproject_list(key):
    """The names in pyproject.toml's list ``key = [...]`` (comments ignored)."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = "\n".join(line.split("#", 1)[0] for line in f)
    block = re.search(rf"^{key} = \[(.*?)\]", text, re.S | re.M).group(1)
    return requirement_names(re.findall(r'"([^"]+)"', block))


def pyproject_dependencies():
    return pyproject_list("dependencies")


def imports_of(path):
    """(module, optional) for each absolute import; optional when guarded by ImportError."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError", "Exception")
                for h in node.handlers):
            guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module]
        else:
            continue
        for module in modules:
            yield module, id(node) in guarded


def undeclared_imports(files, declared, optional_packages=OPTIONAL):
    providers = importlib.metadata.packages_distributions()
    undeclared = []
    for path in files:
        imports = list(imports_of(path))
        for module, optional in imports:
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in LOCAL:
                continue
            if top in optional_packages:  # the module-level import is guarded; a later one may rely on it
                assert any(opt for mod, opt in imports if mod.split(".")[0] == top), \
                    f"{path}: {module} is optional and must be imported under try"
                continue
            needs = next((dist for prefix, dist in SUBMODULE_NEEDS.items()
                          if module == prefix or module.startswith(prefix + ".")), None)
            dists = {needs} if needs else {d.lower().replace("_", "-")
                                            for d in providers.get(top, [top])}
            if not dists & declared:
                undeclared.append(f"{os.path.relpath(path, ROOT)}: {module} ({sorted(dists)})")
    return undeclared


def test_runtime_imports_are_declared_dependencies():
    files = [os.path.join(ROOT, name) for name in ("preprocess.py", "pretrain.py")]
    for folder in ("tencentpretrain", "inference", "scripts"):
        files += glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)
    undeclared = undeclared_imports(files, pyproject_dependencies())
    assert not undeclared, "imports missing from pyproject.toml's dependencies: " + "; ".join(undeclared)


def test_test_imports_are_dependencies_or_test_extras():
    files = glob.glob(os.path.join(ROOT, "tests", "*.py"))
    undeclared = undeclared_imports(files, pyproject_dependencies() | pyproject_list("test"),
                                    optional_packages=())
    assert not undeclared, ("imports missing from pyproject.toml's dependencies and its test "
                            "extras: " + "; ".join(undeclared))


def test_pyproject_is_the_one_dependency_list():
    assert not glob.glob(os.path.join(ROOT, "requirements*.txt"))


def test_tensorboard_missing_is_one_line_before_anything_starts(monkeypatch, tmp_path):
    """--tensorboard_dir without the package: one line on every rank before any work starts,
    not a ModuleNotFoundError traceback from rank 0 in the middle of the run."""
    import importlib.util

    import pytest

    from tencentpretrain.utils.optional import MissingPackage
    from tests.training_support import pretrain_argv, run_in_process
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(MissingPackage, match=r"^--tensorboard_dir needs the tensorboard package, "
                                             r"which is not installed in this Python: pip install "
                                             r"tensorboard$"):
        run_in_process(pretrain_argv(str(out / "m"), extra=["--tensorboard_dir", str(out / "tb")]))
    assert os.listdir(out) == []  # nothing written
