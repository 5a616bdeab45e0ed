"""Prompt cleaning is Wan's (its HuggingfaceTokenizer with clean='whitespace'), ftfy included."""
from __future__ import annotations

import html
import tomllib
from pathlib import Path

import ftfy
import pytest
import regex

from flex.text import clean_prompt


def wan_clean(text: str) -> str:
    """Wan's basic_clean then whitespace_clean (it uses the ``regex`` module's \\s)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()


CASES = {
    "cafÃ© au lait": "café au lait",  # mojibake (UTF-8 read as Latin-1)
    "â€œquotedâ€\x9d": '"quoted"',  # mojibake of curly quotes
    "the “curly” and ‘single’ quotes": "the \"curly\" and 'single' quotes",
    "salt &amp;amp; pepper": "salt & pepper",  # escaped twice: unescaped twice
    "&lt;b&gt;bold&lt;/b&gt;": "<b>bold</b>",
    "a\tcat\n\non  the\r\nbeach ": "a cat on the beach",
    "\u3000wide\u00a0space\u2009thin ": "wide space thin",
    "sep\x1carators\x1f": "separators",  # control characters: ftfy removes them
    "&#28;ref": "ref",  # a numeric reference to a control character unescapes to nothing
    "": "",
}


@pytest.mark.parametrize("text", CASES)
def test_cleaning_matches_wan(text):
    assert clean_prompt(text) == CASES[text] == wan_clean(text)


def test_ftfy_is_a_dependency():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "ftfy" in {d.split(">")[0].split("=")[0].strip() for d in pyproject["project"]["dependencies"]}
