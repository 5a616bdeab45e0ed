"""File suffixes of the checkpoint formats read here (one home for the folder scans of files.py and krea.py)."""

PT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")  # torch.save / pickle containers
SAFETENSORS_SUFFIX = ".safetensors"

__all__ = ["PT_SUFFIXES", "SAFETENSORS_SUFFIX"]
