"""Sphinx configuration of the explora_geo documentation.

Built offline (no intersphinx) with warnings as errors:
``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

import os
import sys

sys.path.insert(0, os.path.abspath('..'))

import explora_geo

project = 'explora_geo'
author = 'explora_geo developers'
copyright = '2025, explora_geo developers'
release = explora_geo.__version__
version = release

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
exclude_patterns = ['_build', 'api/generated/*.rst~']
root_doc = 'index'

# Google-style docstrings, as in TorchGeo.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

templates_path = ['_templates']
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {
    'members': True,
    'show-inheritance': True,
    'member-order': 'bysource',
}
autodoc_typehints = 'description'
autodoc_typehints_description_target = 'documented_params'
autodoc_class_signature = 'separated'
autodoc_preserve_defaults = True

# Links between pages, toctree entries and heading anchors must resolve (the
# build runs with -W). Python cross-references are not checked (nitpicky is
# off): without intersphinx (the build needs no network) every third-party
# name in a signature would be unresolvable.
myst_heading_anchors = 3
suppress_warnings = ['myst.header']

html_theme = 'furo'
html_title = f'explora_geo {release}'
