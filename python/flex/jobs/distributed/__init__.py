"""The generation job over many processes started by ``torchrun``: prompt-parallel batches
(:mod:`.work`: each rank generates an equal share of the videos, resumable from a manifest),
optionally in sequence-parallel groups that make one video together (the plan itself,
Ulysses-style attention over heads, is :mod:`flex.sequence_parallel`, below the pipeline).
:mod:`.launch` reads torchrun's environment; :mod:`.job` is what ``flex generate`` calls."""
