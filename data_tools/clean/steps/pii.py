"""Redact personal data: e-mail addresses, public IP addresses, phone numbers, and Chinese
mainland mobile numbers and resident identity card numbers.

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

# Mainland China mobile numbers: 11 digits, 1 then 3-9, optionally +86 / 86 first, optionally
# written 3-4-4 with spaces or dashes; not inside a longer run of digits.
_CN_MOBILE = re.compile(r"(?<![\d+])(?:(?:\+|00)?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)")
# Resident identity card numbers (GB 11643-1999): 6-digit region, birth date yyyymmdd,
# 3-digit sequence, then a check character (ISO 7064 MOD 11-2), checked below.
_CN_ID = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"
                    r"(?![0-9A-Za-z])")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def valid_cn_id(number: str) -> bool:
    """Is the 18-character ``number`` a resident ID with a real birth date and the right check character?"""
    import datetime

    try:
        datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    total = sum(int(c) * w for c, w in zip(number[:17], _ID_WEIGHTS))
    return "10X98765432"[total % 11] == number[17].upper()


class RedactPII(Step):
    name = "pii"

    def __init__(self, emails: bool = True, ip_addresses: bool = True, phone_numbers: bool = True,
                 only_public_ips: bool = True,
                 email_replacements: Sequence[str] = ("email@example.com", "firstname.lastname@example.org"),
                 ip_replacements: Sequence[str] = ("22.214.171.124", "126.96.36.199", "188.8.131.52",
                                                   "184.108.40.206", "220.127.116.11", "18.104.22.168"),
                 phone_replacement: str = "<phone>", min_phone_digits: int = 9, chinese_mobiles: bool = True,
                 chinese_ids: bool = True, id_replacement: str = "<id_number>"):
        super().__init__()
        self.chinese_mobiles, self.chinese_ids, self.id_replacement = chinese_mobiles, chinese_ids, id_replacement
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

    def _cn_mobile(self, m):
        self.count("chinese_mobiles")
        return self.phone_replacement

    def _cn_id(self, m):
        if not valid_cn_id(m.group()):
            return m.group()
        self.count("chinese_ids")
        return self.id_replacement

    def process(self, doc) -> Optional[str]:
        text = doc.text
        if self.chinese_ids and len(text) >= 18:
            text = _CN_ID.sub(self._cn_id, text)
        if self.chinese_mobiles:
            text = _CN_MOBILE.sub(self._cn_mobile, text)
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
