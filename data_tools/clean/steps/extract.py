"""HTML -> main text with trafilatura, as FineWeb does (precision-leaning, no comments).

Navigation, headers, footers, scripts, styles and boilerplate are dropped; paragraphs become
lines. Pages with no main text are removed. Documents that are not HTML (no ``<html``,
``<body``, ``<p`` ... tag near the start) pass unchanged unless ``html_only`` is false, so
one pipeline can take WARC pages and plain text together.
"""

import re
from typing import Optional

from data_tools.clean.steps.base import Step

_LOOKS_LIKE_HTML = re.compile(r"<(?:!doctype|html|head|body|div|p|article|main)\b", re.IGNORECASE)


class ExtractText(Step):
    name = "extract"

    def __init__(self, favor_precision: bool = True, include_comments: bool = False, include_tables: bool = True,
                 deduplicate: bool = True, html_only: bool = True):
        super().__init__()
        self.html_only = html_only
        self.options = dict(favor_precision=favor_precision, include_comments=include_comments,
                            include_tables=include_tables, deduplicate=deduplicate)

    def process(self, doc) -> Optional[str]:
        import trafilatura

        if self.html_only and not _LOOKS_LIKE_HTML.search(doc.text[:2000]):
            self.count("not_html")
            return None
        try:
            text = trafilatura.extract(doc.text, **self.options)
        except (ValueError, TypeError):  # markup lxml cannot parse at all
            text = None
        if not text or not text.strip():
            return "no_text"
        doc.set_text(text)
        return None
