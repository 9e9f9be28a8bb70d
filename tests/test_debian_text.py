"""tools/debian_text.py: the package listing's records joined with their long descriptions, and its files."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import debian_text  # noqa: E402

PACKAGES = """Package: stellarium
Section: science
Description: real-time photo-realistic sky generator
Description-md5: aaa

Package: frozen-bubble
Section: games
Description: cool game where you pop out the bubbles
Description-md5: bbb

Package: python3-numpy
Section: python
Description: fast array facility
Description-md5: ccc

Package: mystery
Section: contrib/utils
Description: a tool with no translation
Description-md5: ddd
"""

TRANSLATIONS = """Package: stellarium
Description-md5: aaa
Description-en: real-time photo-realistic sky generator
 Stellarium renders the sky
 .
 in 3D.

Package: frozen-bubble
Description-md5: bbb
Description-en: cool game where you pop out the bubbles
 Frozen-Bubble is a clone of the popular Puzzle Bobble.
"""


def test_packages_join_sections_with_long_descriptions(monkeypatch):
    monkeypatch.setattr(debian_text.glob, "glob", lambda pattern: ["Translation-en"])
    monkeypatch.setattr(debian_text, "_run",
                        lambda command: TRANSLATIONS if command[0].endswith("apt-helper") else PACKAGES)
    found = debian_text.packages()
    # The python section is left out; a section under contrib/ counts as its own name.
    assert sorted(found) == ["frozen-bubble", "mystery", "stellarium"]
    assert found["stellarium"] == ("science", "real-time photo-realistic sky generator Stellarium renders the sky  "
                                              "in 3D.")
    assert found["mystery"] == ("utils", "a tool with no translation")  # the short description stands in


def test_no_translation_index_is_an_error_that_says_how_to_fetch_it(monkeypatch):
    monkeypatch.setattr(debian_text.glob, "glob", lambda pattern: [])
    with pytest.raises(SystemExit, match="Acquire::Languages=en"):
        debian_text.packages()
