import collections
import os
import sys

import pytest

# torch's OpenMP threads wait for each other by spinning: on a small or shared machine (2
# cores, other jobs beside the suite) a spinning thread holds the core that the thread it waits
# for needs, and the tiny models' steps get several times slower. Threads sleep instead (set
# before torch loads; the scripts the tests start inherit it); an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
HAVE_SHARED_DATA = os.path.isdir(SHARED_DATA)
SHARED_DATA_MISSING = (f"needs {SHARED_DATA} (real corpora and tokenizers, beside the checkout "
                       "in CI); the rest runs on the project's demo data")


def need_shared_data():
    """Skip the calling test without ../shared/data (counted in one summary line)."""
    if not HAVE_SHARED_DATA:
        pytest.skip(SHARED_DATA_MISSING)


def pytest_terminal_summary(terminalreporter):
    """One line per skip reason with its count (not pytest's line per skipped test)."""
    reasons = collections.Counter(
        report.longrepr[2].removeprefix("Skipped: ")
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple))
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"SKIPPED {count} test(s): {reason}")


def pytest_configure(config):
    config.addinivalue_line("markers", "shared_data: the test reads ../shared/data")
    config.addinivalue_line("markers", "slow: a DeepSpeed run (multi-rank launches, one rank "
                                       "without the launcher) or a --compile run (make test "
                                       "runs them, make test-fast skips them)")


# DeepSpeed launches of several ranks and torch.compile runs: minutes each on 2 cores
SLOW_MODULES = {"test_pretrain_deepspeed.py", "test_packing_zero3.py", "test_vocab_zero3.py",
                "test_lora_deepspeed.py", "test_compile.py"}
SLOW_NAMES = ("two_ranks",)  # one such test in a module that is otherwise quick


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in SLOW_MODULES or any(name in item.name for name in SLOW_NAMES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _skip_without_shared_data(request):
    if request.node.get_closest_marker("shared_data"):
        need_shared_data()


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data (real corpora and tokenizers); tests never copy it."""
    need_shared_data()
    return SHARED_DATA


@pytest.fixture(scope="session")
def llama_spm(shared_data):
    return os.path.join(shared_data, "llama_tokenizer.model")


@pytest.fixture(scope="session")
def chinese_spm(shared_data):
    return os.path.join(shared_data, "cluecorpussmall_spm.model")


def tiny_checkpoint(path, vocab_size=32000, config_path="models/llama/tiny_config.json", seed=0):
    """Write a random tiny model as a .bin; returns its config path. Here, not in a test
    module, so tests that need no transformers never skip along with one that does."""
    import torch

    import tencentpretrain
    from tencentpretrain.utils.weights import save_state_dict_file
    torch.manual_seed(seed)
    model = tencentpretrain.build_model(os.path.join(ROOT, config_path), vocab_size)
    save_state_dict_file(model.state_dict(), str(path))
    return os.path.join(ROOT, config_path)


def one_process_settings(ds_config=None, learning_rate=1e-3, batch_size=4):
    """RunSettings of a one-process run (TorchBackend) with this DeepSpeed config dict."""
    import argparse

    from tencentpretrain.training.settings import resolve
    args = argparse.Namespace(deepspeed=False, enable_zero3=False, deepspeed_config=None,
                              batch_size=batch_size, accumulation_steps=1,
                              learning_rate=learning_rate)
    return resolve(args, ds_config=ds_config or {})
