"""Remove documents by their ``url``: block-listed domains and URLs, banned words.

Block lists are text files, one domain (``example.com``, matching it and its subdomains'
registered domain, or an exact host) or one URL per line, ``#`` comments allowed. Banned
words match whole words of the URL; banned subwords match anywhere in the domain (as in
"casino" inside "bestcasinos.com"); soft-banned words remove a document when at least
``soft_word_threshold`` of them appear. Domains are split with tldextract's bundled public
suffix list; nothing is fetched.
"""

import re
from typing import Iterable, List, Optional, Sequence

from data_tools.clean.steps.base import Step
from megalite.errors import MegaliteError

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def read_list(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip().lower() for line in f if line.strip() and not line.lstrip().startswith("#")]
    except OSError as e:
        raise MegaliteError(f"url_filter: cannot read block list {path}: {e.strerror}") from e


class URLFilter(Step):
    name = "url_filter"

    def __init__(self, domain_blocklists: Sequence[str] = (), url_blocklists: Sequence[str] = (),
                 blocked_domains: Iterable[str] = (), banned_words: Iterable[str] = (),
                 banned_subwords: Iterable[str] = (), soft_banned_words: Iterable[str] = (),
                 soft_word_threshold: int = 2, url_key: str = "url"):
        super().__init__()
        from tldextract import TLDExtract

        self.domains = {d.lower() for d in blocked_domains}.union(*(read_list(p) for p in domain_blocklists))
        self.urls = set().union(*(read_list(p) for p in url_blocklists))
        self.banned_words = {w.lower() for w in banned_words}
        self.banned_subwords = [_NON_ALNUM.sub("", w.lower()) for w in banned_subwords]
        self.soft_banned_words = {w.lower() for w in soft_banned_words}
        self.soft_word_threshold = soft_word_threshold
        self.url_key = url_key
        # no cache and no suffix-list URLs: the snapshot inside the wheel, no network
        self._split = TLDExtract(cache_dir=None, suffix_list_urls=())

    def process(self, doc) -> Optional[str]:
        url = doc.record.get(self.url_key)
        if not isinstance(url, str) or not url:
            self.count("no_url")
            return None
        parts = self._split(url)
        if parts.top_domain_under_public_suffix.lower() in self.domains:
            return "blocked_domain"
        if parts.fqdn.lower() in self.domains:
            return "blocked_subdomain"
        if url.lower() in self.urls or url in self.urls:
            return "blocked_url"
        words = set(_NON_ALNUM.split(url.lower()))
        if not self.banned_words.isdisjoint(words):
            return "banned_word"
        if len(self.soft_banned_words & words) >= self.soft_word_threshold > 0:
            return "soft_banned_words"
        domain = _NON_ALNUM.sub("", parts.fqdn.lower())
        if any(w and w in domain for w in self.banned_subwords):
            return "banned_subword"
        return None
