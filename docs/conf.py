"""Sphinx configuration of wasap's documentation: MyST Markdown pages, numpydoc docstrings.

Build it with ``python -m sphinx -W -b html docs OUT`` (``pip install '.[docs]'`` first).
"""

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
# The checkout first, so that the reference describes this tree even where wasap is not installed.
sys.path[:0] = [str(DOCS.parent), str(DOCS / "_ext")]

import wasap  # noqa: E402  (after the path is set)

project = "wasap"
author = "the wasap authors"
copyright = "the wasap authors, MIT licence"
release = wasap.__version__
version = release

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "argparse_reference",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
templates_path = []

myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# numpydoc renders the Parameters / Returns sections; autodoc lists the members itself.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_default_options = {"members": True}


html_theme = "alabaster"
html_title = f"wasap {release}"
html_theme_options = {
    "description": "Truly sparse neural networks on CPUs",
    "fixed_sidebar": False,
    "page_width": "1100px",
    "body_max_width": "none",
}
html_static_path = []


#: scikit-learn's methods that set metadata-routing requests, generated on every estimator class: their
#: docstrings point into scikit-learn's own documentation.
_SKLEARN_GENERATED = re.compile(r"^(set_\w+_request|get_metadata_routing)$")
#: A shape, as in ``ndarray of shape (n_samples, n_features_in_)``.
_SHAPE = re.compile(r"of shape \(([^)]*)\)")


def _skip_sklearn_generated(app, what, name, obj, skip, options):
    return True if _SKLEARN_GENERATED.match(name) else None


def _plain_shape_names(app, what, name, obj, options, lines):
    """Escape the trailing underscore of attribute names in shapes (``n_features_in_``): reST reads
    ``name_`` as a link to a target called ``name``."""
    for index, line in enumerate(lines):
        lines[index] = _SHAPE.sub(lambda shape: "of shape (" + re.sub(r"(\w)_(?=[,\s]|$)", r"\1\\_",
                                                                      shape.group(1)) + ")", line)


def setup(app):
    app.connect("autodoc-skip-member", _skip_sklearn_generated)
    app.connect("autodoc-process-docstring", _plain_shape_names)
