"""Chinese (+86) number handling shared by the carrier, the bridge and the signalling server.

Call `normalise(dial_string, region)` on what a user typed to get E.164, then `classify(e164)`
for its kind, original operator, area and formatting; `is_emergency(dial_string, region)` before
anything is routed. Pure: phonenumbers is used for parsing, formatting, geocoding and short-number
metadata; valid/unallocated decisions and operators come from our own tables (the MIIT mobile
allocation below and `bridge.area_codes`), because phonenumbers' carrier data is out of date
(carrier.md §4.2).

Decisions made here, explicitly:
- `normalise` forgives a trunk 0 written after the country code (`+86 010 6552 9988` becomes
  +861065529988, as libphonenumber does); `classify` does not: an E.164 string containing the
  trunk 0 is `invalid`, as a real trunk would answer it with 484.
- Operators are the *original* allocation (number portability since 2019); never route by them.
- An 11-digit number starting with 1 is mobile-shaped: outside the MIIT table it is `unallocated`
  (including +86 100 0000 000x), never `fixed`.
- 95xxx/96xxx national service numbers are classed with 400 as `shared_cost`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import phonenumbers
from phonenumbers import PhoneNumberFormat, geocoder, shortnumberinfo

from .area_codes import AREA_CODES

__all__ = [
    "KINDS",
    "NumberError",
    "NumberInfo",
    "Operator",
    "classify",
    "emergency_regions",
    "is_emergency",
    "is_emergency_in",
    "mobile_allocation",
    "normalise",
]

KINDS: Final = frozenset({
    "mobile", "fixed", "emergency", "short", "toll_free", "shared_cost", "satellite",
    "unallocated", "invalid", "incomplete", "foreign",
})
# Kinds a carrier connects like an ordinary call (the rest are rejected or unreachable).
ROUTABLE_KINDS: Final = frozenset({"mobile", "fixed", "satellite"})

E164_MAX_DIGITS: Final = 15  # ITU-T E.164
CN_CC: Final = "86"


class NumberError(ValueError):
    """A dial string that cannot become a number. `kind` is "invalid" or "incomplete"."""

    def __init__(self, kind: str, message: str, dial_string: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.dial_string = dial_string


# --------------------------------------------------------------------------------------------
# MIIT mobile allocation (as of end of March 2023, carrier.md §4.1). Longest prefix wins.


@dataclass(frozen=True, slots=True)
class Operator:
    """An allocation holder. `satellite` and `mvno` describe the *range*, not the subscriber."""

    name: str
    name_zh: str
    satellite: bool = False
    mvno: bool = False


_TELECOM = ("China Telecom", "中国电信")
_MOBILE = ("China Mobile", "中国移动")
_UNICOM = ("China Unicom", "中国联通")
_BROADNET = ("China Broadnet", "中国广电")
_SATNET = ("China SatNet", "中国星网")
_OTHER = ("Other MIIT units", "其他单位")


def _table() -> dict[str, Operator]:
    t: dict[str, Operator] = {}

    def put(op: tuple[str, str], prefixes: str, *, satellite: bool = False, mvno: bool = False) -> None:
        for p in prefixes.split():
            assert p not in t, p
            t[p] = Operator(op[0], op[1], satellite=satellite, mvno=mvno)

    put(_TELECOM, "133 149 153 173 177 180 181 189 190 191 193 199")
    put(_TELECOM, "13492 13493 13499 17400 17401 17402 17403 17404 17405", satellite=True)
    put(_TELECOM, "162 1700 1701 1702", mvno=True)
    put(_MOBILE, "1340 1341 1342 1343 1344 1345 1346 1347 1348 135 136 137 138 139 147 148")
    put(_MOBILE, "150 151 152 157 158 159 172 178 182 183 184 187 188 195 197 198")
    put(_MOBILE, "165 1703 1705 1706", mvno=True)
    put(_UNICOM, "130 131 132 145 146 155 156 166 175 176 185 186 196")
    put(_UNICOM, "167 171 1704 1707 1708 1709", mvno=True)
    put(_BROADNET, "192")
    put(_SATNET, "1619", satellite=True)
    put(_OTHER, "17406 17407 17408 17409 17410 17411 17412 1749", satellite=True)
    return t


MOBILE_ALLOCATION: Final[dict[str, Operator]] = _table()


def mobile_allocation(national: str) -> tuple[str, Operator] | None:
    """(matched prefix, operator) for a national mobile number, or None if unallocated."""
    for n in (5, 4, 3):
        op = MOBILE_ALLOCATION.get(national[:n])
        if op is not None:
            return national[:n], op
    return None


# --------------------------------------------------------------------------------------------
# Special numbers

# 110 police, 119 fire, 120 ambulance, 122 traffic accidents, 999 Beijing Red Cross ambulance,
# 12395 maritime rescue, 12110 police by SMS (carrier.md §4.1). phonenumbers misses 122/999/12395.
CN_EMERGENCY: Final = frozenset({"110", "119", "120", "122", "999", "12395", "12110"})
_TOLL_FREE_RE: Final = re.compile(r"(?:(?:10|21)8|8)00\d{7}")
_SHARED_COST_RE: Final = re.compile(r"400\d{7}|950\d{7,8}|9[56]\d{3,4}")
_SEPARATORS: Final = re.compile(r"[\s\-.()/\u00a0\u3000]")


@dataclass(frozen=True, slots=True)
class NumberInfo:
    """What `classify` knows about one number. Pass `kind` to `bridge.carrier.scenarios`."""

    e164: str
    kind: str
    region: str = "CN"                    # ISO region of the country code ("ZZ" if unknown)
    operator: str | None = None           # original allocation (MNP!), mobile/satellite only
    operator_zh: str | None = None
    prefix: str | None = None             # matched MIIT prefix
    mvno: bool = False                    # range reserved for resale
    area_code: str | None = None          # fixed lines
    city: str | None = None
    city_zh: str | None = None
    national: str = ""                    # e.g. "010 6552 9988"
    international: str = ""               # e.g. "+86 10 6552 9988"
    internationally_diallable: bool = True
    reason: str = ""                      # why invalid/incomplete/unallocated, for logs and errors

    @property
    def valid(self) -> bool:
        """False for invalid, incomplete and unallocated numbers (484 / 404 at the trunk)."""
        return self.kind not in {"invalid", "incomplete", "unallocated"}

    @property
    def routable(self) -> bool:
        """True for mobile, fixed and satellite: the kinds a carrier rings."""
        return self.kind in ROUTABLE_KINDS

    @property
    def national_number(self) -> str:
        """The digits after +86 (or after the country code for foreign numbers)."""
        cc = _country_code_of(self.e164[1:]) if self.e164.startswith("+") else None
        return self.e164[1 + len(cc):] if cc else self.e164.lstrip("+")


def _clean(dial_string: str) -> str:
    if not isinstance(dial_string, str):
        raise NumberError("invalid", f"expected a string, got {type(dial_string).__name__}")
    s = _SEPARATORS.sub("", dial_string.strip())
    s = s.translate(str.maketrans("０１２３４５６７８９＋", "0123456789+"))  # full-width digits
    if s in ("", "+"):
        raise NumberError("incomplete", "no digits", dial_string)
    if not re.fullmatch(r"\+?\d+", s):
        bad = next((c for c in s.lstrip("+") if not c.isdigit()), "?")
        raise NumberError("invalid", f"not a phone number: unexpected character {bad!r}", dial_string)
    return s


def _country_code_of(digits: str) -> str | None:
    """The 1-3 digit country code at the start of `digits`, if any region uses it."""
    for n in (1, 2, 3):
        cc = digits[:n]
        if len(cc) == n and phonenumbers.region_code_for_country_code(int(cc)) != "ZZ":
            return cc
        if len(cc) == n and int(cc) in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
            return cc
    return None


def _check_length(digits_with_cc: str, dial_string: str) -> None:
    if len(digits_with_cc) > E164_MAX_DIGITS:
        raise NumberError("invalid", f"too long: {len(digits_with_cc)} digits, E.164 allows at most 15",
                          dial_string)


def _cn_national_plausible(national: str, dial_string: str) -> None:
    """Reject what is certainly not a Chinese number; leave finer decisions to `classify`."""
    if len(national) < 3:
        raise NumberError("incomplete", "too short for a Chinese number", dial_string)
    if national[:2] in {"13", "14", "15", "16", "17", "18", "19"}:
        if len(national) < 11:
            raise NumberError("incomplete", f"a mobile number has 11 digits, got {len(national)}", dial_string)
        if len(national) > 13:
            raise NumberError("invalid", f"a mobile number has 11 digits, got {len(national)}", dial_string)


def normalise(dial_string: str, default_region: str = "CN") -> str:
    """Turn what a user typed into E.164 ("+8613800138000"); raise NumberError otherwise.

    Accepts +86…, 0086…, 00 86…, separators, national landlines with the trunk 0
    ("010 6552 9988"), bare 11-digit mobiles and short numbers ("110" -> "+86110") for CN, and
    national numbers of `default_region` for other regions. Follow with `classify`.
    """
    s = _clean(dial_string)
    region = (default_region or "CN").upper()
    if s.startswith("+"):
        digits = s[1:]
    elif s.startswith("00"):  # 00 is China's international prefix; accepted from any region
        digits = s[2:]
    elif region == "CN":
        national = s[1:] if s.startswith("0") else s
        if not national:
            raise NumberError("incomplete", "only a trunk prefix 0", dial_string)
        if len(national) in (7, 8) and not s.startswith("0") and not national.startswith(("1", "9")):
            raise NumberError("incomplete", "a local number needs its area code, e.g. 010 6552 9988",
                              dial_string)
        _cn_national_plausible(national, dial_string)
        _check_length(CN_CC + national, dial_string)
        return f"+{CN_CC}{national}"
    else:
        return _normalise_foreign(s, region, dial_string)
    if not digits:
        raise NumberError("incomplete", "a country code is missing", dial_string)
    cc = _country_code_of(digits)
    if cc is None:
        raise NumberError("invalid", f"unknown country code in {dial_string!r}", dial_string)
    national = digits[len(cc):]
    if cc == CN_CC:
        if national.startswith("0") and not national.startswith("00"):
            national = national[1:]  # "+86 010 …": the trunk 0 is forgiven here (module doc)
        _cn_national_plausible(national, dial_string)
    else:
        _check_length(cc + national, dial_string)
        return _normalise_foreign("+" + cc + national, "ZZ", dial_string)
    _check_length(cc + national, dial_string)
    return f"+{cc}{national}"


def e164_of(raw: str | None, default_region: str = "CN") -> str:
    """The one E.164 helper for numbers that arrive from elsewhere (a SIP URI user part, a DID
    in the config): `normalise` with URI parameters such as ";isub=1" dropped, or the text as it
    came when it is no number (e.g. "anonymous"), and "" for nothing."""
    if not raw:
        return ""
    user = raw.split(";", 1)[0].strip()
    try:
        return normalise(user, default_region)
    except NumberError:
        return user


def _normalise_foreign(s: str, region: str, dial_string: str) -> str:
    e164 = _foreign_once(s, region, dial_string)
    for _ in range(3):  # phonenumbers may strip a national prefix from its own output again
        again = _foreign_once(e164, "ZZ", dial_string)  # ("+310000000" -> "+31000000" -> "+3100000")
        if again == e164:
            break
        e164 = again
    return e164


def _foreign_once(s: str, region: str, dial_string: str) -> str:
    try:
        num = phonenumbers.parse(s, region)
    except phonenumbers.NumberParseException as exc:
        kind = "incomplete" if exc.error_type in (
            phonenumbers.NumberParseException.TOO_SHORT_NSN,
            phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD) else "invalid"
        raise NumberError(kind, f"not a phone number for region {region}: {exc}", dial_string) from None
    reason = phonenumbers.is_possible_number_with_reason(num)
    R = phonenumbers.ValidationResult
    if not phonenumbers.is_valid_number(num) and reason != R.IS_POSSIBLE:
        kind = "incomplete" if reason in (R.TOO_SHORT, R.IS_POSSIBLE_LOCAL_ONLY) else "invalid"
        where = phonenumbers.region_code_for_country_code(num.country_code or 0)
        raise NumberError(kind, f"wrong length for a number of region {where}", dial_string)
    e164 = phonenumbers.format_number(num, PhoneNumberFormat.E164)
    _check_length(e164[1:], dial_string)
    return e164


# --------------------------------------------------------------------------------------------
# classify


def _fmt(e164: str) -> tuple[str, str]:
    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164, e164
    return (phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL),
            phonenumbers.format_number(num, PhoneNumberFormat.INTERNATIONAL))


def _info(e164: str, kind: str, reason: str = "", *, fmt: bool = True, **kw: object) -> NumberInfo:
    national, international = _fmt(e164) if fmt else (e164[3:], e164)
    kw.setdefault("national", national)
    kw.setdefault("international", international)
    return NumberInfo(e164=e164, kind=kind, reason=reason, **kw)  # type: ignore[arg-type]


def classify(e164: str) -> NumberInfo:
    """Classify an E.164 string (output of `normalise`, or a Request-URI number). Never raises.

    kind is one of KINDS; see NumberInfo for the rest. Strict: anything not "+<digits>" is
    invalid. Next: `bridge.carrier.scenarios.behaviour_for(e164, cfg)` or `.routable`.
    """
    if not isinstance(e164, str) or not re.fullmatch(r"\+\d+", e164):
        return NumberInfo(e164=str(e164), kind="invalid", national=str(e164), international=str(e164),
                          region="ZZ", reason="not an E.164 string (+ and digits)")
    digits = e164[1:]
    if len(digits) > E164_MAX_DIGITS:
        return _info(e164, "invalid", "longer than 15 digits (E.164)", fmt=False, region="ZZ")
    cc = _country_code_of(digits)
    if cc is None:
        return _info(e164, "invalid", "unknown country code", fmt=False, region="ZZ")
    if cc != CN_CC:
        return _classify_foreign(e164, cc)
    return _classify_cn(e164, digits[len(cc):])


def _classify_foreign(e164: str, cc: str) -> NumberInfo:
    num = phonenumbers.parse(e164, None)
    region = phonenumbers.region_code_for_number(num) or phonenumbers.region_code_for_country_code(int(cc))
    national, international = _fmt(e164)
    valid = phonenumbers.is_valid_number(num)
    return NumberInfo(e164=e164, kind="foreign", region=region, national=national,
                      international=international,
                      internationally_diallable=phonenumbers.can_be_internationally_dialled(num),
                      reason="" if valid else "not a valid number in phonenumbers metadata")


def _classify_cn(e164: str, n: str) -> NumberInfo:
    L = len(n)
    if L == 0:
        return _info(e164, "incomplete", "nothing after +86", fmt=False)
    if n[0] == "0":
        return _info(e164, "invalid", "the trunk prefix 0 never follows +86", fmt=False)
    if n in CN_EMERGENCY or (L <= 6 and shortnumberinfo.is_emergency_number(n, "CN")):
        return _info(e164, "emergency", "emergency number: not carried on an international trunk",
                     fmt=False, national=n, internationally_diallable=False)
    if _TOLL_FREE_RE.fullmatch(n):
        return _info(e164, "toll_free", "toll-free: not diallable from abroad", internationally_diallable=False)
    if _SHARED_COST_RE.fullmatch(n):
        return _info(e164, "shared_cost", "shared-cost / national service number: not diallable from abroad",
                     fmt=L >= 10, internationally_diallable=False)
    if n[0] == "1":
        return _classify_cn_1(e164, n)
    return _classify_fixed(e164, n)


def _classify_cn_1(e164: str, n: str) -> NumberInfo:
    L = len(n)
    if L < 3:
        return _info(e164, "incomplete", "too short", fmt=False)
    if L <= 5 and n[1] in "012":  # 10xxx operator services, 11x first class, 12x second class
        return _info(e164, "short", "special service number: not carried on an international trunk",
                     fmt=False, national=n, internationally_diallable=False)
    if n.startswith("10") and L <= 10:  # Beijing landline (10 + 8 digits)
        return _classify_fixed(e164, n)
    if L < 11:
        return _info(e164, "incomplete", f"a mobile number has 11 digits, got {L}", fmt=False)
    if L > 11:
        return _info(e164, "invalid", f"a mobile number has 11 digits, got {L}", fmt=False)
    alloc = mobile_allocation(n)
    if alloc is None:
        return _info(e164, "unallocated", f"prefix {n[:3]} is not allocated by MIIT")
    prefix, op = alloc
    return _info(e164, "satellite" if op.satellite else "mobile", operator=op.name,
                 operator_zh=op.name_zh, prefix=prefix, mvno=op.mvno)


def _classify_fixed(e164: str, n: str) -> NumberInfo:
    if n[0] == "2" or n.startswith("10"):
        area = n[:2]
    else:
        area = n[:3]
    entry = AREA_CODES.get(area)
    local = n[len(area):]
    if entry is None:
        if area == "26":
            return _info(e164, "invalid", "area code 26 is reserved", fmt=False)
        if len(n) < 10:
            return _info(e164, "incomplete", f"too short: {len(n)} digits", fmt=False)
        if len(n) > 11:
            return _info(e164, "invalid", f"too long: {len(n)} digits", fmt=False)
        return _info(e164, "unallocated", f"area code {area} is not in use", area_code=area)
    lengths, city, city_zh = entry
    if len(local) < min(lengths):
        return _info(e164, "incomplete", f"area {area} ({city}) has {_lens(lengths)}-digit local numbers, "
                     f"got {len(local)}", fmt=False, area_code=area, city=city, city_zh=city_zh)
    if len(local) not in lengths:
        return _info(e164, "invalid", f"area {area} ({city}) has {_lens(lengths)}-digit local numbers, "
                     f"got {len(local)}", fmt=False, area_code=area, city=city, city_zh=city_zh)
    if local[0] in "01":
        return _info(e164, "invalid", "a local number cannot start with 0 or 1", fmt=False,
                     area_code=area, city=city, city_zh=city_zh)
    try:
        num = phonenumbers.parse(e164, None)
        city = geocoder.description_for_number(num, "en") or city
        city_zh = geocoder.description_for_number(num, "zh") or city_zh
    except phonenumbers.NumberParseException:  # pragma: no cover - e164 is well-formed here
        pass
    return _info(e164, "fixed", area_code=area, city=city, city_zh=city_zh)


def _lens(lengths: tuple[int, ...]) -> str:
    return " or ".join(str(x) for x in lengths)


# --------------------------------------------------------------------------------------------
# emergency


def is_emergency_in(dial_string: str, region: str) -> bool:
    """True if `dial_string` (digits, no country code) is an emergency number in `region`.

    phonenumbers' shortnumberinfo, plus our CN list (122, 999, 12395, 12110 are missing there).
    """
    try:
        s = _clean(dial_string)
    except NumberError:
        return False
    if s.startswith("+"):
        return False
    region = region.upper()
    if region == "CN" and s in CN_EMERGENCY:
        return True
    return bool(shortnumberinfo.is_emergency_number(s, region))


def emergency_regions(dial_string: str, region: str = "CN") -> tuple[str, ...]:
    """Regions (CN and/or the user's `region`) in which `dial_string` is an emergency number.

    "+86110" or "0086 110" counts for CN only, "+49 110" for DE only; a bare "110" is checked
    against both CN and `region` (carrier.md §4.1: detect relative to both).
    """
    try:
        s = _clean(dial_string)
    except NumberError:
        return ()
    region = (region or "CN").upper()
    digits: str | None = None
    if s.startswith("+"):
        digits = s[1:]
    elif s.startswith("00"):
        digits = s[2:]
    if digits is not None:
        cc = _country_code_of(digits)
        if cc is None:
            return ()
        r = phonenumbers.region_code_for_country_code(int(cc))
        return (r,) if is_emergency_in(digits[len(cc):], r) else ()
    out = [r for r in dict.fromkeys(("CN", region)) if is_emergency_in(s, r)]
    return tuple(out)


def is_emergency(dial_string: str, region: str = "CN") -> bool:
    """True if the dial string is an emergency number in CN or in the user's `region`.

    Check this before `normalise`; on True, never route or bill: show "emergency calls are not
    supported — use a local phone" and log it.
    """
    return bool(emergency_regions(dial_string, region))
