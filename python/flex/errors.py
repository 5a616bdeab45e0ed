"""The error of a setting that cannot work, with the setting's name as data.

Front ends name the setting their own way (``flex generate`` as a flag, ``flex experiment`` as a
key of its config, the web page as a field) from :attr:`SettingsError.fields`, never from the
message text. The message reads "<setting> <problem>" (``leads=True``, e.g. "height must be a
multiple of 16, got 60") or "<setting>: <problem>" when the problem is a sentence of its own
(``leads=False``, e.g. "quant: quant='fp8' needs a CUDA GPU").
"""
from __future__ import annotations


class SettingsError(ValueError):
    """A setting (or several together) that cannot work.

    fields   the setting names, e.g. ("height",) or ("compile", "cuda_graphs")
    problem  what is wrong: the rest of the sentence after the names (``leads``), or a sentence
             that follows "<names>: "
    """

    def __init__(self, fields: str | tuple[str, ...], problem: str, *, leads: bool = True):
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)
        self.problem = problem
        self.leads = leads
        super().__init__(self.render(self.fields))

    def render(self, names) -> str:
        """The message with the settings called ``names`` (one per field, e.g. their flags)."""
        joined = " / ".join(names)
        return f"{joined} {self.problem}" if self.leads else f"{joined}: {self.problem}"

    def renamed(self, mapping: dict[str, str]) -> "SettingsError":
        """The same error about the settings ``mapping`` names (e.g. a library field -> a job setting)."""
        fields = tuple(mapping.get(f, f) for f in self.fields)
        return SettingsError(fields, self.problem, leads=self.leads)

    @property
    def message(self) -> str:
        return str(self)


__all__ = ["SettingsError"]
