"""The companion book: run the notebooks with papermill, then build them with Jupyter Book.

The pieces, from the bottom up:

- :mod:`adamqlr.book.project`: where things are (project root, ``_toc.yml``, the notebook sources
  ``notebooks/NN_topic.py`` and their executed copies ``book/NN_topic.ipynb``);
- :mod:`adamqlr.book.fingerprint`: what a notebook's output depends on, and its input hash;
- :mod:`adamqlr.book.runner`: execute one notebook (temp file, verify, promote) or the whole book,
  skipping notebooks whose inputs have not changed;
- :mod:`adamqlr.book.scan`: refuse active content (scripts) in stored outputs;
- :mod:`adamqlr.book.reproducibility`: the generated "Reproducibility" page;
- :mod:`adamqlr.book.build`: the strict ``jupyter-book build``;
- :mod:`adamqlr.book.cli`: ``adamqlr book run|build|status``;
- :mod:`adamqlr.book.demo`: the small synthetic problem of the quickstart notebook.

This package imports nothing at import time, so that a notebook importing
:mod:`adamqlr.book.demo` depends on that module alone (see :mod:`adamqlr.book.fingerprint`).
"""
