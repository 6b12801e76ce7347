"""MkDocs hook: show the Sphinx cross-reference roles of TRAITS' docstrings (``:func:`x```) as plain code.

The docstrings are written for reading in the source and in ``help()``; mkdocstrings renders them as Markdown,
where a role prefix would be printed literally before the code span.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):(?=<code)")


def on_page_content(html, page, config, files):
    """Drop the role prefix in front of a code span."""
    return ROLE.sub("", html)
