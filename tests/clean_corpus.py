"""A corpus of real-world web text patterns for checking cleaning decisions against datatrove.

``realworld_corpus(n)`` assembles, in code (no stored text), documents of the kinds a web crawl
holds: news articles with currency (£3bn, $1.2m, US$5), figures with units (5km, 12.5%,
30°C), scores (3-0), dates and times (Jan. 5, 10:30am), hyphenated words, straight and curly
quotes, unicode punctuation (‘ ’ “ ” — – … •), contractions, abbreviations (U.S., e.g., Mr.),
URLs, e-mails, handles and hashtags, non-ASCII names; market and sports tables, bullet lists,
short-line navigation, code, spam, boilerplate (cookies, terms, javascript), lorem ipsum,
citation marks, duplicated lines and paragraphs, other languages, and prose that installed
packages ship (the example sentences in spaCy's ``lang/*/examples.py`` in ~70 languages,
Python's own docstrings). Many documents sit near a filter threshold (50 words, 80% alphabetic
words, 2 stop words, 0.3 newlines per word, 5 sentences), where a different word split flips
the decision.
"""

import ast
import glob
import os
import pydoc_data.topics
import random
import sys
from typing import List

FIRST = ["José", "Zoë", "Søren", "Łukasz", "François", "Siobhán", "Nguyễn", "Ólafur", "Mary", "John", "Aisha",
         "Wei", "Priya", "Björn", "Chloé", "Mohammed", "Sean", "D'Arcy", "Ana-María", "Jürgen", "Renée", "Dmitri"]
LAST = ["O'Connor", "Álvarez", "Müller", "Smith", "McDonald", "Nowak", "Kowalczyk", "Dubois", "Haddad", "Chen",
        "Patel", "García-López", "van der Berg", "Østergård", "Jones", "Brown", "O’Neill", "Ibáñez", "Dvořák"]
TITLES = ["Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "Sen.", "Gov.", "Rev.", "Gen.", "Rep.", "St.", ""]
PLACES = ["the U.S.", "the U.K.", "the E.U.", "Washington, D.C.", "N.Y.", "São Paulo", "Zürich", "Kraków",
          "Reykjavík", "Montréal", "the Gulf", "Calif.", "Mass.", "Nov. 3", "Brussels", "Île-de-France", "Wash."]
ORGS = ["Acme Corp.", "Globex Inc.", "Initech Ltd.", "Smith & Co.", "AT&T", "the BBC", "the IMF", "NATO",
        "Procter & Gamble", "the U.N.", "Yahoo!", "E*Trade", "Ben & Jerry's", "McDonald's", "Toys\"R\"Us",
        "the Fed", "H&M", "3M", "7-Eleven", "the ECB"]
MONEY = ["£3bn", "$1.2m", "€450,000", "¥20", "US$5", "C$3.50", "A$10", "₹500", "£20,000", "$4.5bn", "£1.3tn",
         "$99.99", "€1", "£2.50", "$3,000-a-month", "£5m-£6m", "$1.2-billion", "50p", "$10k", "₿0.5", "£3.2bn.",
         "(£40m)", "$2 billion", "£750,000", "€3.7bn,", "$12", "US$1.5m", "£1bn-plus"]
FIGURES = ["5km", "12.5%", "3-0", "2-1", "30°C", "45mph", "2.5kg", "100m", "10GB", "1990s", "24/7", "9/11",
           "10:30am", "7.30pm", "3 p.m.", "6ft", "1,000", "3.5", "50-50", "4x4", "No. 10", "1st", "2nd", "21st",
           "10-year", "-5°C", "+3.2%", "0.5%", "15,000ft", "1.5m", "20%.", "(3.1%)", "3/4", "1:2", "200km/h",
           "12kg,", "5'11\"", "99.9%", "3x", "#1", "2024-25", "2:45", "16:9", "7-6", "6-4,", "1m", "33rpm", "8am"]
DATES = ["Jan. 5, 2021", "5 January 2021", "2021-01-05", "Monday", "last week", "on Tuesday", "Feb. 29",
         "in the 1980s", "Sept. 11", "on 12/03/2024", "mid-2020s", "Q3", "FY2023", "early 2019", "Dec. 25th"]
HYPHENATED = ["well-known", "state-of-the-art", "30-year-old", "ex-president", "U.K.-based", "COVID-19",
              "re-election", "long-term", "year-on-year", "so-called", "e-mail", "co-operate", "T-shirt",
              "follow-up", "mother-in-law", "anti-inflation", "pre-tax", "non-EU", "up-to-date", "Wi-Fi",
              "K-pop", "X-ray", "top-10", "£1bn-a-year", "rock'n'roll", "self-driving", "B-52", "A-level"]
QUOTES = [("\"", "\""), ("“", "”"), ("‘", "’"), ("'", "'"), ("«", "»"), ("„", "“")]
CONTRACTIONS = ["don't", "won't", "can't", "it’s", "they’re", "I'd", "y'all", "'cause", "we've", "she'll",
                "isn't", "shouldn't've", "o'clock", "ma'am", "gonna", "wanna", "cannot", "I'm", "You’re", "Let's",
                "it's", "ain't", "'em", "nothin'", "doin’", "ol'", "dunno", "gotta", "lemme", "c'mon"]
ABBREVIATIONS = ["e.g.", "i.e.", "etc.", "vs.", "a.m.", "p.m.", "approx.", "Inc.", "Ltd.", "Jr.", "U.S.",
                 "Ph.D.", "a.k.a.", "Co.", "v.", "cf.", "No.", "est.", "Dept.", "Ave.", "Blvd.", "ca.", "ft.",
                 "E.g.", "I.E.", "N.J.", "Oct.", "Aug.", "Corp.", "Messrs."]
URLS = ["https://www.bbc.co.uk/news/uk-12345678", "http://example.com/a?b=1&c=2", "www.gov.uk/tax.",
        "https://t.co/AbC123", "(https://en.wikipedia.org/wiki/Foo_(bar))", "example.org/path/", "bit.ly/3xYz",
        "https://news.example.com/2024/01/05/story.html,", "ftp://files.example.net/x.zip", "http://192.168.0.1",
        "https://example.com:8080/path#frag", "nytimes.com", "https://例子.测试/路径", "mailto:news@example.com",
        "<https://example.com>", "[link](https://example.com/x)"]
EMAILS = ["john.doe@example.com", "press@bbc.co.uk.", "<info@acme.io>", "(jane_smith99@mail.example.org)",
          "tips@news.com,", "o'brien@example.ie"]
HANDLES = ["@BBCNews", "#COVID19", "#Brexit", "@user_123", "#1", "@ZoëM", "#100DaysOfCode", "#", "##"]
EMOJI = ["🙂", "😂", "👍", "🔥", "❤️", "🇬🇧", ":)", ";-)", ":-(", "<3", ":D", "¯\\_(ツ)_/¯", "(^_^)", "xD", "^_^"]
PUNCT = [",", ".", ";", ":", "!", "?", "…", "...", " —", " –", " -", "?!", "!!!", ".\"", ".”", ",”", "’", "'."]
NOUNS = ["government", "minister", "council", "company", "report", "economy", "market", "police", "team",
         "inflation", "budget", "hospital", "school", "election", "court", "shares", "profits", "climate",
         "energy", "prices", "workers", "union", "players", "fans", "season", "league", "investors", "bank"]
VERBS = ["said", "announced", "warned", "confirmed", "reported", "denied", "rose", "fell", "expects",
         "told", "revealed", "added", "claimed", "argued", "agreed", "rejected", "estimated", "pledged"]
ADJ = ["new", "major", "local", "national", "senior", "former", "annual", "record", "key", "big", "small",
       "latest", "final", "early", "public", "private", "global", "rural", "urban", "fresh"]
TEMPLATES = [
    "{name} {verb} the {noun} would cost {money} over {fig} years.",
    "The {adj} {noun} in {place} {verb} {money} on {date}, up {fig} from a year earlier.",
    "{q0}We {contr} know yet,{q1} {name} {verb}. {q0}It's a {hyph} problem.{q1}",
    "Shares in {org} {verb} {fig} to {money} after the {adj} {noun} {verb} {fig}.",
    "According to {org}, the {noun} ({abbr} the {adj} one) {verb} {money}{punct}",
    "{title} {name}, {fig}, of {place}, {verb} the {hyph} {noun} {date}{punct}",
    "Read more at {url} or e-mail {email} for details.",
    "The {noun} {verb} in a {fig} win, with {name} scoring twice — {q0}brilliant{q1}, said {title} {last}.",
    "Temperatures hit {fig} in {place} {date}; the {noun} {verb} it was the hottest since the {fig}.",
    "{org} {verb} a {money} deal with {org2} – its biggest since {date}…",
    "{name} ({fig}) {verb}: {q0}I {contr} believe {money} is enough. {contr2}{q1}",
    "The {adj} {noun} {verb} {fig} of {noun2} {abbr} {noun3} were {hyph}.",
    "In {place}, {fig} of {noun} {verb} {money} — {fig2} more than in {date}.",
    "{handle} {verb} the {noun} {emoji} {url}",
    "{q0}{contr} worry,{q1} {title} {last} {verb} at {fig} on {date}. {q0}We’ll be fine.{q1}",
    "The {noun} ({org}) {verb} {fig}/{fig2} on the {hyph} {noun2}, {abbr} {money}.",
    "It {contr} clear whether {name}'s {noun} {verb} {money}, {fig} or {fig2}{punct}",
    "{date}: {org} {verb} profits of {money} (up {fig}) and a {hyph} dividend of {money2}.",
    "Contact {name} at {email} or {phone}.",
    "{name} {verb} {q0}{adj}{q1} and {q0}{adj2}{q1} {noun} for {place}'s {fig} {noun2}.",
]
PLAIN = [
    "The {noun} {verb} that it would have to wait for the {adj} {noun2} to be published before making a decision.",
    "Many of the {noun} who spoke to us said they were worried about what the changes would mean for them "
    "and their families.",
    "It is not the first time that the {noun} has been criticised for the way it handled the {noun2}.",
    "Officials {verb} on {date} that the plan was still being considered, but gave no further details.",
    "{name} said she had been working at the {noun} for more than a decade and had never seen anything like it.",
    "The {adj} {noun} is expected to be discussed when the {noun2} meets again later this month.",
    "Critics have argued that the {noun} does not go far enough, while supporters say it is a step in the "
    "right direction.",
    "There was no immediate comment from the {noun}, which has previously said it would not be drawn on the matter.",
    "He told reporters that the {noun} had made good progress and that he was confident of reaching an agreement.",
    "Residents in {place} have been advised to stay indoors and to keep their windows closed until further notice.",
    "The {noun} will now be reviewed by an independent panel, which is due to report back in the spring.",
    "Speaking after the match, the manager praised his {noun} for their effort and said they had deserved the win.",
]
PHONES = ["+44 20 7946 0958", "(555) 123-4567", "555-0199", "+1-202-555-0147", "020 7946 0000", "0800-123-456"]
BOILERPLATE = [
    "This website uses cookies to improve your experience.", "Accept all cookies", "Privacy Policy | Terms of Use",
    "Please enable JavaScript to view the comments.", "We use cookies. By continuing you agree to our cookie policy.",
    "© 2024 Example Media Ltd. All rights reserved.", "Sign up for our newsletter", "Share this article",
    "Follow us on Twitter", "Skip to main content", "Home | News | Sport | Weather", "Advertisement",
    "Related Topics", "More on this story", "Image source, Getty Images", "Comments (0)", "Log in • Register",
    "Your browser does not support javascript.", "Read our terms of use and privacy policy before you continue.",
]
CODE = ["def main(argv):", "    return 0", "for (int i = 0; i < n; i++) {", "}", "x = {'a': 1, 'b': [2, 3]}",
        "SELECT * FROM users WHERE id = 42;", "#include <stdio.h>", "  # a comment", "if x > 0: print(x)",
        "console.log(\"hello\");", "$ pip install megalite", "Traceback (most recent call last):",
        "  File \"main.py\", line 3, in <module>", "ValueError: bad input", "<div class=\"x\">Hi</div>",
        "npm i -D @types/node", "a->b = c::d;", "git commit -m 'fix: typo'"]
LOREM = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore."
SPAM = ["BUY NOW!!!", "$$$ CHEAP PILLS $$$", "Click here >>> http://spam.example.biz", "100% FREE!!!",
        "WIN £1,000,000 TODAY", "Limited offer!!! Act now!!!", "best price best price best price", "#ad #sponsored",
        "call 0800-SPAM-NOW", "XXX hot deals XXX", "$$$", "!!!", "***", ">>>", "..."]


def _spacy_examples() -> List[str]:
    """Example sentences in ~70 languages that spaCy ships (lang/*/examples.py), read as data."""
    import spacy

    out = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(spacy.__file__), "lang", "*", "examples.py"))):
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and 3 < len(node.value) < 400 \
                    and "nlp" not in node.value and ">>>" not in node.value:
                out.append(node.value.strip())
    return out


def _python_prose() -> List[str]:
    """Paragraphs people wrote for Python's documentation (pydoc topics, module docstrings)."""
    paras = []
    for text in list(pydoc_data.topics.topics.values()):
        paras += [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]
    for name in ("json", "email", "argparse", "collections", "datetime", "decimal", "difflib", "textwrap",
                 "unittest", "logging", "http", "urllib", "csv", "random", "statistics"):
        __import__(name)
        doc = sys.modules[name].__doc__ or ""
        paras += [p.strip() for p in doc.split("\n\n") if len(p.strip()) > 40]
    return paras


class _Gen:
    def __init__(self, rng: random.Random):
        self.r = rng
        self.examples = _spacy_examples()
        self.paras = _python_prose()
        self.english = [s for s in self.examples if s.isascii()]

    def pick(self, xs):
        return self.r.choice(xs)

    def name(self):
        return f"{self.pick(FIRST)} {self.pick(LAST)}"

    def sentence(self) -> str:
        q = self.pick(QUOTES)
        slots = dict(
            name=self.name(), last=self.pick(LAST), title=self.pick(TITLES), verb=self.pick(VERBS),
            noun=self.pick(NOUNS), noun2=self.pick(NOUNS), noun3=self.pick(NOUNS), adj=self.pick(ADJ),
            adj2=self.pick(ADJ), place=self.pick(PLACES), org=self.pick(ORGS), org2=self.pick(ORGS),
            money=self.pick(MONEY), money2=self.pick(MONEY), fig=self.pick(FIGURES), fig2=self.pick(FIGURES),
            date=self.pick(DATES), hyph=self.pick(HYPHENATED), q0=q[0], q1=q[1], contr=self.pick(CONTRACTIONS),
            contr2=self.pick(CONTRACTIONS), abbr=self.pick(ABBREVIATIONS), punct=self.pick(PUNCT),
            url=self.pick(URLS), email=self.pick(EMAILS), handle=self.pick(HANDLES), emoji=self.pick(EMOJI),
            phone=self.pick(PHONES))
        x = self.r.random()
        if x < 0.15:
            s = self.pick(self.english)
        else:
            s = self.pick(TEMPLATES if x < 0.5 else PLAIN).format(**slots).replace("  ", " ")
        if self.r.random() < 0.1:  # a figure or symbol glued to a neighbour, as scraped text often has
            s = s.replace(" ", self.pick(["", "…", "—", "/", "-", "·", "\u00a0", ":", "'"]), 1)
        return s

    def paragraph(self, k=None) -> str:
        return " ".join(self.sentence() for _ in range(k or self.r.randint(1, 4)))

    # --- document kinds ------------------------------------------------------------------------
    def news(self) -> str:
        head = [self.sentence()[: self.r.randint(20, 70)].rstrip(), f"By {self.name()}, {self.pick(ORGS)}",
                self.pick(DATES)]
        body = [self.paragraph() for _ in range(self.r.randint(2, 12))]
        if self.r.random() < 0.3:
            body.insert(self.r.randint(0, len(body)), "\n".join(
                self.pick(["• ", "- ", "* ", "– ", "1. "]) + self.sentence() for _ in range(self.r.randint(2, 6))))
        if self.r.random() < 0.3:
            body.append(self.pick(BOILERPLATE))
        sep = self.pick(["\n\n", "\n", "\n\n", "\r\n\r\n", "\n \n"])
        return sep.join(head[: self.r.randint(0, 3)] + body)

    def figures(self) -> str:
        """A report dense in figures: around 80% alphabetic words, where splitting decides."""
        out = []
        for _ in range(self.r.randint(3, 10)):
            words = self.paragraph().split()
            for i in range(len(words)):
                if self.r.random() < self.r.uniform(0.05, 0.35):
                    words[i] = self.pick(MONEY + FIGURES + HANDLES + EMOJI + URLS[:3])
            out.append(" ".join(words))
        return "\n\n".join(out)

    def table(self) -> str:
        teams = ["Arsenal", "Chelsea", "Man Utd", "Spurs", "Real Madrid", "Bayern München", "PSG", "Celtic"]
        lines = []
        for _ in range(self.r.randint(5, 30)):
            if self.r.random() < 0.5:
                lines.append(f"{self.pick(teams)} {self.r.randint(0, 5)}-{self.r.randint(0, 5)} {self.pick(teams)}")
            else:
                lines.append(f"{self.pick(ORGS)} {self.r.randint(10, 9999):,}.{self.r.randint(0, 9)} "
                             f"({self.pick('+-')}{self.r.uniform(0, 9):.1f}%) {self.pick(MONEY)}")
            if self.r.random() < 0.3:
                lines.append(self.sentence())
        return "\n".join(lines)

    def bullets(self) -> str:
        mark = self.pick(["• ", "- ", "-", "  • ", "* ", "— "])
        lines = [mark + (self.sentence() if self.r.random() < 0.6 else self.pick(NOUNS).title())
                 for _ in range(self.r.randint(3, 25))]
        if self.r.random() < 0.5:
            lines.insert(0, self.paragraph(2))
        return "\n".join(lines)

    def short(self) -> str:
        return " ".join([self.sentence() for _ in range(self.r.randint(1, 4))] +
                        [self.pick(HANDLES + EMOJI) for _ in range(self.r.randint(0, 4))])

    def spam(self) -> str:
        unit = [self.pick(SPAM) for _ in range(self.r.randint(1, 4))]
        lines = [" ".join(unit) if self.r.random() < 0.6 else self.pick(SPAM) + " " + self.sentence()
                 for _ in range(self.r.randint(3, 40))]
        return "\n".join(lines)

    def boilerplate(self) -> str:
        lines = [self.pick(BOILERPLATE) for _ in range(self.r.randint(2, 15))]
        lines[self.r.randint(0, len(lines)):0] = [self.paragraph() for _ in range(self.r.randint(0, 6))]
        return "\n".join(lines)

    def code(self) -> str:
        lines = [self.pick(CODE) for _ in range(self.r.randint(3, 25))]
        lines[self.r.randint(0, len(lines)):0] = [self.paragraph() for _ in range(self.r.randint(1, 5))]
        return "\n".join(lines)

    def lorem(self) -> str:
        return "\n".join([self.paragraph() for _ in range(self.r.randint(2, 6))] + [LOREM])

    def ellipses(self) -> str:
        return "\n".join(self.sentence().rstrip(".!?") + self.pick(["...", "…", ".", " …", "...."])
                         for _ in range(self.r.randint(3, 20)))

    def teaser(self) -> str:
        """Clipped previews: ellipses inside sentences, as link lists and search results show."""
        return "\n".join(" ".join(w + (self.pick(["...", "…", " ...", "… "]) if self.r.random() < 0.3 else "")
                                 for w in self.sentence().split()) for _ in range(self.r.randint(2, 10)))

    def chat(self) -> str:
        """Chat and forum talk: short words (mean length near 3)."""
        talk = ["lol", "u", "r", "ok", "ya", "k", "im", "gr8", "b4", "2day", "xD", "omg", "idk", "it", "is", "a",
                "to", "the", "and", "of", "be", "no", "so", "me", "we", "go", "see", "you", "how", "r u", "thx"]
        return "\n".join(" ".join(self.pick(talk) for _ in range(self.r.randint(2, 15))) + self.pick(PUNCT)
                         for _ in range(self.r.randint(3, 30)))

    def links(self) -> str:
        """A page of links, one per line, some ending a sentence: many lines per word."""
        lines = []
        for _ in range(self.r.randint(5, 40)):
            url = f"https://www.example{self.r.randint(1, 999)}.com/{self.pick(NOUNS)}/{self.r.randint(10**5, 10**9)}"
            lines.append(self.pick([url, url + ".", self.pick(NOUNS).title() + ": " + url, self.sentence()]))
        return "\n".join(lines)

    def hashes(self) -> str:
        return "\n".join(self.sentence() + " " + " ".join(self.pick(HANDLES) for _ in range(self.r.randint(0, 6)))
                         for _ in range(self.r.randint(3, 15)))

    def wiki(self) -> str:
        paras = []
        for _ in range(self.r.randint(2, 8)):
            ss = [self.sentence() + self.pick(["", "[1]", "[12]", "[]", "[edit]", "[citation needed]", "[a]"])
                  for _ in range(self.r.randint(1, 5))]
            paras.append(" ".join(ss))
        return "\n".join(["History[edit]"] + paras)

    def repeated(self) -> str:
        paras = [self.paragraph() for _ in range(self.r.randint(2, 8))]
        for _ in range(self.r.randint(1, 6)):
            paras.insert(self.r.randint(0, len(paras)), self.pick(paras))
        text = self.pick(["\n\n", "\n"]).join(paras)
        if self.r.random() < 0.5:  # a phrase repeated inside the text
            phrase = " ".join(self.sentence().split()[: self.r.randint(2, 10)])
            text += " " + " ".join(phrase for _ in range(self.r.randint(2, 12)))
        return text

    def languages(self) -> str:
        return self.pick(["\n", " ", "\n\n"]).join(self.pick(self.examples) for _ in range(self.r.randint(3, 40)))

    def prose(self) -> str:
        start = self.r.randrange(len(self.paras))
        return "\n\n".join(self.paras[start: start + self.r.randint(1, 8)])

    def long_words(self) -> str:
        blob = "".join(self.pick("ABCDEFGHabcdefgh0123456789+/") for _ in range(self.r.choice([40, 200, 1200])))
        return self.paragraph(self.r.randint(2, 8)) + "\n" + blob + "\n" + self.paragraph()

    def odd_whitespace(self) -> str:
        text = self.news()
        for ws in self.r.sample(["\r", "\t", "\u2028", "\x0b", "\x0c", "\x85", "\u00a0", "\u3000", "  "], 3):
            text = text.replace(" ", ws, self.r.randint(1, 6))
        return text

    def near_threshold(self) -> str:
        """Few words (around 50), few stop words, few sentences, or many lines per word."""
        kind = self.r.randrange(4)
        if kind == 0:
            return " ".join(self.sentence() for _ in range(self.r.randint(2, 6)))
        if kind == 1:
            return "\n".join(self.pick(NOUNS + FIGURES + MONEY) + " " + self.pick(VERBS) + self.pick(PUNCT)
                             for _ in range(self.r.randint(5, 40)))
        if kind == 2:
            return "\n".join(self.sentence() for _ in range(self.r.randint(3, 7)))
        lines = self.r.randint(5, 40)
        return "\n".join(" ".join(self.sentence().split()[: self.r.randint(1, 6)]) for _ in range(lines))


KINDS = [("news", 30), ("figures", 14), ("table", 5), ("bullets", 6), ("short", 5), ("spam", 4),
         ("boilerplate", 5), ("code", 4), ("lorem", 1), ("ellipses", 3), ("hashes", 2), ("wiki", 3),
         ("repeated", 5), ("languages", 4), ("prose", 5), ("long_words", 1), ("odd_whitespace", 3), ("teaser", 2),
         ("chat", 2), ("links", 3), ("near_threshold", 10)]


def realworld_corpus(n: int = 3000, seed: int = 0) -> List[str]:
    """``n`` documents of the kinds above (proportions as in ``KINDS``), plus empty and
    whitespace-only ones."""
    rng = random.Random(seed)
    gen = _Gen(rng)
    names, weights = zip(*KINDS)
    docs = ["", " ", "\n\n", "\t\n"]
    while len(docs) < n:
        docs.append(getattr(gen, rng.choices(names, weights)[0])())
    return docs
