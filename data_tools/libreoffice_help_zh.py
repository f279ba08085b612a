"""Real modern Chinese prose, openly licensed: the Simplified Chinese LibreOffice help, as
Debian's ``libreoffice-help-zh-cn`` ships it (MPL-2.0; about 2,600 HTML pages, 2.3 million
characters of text, most of it Chinese). scripts/setup_env.sh unpacks the package into
.cache/ (apt-get download, not installed, so none of LibreOffice comes with it); a system-wide
install is read as well. Never copied into the repository.

Each help page becomes one document: its headings and paragraphs, one per line, as a browser
shows them (the hidden per-platform alternatives of key names left out, the default kept).
"""

import gzip
import os
import re
from functools import lru_cache
from html import unescape
from typing import Optional, Tuple

PACKAGE = "libreoffice-help-zh-cn"
LICENSE = "MPL-2.0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLACES = [os.path.join(ROOT, ".cache", PACKAGE), "/"]
HELP_DIR = os.path.join("usr", "share", "libreoffice", "help", "zh-CN")
BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}
HIDDEN = re.compile(r'\shidden(?:="[^"]*")?(?=\s|/?$)')  # the attribute, not an id="hidden_text"
TOKEN = re.compile(r"<!--.*?-->|<(/?)([a-zA-Z][a-zA-Z0-9]*)([^>]*)>|([^<]+)|<", re.S)


def help_dir() -> Optional[str]:
    """Where the package's pages are: .cache/ (setup_env.sh) or a system-wide install."""
    for place in PLACES:
        path = os.path.join(place, HELP_DIR)
        if os.path.isdir(path):
            return path
    return None


def package_version() -> Optional[str]:
    """The Debian version of the pages read, from the package's changelog (None if absent)."""
    path = help_dir()
    if path is None:
        return None
    changelog = os.path.join(path, "..", "..", "..", "doc", PACKAGE, "changelog.Debian.gz")
    try:
        with gzip.open(changelog, "rt", encoding="utf-8") as f:
            return f.readline().split("(", 1)[1].split(")", 1)[0]
    except (OSError, IndexError):
        return None


def page_text(html: str) -> str:
    """The lines of the page's display area (from <div id="DisplayArea"> to the footer: the
    menus and the debug footer are not the page's text): paragraphs' and headings' text, the
    hidden spans skipped unless they hold the default alternative (key names: Ctrl, not
    Command). A tokenizing regular expression: html.parser takes 5 times as long here."""
    start, end = html.find('id="DisplayArea"'), html.find("<footer")
    lines, block, hiding = [], None, []
    for m in TOKEN.finditer(html, max(start, 0), end if end > start else len(html)):
        close, tag, attrs, text = m.groups()
        if text is not None:
            if block is not None and not any(hiding):
                block.append(text)
        elif tag == "span":
            if close:
                hiding = hiding[:-1]
            else:
                hiding.append(bool(HIDDEN.search(attrs)) and ' id="default' not in attrs)
        elif tag in BLOCKS:
            if not close:
                block = []
            elif block is not None:
                line = " ".join(unescape("".join(block)).split())
                if line:
                    lines.append(line)
                block = None
    return "\n".join(lines)


@lru_cache(maxsize=None)
def help_pages() -> Optional[Tuple[str, ...]]:
    """Every help page's text, in path order (pages with no text left out). None without the package."""
    path = help_dir()
    if path is None:
        return None
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names if f.endswith(".html"))
    texts = []
    for name in files:
        with open(name, encoding="utf-8") as f:
            text = page_text(f.read())
        if text:
            texts.append(text)
    return tuple(texts)
