"""De-identification of free text: every planted item found, clean text left alone."""

import collections
import random

import pytest

from transforms.export import deid

SENTENCES = (
    "Hi, please contact me at {} about my order.",
    "제 연락처는 {} 입니다. 확인 부탁드려요.",
    "{}",
    "My details: {}, thanks!",
    "환불 요청합니다 ({}) 빠른 처리 바랍니다",
    "Can you check {}? It was charged twice.",
    "(see {})",
)


def _luhn_complete(rng, prefix: str, length: int) -> str:
  body = prefix + "".join(rng.choice("0123456789")
                          for _ in range(length - len(prefix) - 1))
  for check in "0123456789":
    if deid.luhn_valid(body + check):
      return body + check
  raise AssertionError("no Luhn digit")


def _card(rng):
  prefix, length = rng.choice([("4", 16), ("51", 16), ("37", 15), ("6011", 16),
                               ("35", 16), ("4", 13), ("62", 19)])
  digits = _luhn_complete(rng, prefix, length)
  separator = rng.choice(["", " ", "-"])
  if separator and length == 16:
    return separator.join(digits[i:i + 4] for i in range(0, 16, 4))
  return digits


def _iban(rng):
  country, length = rng.choice([("DE", 22), ("GB", 22), ("FR", 27), ("NL", 18),
                                ("ES", 24)])
  if country in ("GB", "NL"):
    bank = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4))
    bban = bank + "".join(rng.choice("0123456789")
                          for _ in range(length - 8))
  else:
    bban = "".join(rng.choice("0123456789") for _ in range(length - 4))
  numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
  check = 98 - int(numeric) % 97
  iban = f"{country}{check:02d}{bban}"
  assert deid.iban_valid(iban)
  if rng.random() < 0.5:
    return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))
  return iban


def _digits(rng, n):
  return "".join(rng.choice("0123456789") for _ in range(n))


def _phone(rng):
  kind = rng.randrange(5)
  if kind == 0:
    return f"010-{_digits(rng, 4)}-{_digits(rng, 4)}"
  if kind == 1:
    return f"01{rng.choice('16789')}{_digits(rng, 3)}{_digits(rng, 4)}"
  if kind == 2:
    return f"02-{_digits(rng, 3)}-{_digits(rng, 4)}"
  if kind == 3:
    return f"+82 10-{_digits(rng, 4)}-{_digits(rng, 4)}"
  return rng.choice([f"+1 (415) {_digits(rng, 3)}-{_digits(rng, 4)}",
                     f"+44 20 {_digits(rng, 4)} {_digits(rng, 4)}",
                     f"+49 30 {_digits(rng, 8)}"])


def _rrn(rng):
  return (f"{rng.randrange(100):02d}{rng.randrange(1, 13):02d}"
          f"{rng.randrange(1, 29):02d}{rng.choice(['-', ''])}"
          f"{rng.randrange(1, 5)}{_digits(rng, 6)}")


def _email(rng):
  user = rng.choice(["kim.minji", "john_doe+shop", "a.b-c", "user123"])
  return f"{user}@{rng.choice(['example.com', 'mail.co.kr', 'x.io'])}"


def _url(rng):
  return (f"https://{rng.choice(['shop.example.com', 'www.naver.com'])}"
          f"/track?uid={_digits(rng, 6)}&token={_digits(rng, 8)}")


def _account(rng):
  return rng.choice([f"110-{_digits(rng, 3)}-{_digits(rng, 6)}",
                     f"1002-{_digits(rng, 3)}-{_digits(rng, 6)}",
                     f"{_digits(rng, 6)}-01-{_digits(rng, 6)}",
                     f"{_digits(rng, 3)}-{_digits(rng, 6)}-{_digits(rng, 2)}-"
                     f"{_digits(rng, 3)}"])


GENERATORS = {deid.CARD: _card, deid.IBAN: _iban, deid.PHONE: _phone,
              deid.RRN: _rrn, deid.EMAIL: _email, deid.URL: _url,
              deid.ACCOUNT: _account}


def _planted_corpus(n=1000, seed=0):
  rng = random.Random(seed)
  corpus = []
  kinds = list(GENERATORS)
  for i in range(n):
    planted = [(kind, GENERATORS[kind](rng))
               for kind in (kinds[i % len(kinds)],
                            rng.choice(kinds))]
    text = rng.choice(SENTENCES).format(
        " and ".join(value for _, value in planted))
    corpus.append((text, planted))
  return corpus


def test_every_planted_item_is_replaced_by_its_placeholder():
  corpus = _planted_corpus()
  missed, mistyped = [], []
  found = collections.Counter()
  for text, planted in corpus:
    counts = collections.Counter()
    scrubbed = deid.scrub(text, counts)
    for kind, value in planted:
      if value in scrubbed:
        missed.append((kind, value, scrubbed))
      elif deid.placeholder(kind) not in scrubbed:
        mistyped.append((kind, value, scrubbed))
    found.update(counts)
    assert sum(counts.values()) == len(planted), (text, scrubbed, counts)
  assert not missed, missed[:5]
  # A 13-digit number can be both a Luhn-valid card and a resident number
  # with a valid date: it is replaced either way, typed by the earlier rule.
  assert len(mistyped) <= 0.01 * len(corpus), mistyped[:5]
  assert set(found) == set(GENERATORS)  # Every type planted and counted.


def _clean_corpus(n=1000, seed=1):
  rng = random.Random(seed)
  templates = (
      lambda: f"The total was ${rng.randrange(1, 5000):,}.{rng.randrange(100):02d} including tax.",
      lambda: f"주문번호 {rng.randrange(10**6, 10**8)} 배송이 {rng.randrange(1, 30)}일 늦어졌어요",
      lambda: f"Order #A{rng.randrange(10**5, 10**7)} arrived on 2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}.",
      lambda: f"가격은 {rng.randrange(1, 999):,},000원 입니다",
      lambda: f"Meeting at {rng.randrange(24):02d}:{rng.randrange(60):02d} on {rng.randrange(1, 29)}/{rng.randrange(1, 13)}/2026",
      lambda: f"I bought {rng.randrange(1, 20)} items, version {rng.randrange(1, 9)}.{rng.randrange(20)}.{rng.randrange(20)} works fine",
      lambda: f"Rated {rng.randrange(1, 6)} out of 5; delivery took {rng.randrange(1, 72)} hours",
      lambda: f"See https://example.com/help/article-{rng.randrange(1000)} for details",
      lambda: f"Invoice INV-{rng.randrange(2020, 2027)}-{rng.randrange(10**4, 10**5)} paid",
      lambda: f"The model scored {rng.random():.4f} at {rng.randrange(100)}% recall",
      lambda: f"Tracking number {rng.randrange(10**9, 10**10)} shows in transit",
      lambda: "정말 좋은 상품이에요. 다음에 또 살게요!",
      lambda: f"Room {rng.randrange(100, 1000)}, floor {rng.randrange(1, 40)}, open 9-18",
  )
  return [rng.choice(templates)() for _ in range(n)]


def test_clean_text_is_almost_never_changed():
  corpus = _clean_corpus()
  changed = [text for text in corpus if deid.scrub(text) != text]
  assert len(changed) / len(corpus) < 0.01, changed[:10]


@pytest.mark.parametrize("digits,valid", [
    ("4111111111111111", True), ("4111111111111112", False),
    ("79927398713", True), ("79927398710", False)])
def test_luhn_known_answers(digits, valid):
  assert deid.luhn_valid(digits) is valid


def test_card_number_failing_luhn_is_kept():
  assert deid.scrub("ref 4111 1111 1111 1112") == "ref 4111 1111 1111 1112"
  assert deid.scrub("card 4111 1111 1111 1111") == "card <CARD>"


def test_iban_known_answer():
  assert deid.iban_valid("GB82 WEST 1234 5698 7654 32")
  assert not deid.iban_valid("GB82 WEST 1234 5698 7654 33")
