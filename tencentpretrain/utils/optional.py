"""Packages a command needs only for some options: one line naming what to install, on every
rank alike, before any work starts (never a ModuleNotFoundError traceback per rank)."""
import importlib.util

from tencentpretrain.errors import UserError


class MissingPackage(UserError):
    """An option needs a package this Python does not have."""


def require(module, package, needed_by):
    """Raise MissingPackage unless ``module`` is importable; ``needed_by`` names the option."""
    if importlib.util.find_spec(module) is None:
        raise MissingPackage(f"{needed_by} needs the {package} package, which is not installed "
                             f"in this Python: pip install {package}")
