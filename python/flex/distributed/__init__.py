"""Many processes on torch.distributed, started by ``torchrun``: prompt-parallel batches
(:mod:`.work`: each rank generates an equal share of the videos, resumable from a manifest)
and sequence-parallel single videos (:mod:`.sequence`: Ulysses-style attention over heads).
:mod:`.launch` reads torchrun's environment; :mod:`.cli` is what ``flex generate`` calls."""
from .sequence import ParallelPlan, check_parallel

__all__ = ["ParallelPlan", "check_parallel"]
