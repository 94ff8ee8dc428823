"""Sphinx configuration of mdnkit's documentation site: the pages of docs/ (Markdown, through
MyST) and an API reference generated from the docstrings (autodoc; Google-style ``Args:``
sections through napoleon; ``.. math::`` and ``:math:`` through MathJax).

Build it (warnings are errors, as in CI)::

    pip install -e ".[docs]" && sphinx-build -W --keep-going -b html docs build/docs
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout's code, installed or not
# mdnkit.keras needs a Keras backend chosen before Keras is imported; torch is always there
os.environ.setdefault("KERAS_BACKEND", "torch")

import mdnkit  # noqa: E402

project = "mdnkit"
author = "the mdnkit authors"
copyright = "the mdnkit authors"
release = version = mdnkit.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: $...$ and $$...$$ maths in the pages; headings get anchors for links like page.md#anchor
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# autodoc: members in source order, with their signatures' type hints in the description
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = False  # nn.Module's own docstrings are not mdnkit's API
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# an "Attributes:" section becomes a field list, not a second description of each attribute
# (a NamedTuple's fields would otherwise be described twice)
napoleon_use_ivar = True

html_theme = "furo"
html_title = f"mdnkit {release}"


def _skip_generated(app, what, name, obj, skip, options):
    """Leave out generated members: scikit-learn's metadata-routing methods (``set_fit_request``
    ...), whose docstrings point into its own site, and a NamedTuple's field accessors ("Alias
    for field number 0"), which the class's own ``Attributes:`` section describes."""
    if re.fullmatch(r"set_\w+_request", name):
        return True
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_generated)
