"""End-to-end FPS of the causal Wan model (filled in once the model and pipeline exist)."""


def run(device, dtype, quick, repeats):
    return []
