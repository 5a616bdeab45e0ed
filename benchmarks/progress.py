"""Progress bars: tqdm when it is installed, else a silent stand-in (offline GPU boxes may lack it)."""
try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - exercised only where tqdm is absent
    class tqdm:  # noqa: N801 -- same name as the class it stands in for
        def __init__(self, iterable=None, **_):
            self.iterable = iterable

        def __iter__(self):
            return iter(self.iterable)

        def update(self, n=1):
            pass

        def set_postfix_str(self, s=""):
            pass

        def close(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

        @staticmethod
        def write(text):
            print(text)

__all__ = ["tqdm"]
