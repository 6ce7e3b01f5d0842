"""Sphinx configuration of conveyor's documentation (build: sphinx-build -W -n docs site).

Sphinx rather than mkdocs because conveyor's docstrings are reStructuredText (``:class:``
roles, ``Example::`` blocks): autodoc renders them as written and, with ``-n -W``, fails the
build on a reference to a renamed or removed name. Pages are Markdown (MyST); the API
reference is api.rst, one ``automodule`` line per public module.
"""

from __future__ import annotations

from pathlib import Path

import conveyor
from conveyor.cli.options import run_parser

project = "conveyor"
author = "the conveyor developers"
copyright = "2026, the conveyor developers"
release = conveyor.__version__  # the installed package's metadata, like conveyor --version
version = release

extensions = ["sphinx.ext.autodoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_generated/*.txt"]
root_doc = "index"

# Every name in a signature or a :class: role must resolve (-n); the standard library's own
# pages are not part of this site (no intersphinx: the build needs no network).
nitpicky = True
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(collections|concurrent|typing|types|threading|queue|logging|os|io|multiprocessing"
        r"|joblib|sqlite3|pathlib)\..*",
    ),
    (r"py:.*", r"(Future|Executor|Callable|Iterable|Iterator|Generator|Sequence|Mapping)"),
    (r"py:.*", r"(conveyor\.)?_.*|conveyor\.(backends|cli)\..*"),  # private helpers
    (r"py:class", r"(T|R|P|P\.args|P\.kwargs|tqdm\..*)"),
    (r"py:class", r"AsyncResults"),  # conveyor._aio's, the type of Pool.amap's results
]

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

myst_heading_anchors = 3
# Guide pages include sections of README.md under a title of their own.
suppress_warnings = ["myst.header"]

html_theme = "furo"
html_title = f"conveyor {release}"

# `conveyor run --help`, generated from the parser so that the page cannot go stale.
_generated = Path(__file__).with_name("_generated")
_generated.mkdir(exist_ok=True)
(_generated / "run-help.txt").write_text(run_parser().format_help())
