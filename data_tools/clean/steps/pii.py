"""Redact personal data: e-mail addresses, public IP addresses and phone numbers.

Replacements are fixed placeholders (FineWeb's for e-mails and IPs, rotating through a few
so text statistics stay natural); the report counts each kind.
"""

import ipaddress
import re
from typing import Optional, Sequence

from data_tools.clean.steps.base import Step

_EMAIL = re.compile(
    r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\b")
# International (+44 20 7946 0958), bracketed area code ((555) 123-4567) or dash/dot-separated
# (555-123-4567) numbers; plain space-separated digit runs are left alone (they are usually
# figures, not phones).
_PHONE = re.compile(r"(?<![\w.+-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}"
                    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}"
                    r"|\d{2,4}[.-]\d{3,4}[.-]\d{3,4})(?![\w-]|\.\d)")


class RedactPII(Step):
    name = "pii"

    def __init__(self, emails: bool = True, ip_addresses: bool = True, phone_numbers: bool = True,
                 only_public_ips: bool = True,
                 email_replacements: Sequence[str] = ("email@example.com", "firstname.lastname@example.org"),
                 ip_replacements: Sequence[str] = ("22.214.171.124", "126.96.36.199", "188.8.131.52",
                                                   "184.108.40.206", "220.127.116.11", "18.104.22.168"),
                 phone_replacement: str = "<phone>", min_phone_digits: int = 9):
        super().__init__()
        self.emails, self.ip_addresses, self.phone_numbers = emails, ip_addresses, phone_numbers
        self.only_public_ips, self.min_phone_digits = only_public_ips, min_phone_digits
        self.email_replacements, self.ip_replacements = list(email_replacements), list(ip_replacements)
        self.phone_replacement = phone_replacement
        self._turn = 0

    def _next(self, options):
        self._turn += 1
        return options[self._turn % len(options)]

    def _email(self, m):
        self.count("emails")
        return self._next(self.email_replacements)

    def _ip(self, m):
        ip = ipaddress.ip_address(m.group())
        if self.only_public_ips and not ip.is_global:
            return m.group()
        self.count("ip_addresses")
        return self._next(self.ip_replacements)

    def _phone(self, m):
        if sum(c.isdigit() for c in m.group()) < self.min_phone_digits:
            return m.group()
        self.count("phone_numbers")
        return self.phone_replacement

    def process(self, doc) -> Optional[str]:
        text = doc.text
        if self.emails and "@" in text:
            text = _EMAIL.sub(self._email, text)
        if self.ip_addresses:
            text = _IPV4.sub(self._ip, text)
        if self.phone_numbers:
            text = _PHONE.sub(self._phone, text)
        if text != doc.text:
            self.count("documents_redacted")
            doc.set_text(text)
        return None
