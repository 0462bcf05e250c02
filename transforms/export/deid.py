"""De-identify free text: personal data replaced by typed placeholders.

Pure Python (`re`), no Beam. The rule set, applied in this order (an earlier
rule's placeholder is never matched again):

  <URL>      http(s):// or www. addresses that carry a query string (`?...`)
  <EMAIL>    local@domain.tld
  <IBAN>     two letters, two check digits, 11-30 letters/digits (spaces
             allowed), passing the ISO 13616 mod-97 check
  <RRN>      Korean resident registration number YYMMDD-GNNNNNN (hyphen or
             space optional), with a valid month and day
  <CARD>     13-19 digits (contiguous, in groups of four, or 4-6-5, spaces or
             hyphens between groups) passing the Luhn check
  <PHONE>    international (+CC ...), Korean mobile (01X-XXX(X)-XXXX, also
             without separators) and landline (02-, 0XX-) numbers
  <ACCOUNT>  account-like numbers: three or four hyphen-separated digit groups
             of 10-16 digits in all (Korean bank account formats)

Ordinary text stays: prices, dates (2026-11-21 has 8 digits), times, order
numbers without separators or with letters, version numbers. What is not in
the rule set (names, street addresses) is not found: use Cloud DLP for it.
"""

from __future__ import annotations

import collections
import re

EMAIL = "EMAIL"
PHONE = "PHONE"
CARD = "CARD"
RRN = "RRN"
IBAN = "IBAN"
ACCOUNT = "ACCOUNT"
URL = "URL"
TYPES = (URL, EMAIL, IBAN, RRN, CARD, PHONE, ACCOUNT)


def placeholder(kind: str) -> str:
  return f"<{kind}>"


def luhn_valid(digits: str) -> bool:
  """The Luhn (mod 10) check of payment card numbers."""
  total = 0
  for position, char in enumerate(reversed(digits)):
    value = int(char)
    if position % 2:
      value *= 2
      if value > 9:
        value -= 9
    total += value
  return total % 10 == 0


def iban_valid(text: str) -> bool:
  """ISO 13616: move the first four characters to the end, letters to
  10..35, and the number is 1 modulo 97."""
  compact = text.replace(" ", "").upper()
  rearranged = compact[4:] + compact[:4]
  number = "".join(str(int(char, 36)) for char in rearranged)
  return int(number) % 97 == 1


def _rrn_valid(text: str) -> bool:
  digits = re.sub(r"\D", "", text)
  month, day = int(digits[2:4]), int(digits[4:6])
  return 1 <= month <= 12 and 1 <= day <= 31


def _always(_: str) -> bool:
  return True


def _account_like(text: str) -> bool:
  return 10 <= sum(char.isdigit() for char in text) <= 16


def _card_like(text: str) -> bool:
  digits = re.sub(r"\D", "", text)
  return 13 <= len(digits) <= 19 and luhn_valid(digits)


# Digits not glued to other digits or letters: a rule never takes part of a
# longer number or word.
_START = r"(?<![\w+])"
_END = r"(?![\w])"

RULES = (
    (URL, re.compile(r"(?:https?://|www\.)[^\s?#<>\"]+\?[^\s<>\"]+",
                     re.IGNORECASE), _always),
    (EMAIL, re.compile(r"[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                       r"\.[A-Za-z]{2,}"), _always),
    (IBAN, re.compile(_START + r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}" + _END),
     iban_valid),
    (RRN, re.compile(_START + r"\d{2}[01]\d[0-3]\d[- ]?[1-8]\d{6}" + _END),
     _rrn_valid),
    # Contiguous, in groups of four, or Amex's 4-6-5.
    (CARD, re.compile(_START + r"(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}"
                      r"|\d{4}([ -])\d{6}\2\d{4,5})" + _END), _card_like),
    (PHONE, re.compile(
        r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w])"  # +CC
        r"|" + _START + r"01[016789][ .-]?\d{3,4}[ .-]?\d{4}" + _END +  # KR mobile
        r"|" + _START + r"0(?:2|[3-6][1-5]|70)[ .)-]\d{3,4}[ .-]\d{4}" + _END),
     _always),
    (ACCOUNT, re.compile(_START + r"\d{2,6}(?:-\d{2,7}){2,3}" + _END),
     _account_like),
)


def scrub(text: str, counts: collections.Counter | None = None) -> str:
  """`text` with every match of the rule set replaced by its placeholder;
  `counts[type]` grows by the replacements made."""
  for kind, pattern, valid in RULES:
    text = pattern.sub(_replacer(kind, valid, counts), text)
  return text


def _replacer(kind, valid, counts):

  def replace(match: re.Match) -> str:
    if not valid(match.group(0)):
      return match.group(0)
    if counts is not None:
      counts[kind] += 1
    return placeholder(kind)

  return replace
