import os

import pytest
import torch

# Triton kernels run on the CPU through the interpreter when no GPU is present. The variable
# must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny-model tests: intra-op threads only add synchronisation on a small, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
