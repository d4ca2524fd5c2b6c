import os

import pytest
import torch

# Tests see only the bundled plugins unless they ask for entry points.
os.environ.setdefault("DIFFNAS_DISABLE_PLUGIN_AUTOLOAD", "1")
# tiny supernets are dispatch-bound: one thread is fastest, and stays fast when cores are shared
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def float64():
    """torch's default dtype float64 for the test (the exactness tests' setting), restored after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def shared_data():
    """The offline data folder beside the checkout (../shared/data), or skip."""
    from pathlib import Path

    for cand in (os.environ.get("DIFFNAS_DATA_ROOT"), Path(__file__).resolve().parents[2] / "shared" / "data"):
        if cand and Path(cand, "nb201").exists():
            return Path(cand)
    pytest.skip("needs the project's offline data folder (../shared/data beside the checkout, or DIFFNAS_DATA_ROOT "
                "pointing at a folder with nb201/, cifar10/ and nb301_surrogate/): it compares against the full "
                "files, which are not part of the package")
