"""File writes readers never see half-done, and JSON reads that fail in one line."""
import contextlib
import json
import os


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary name beside ``path`` to write; on success it is flushed to disk,
    given the umask's permissions and renamed over ``path``, on failure removed. A run
    killed mid-write leaves ``PATH.tmp-PID``, which the next run removes
    (``checkpointing.remove_stale_temporaries``)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # some writers (safetensors) make 0600
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def read_json(path, error, name=None, expect=None):
    """The parsed JSON of ``path``; every failure raises ``error`` (a UserError class) with
    one line starting with ``name`` (default: the path). ``expect``: dict or list."""
    name = name or path
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise error(f"{name}: no such file") from None
    except OSError as e:
        raise error(f"{name}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{name}: not UTF-8 text, not JSON") from None
    except json.JSONDecodeError as e:
        raise error(f"{name}:{e.lineno}: invalid JSON ({e.msg})") from None
    if expect is not None and not isinstance(value, expect):
        kind = {dict: "an object", list: "an array"}[expect]
        raise error(f"{name}: must be a JSON {kind}")
    return value
