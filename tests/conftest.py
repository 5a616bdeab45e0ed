import os

import torch

# Triton kernels run on the CPU through the interpreter when no GPU is present. The variable
# must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
