"""bridge.numbering: normalise, classify (MIIT table, area-code lengths), emergency detection."""

from __future__ import annotations

import pytest

from jego_call import numbering
from jego_call.area_codes import AREA_CODES
from jego_call.numbering import (
    NumberError,
    classify,
    emergency_regions,
    is_emergency,
    is_emergency_in,
    normalise,
)

# --------------------------------------------------------------------------------------------
# normalise


@pytest.mark.parametrize(("dial", "expected"), [
    ("+8613800138000", "+8613800138000"),
    ("+86 138 0013 8000", "+8613800138000"),
    ("0086 138-0013-8000", "+8613800138000"),
    ("00 86 (138) 0013 8000", "+8613800138000"),
    ("0086-10-6552-9988", "+861065529988"),
    ("13800138000", "+8613800138000"),
    ("138 0013 8000", "+8613800138000"),
    ("013800138000", "+8613800138000"),      # landline -> mobile outside its home area: 0 + mobile
    ("010 6552 9988", "+861065529988"),
    ("(010) 6552-9988", "+861065529988"),
    ("0571 8888 1234", "+8657188881234"),
    ("0891 6552998", "+868916552998"),
    ("+86 010 6552 9988", "+861065529988"),   # the trunk 0 after +86 is forgiven by normalise
    ("  +86\u00a0138\u30000013 8000 ", "+8613800138000"),
    ("＋８６１３８００１３８０００", "+8613800138000"),  # full-width input from a Chinese IME
    ("110", "+86110"),
    ("10086", "+8610086"),
    ("95588", "+8695588"),
    ("400 810 8888", "+864008108888"),
    ("+1 650 253 0000", "+16502530000"),
    ("0049 30 1234567", "+49301234567"),
])
def test_normalise_cn_forms(dial: str, expected: str) -> None:
    assert normalise(dial) == expected


@pytest.mark.parametrize(("dial", "region", "expected"), [
    ("030 1234567", "DE", "+49301234567"),
    ("(650) 253-0000", "US", "+16502530000"),
    ("020 7946 0958", "GB", "+442079460958"),
    ("+8613800138000", "US", "+8613800138000"),
    ("0086 13800138000", "US", "+8613800138000"),
])
def test_normalise_user_region(dial: str, region: str, expected: str) -> None:
    assert normalise(dial, region) == expected


@pytest.mark.parametrize(("dial", "kind"), [
    ("", "incomplete"),
    ("   ", "incomplete"),
    ("abc", "invalid"),
    ("1380013800O", "invalid"),              # letter O for zero
    ("+86 138 0013 800a", "invalid"),
    ("+86 1380", "incomplete"),
    ("1380013", "incomplete"),
    ("138001380001234", "invalid"),
    ("+8613800138000123", "invalid"),
    ("+8", "invalid"),                        # no such country code
    ("+", "incomplete"),
    ("+99912345", "invalid"),
    ("+86", "incomplete"),
    ("0", "incomplete"),
    ("6552 9988", "incomplete"),             # local number without its area code
    ("+86 1 2345 6789 0123 4567", "invalid"),  # > 15 digits
    ("12", "incomplete"),
    ("+1 650", "incomplete"),
])
def test_normalise_rejects(dial: str, kind: str) -> None:
    with pytest.raises(NumberError) as ei:
        normalise(dial)
    assert ei.value.kind == kind
    assert ei.value.message


def test_normalise_rejects_foreign_too_short() -> None:
    with pytest.raises(NumberError) as ei:
        normalise("12", "DE")
    assert ei.value.kind == "incomplete"


# --------------------------------------------------------------------------------------------
# classify: mobile operators from OUR MIIT table


@pytest.mark.parametrize(("prefix", "operator"), [
    ("133", "China Telecom"), ("149", "China Telecom"), ("153", "China Telecom"), ("173", "China Telecom"),
    ("177", "China Telecom"), ("180", "China Telecom"), ("181", "China Telecom"), ("189", "China Telecom"),
    ("190", "China Telecom"), ("191", "China Telecom"), ("193", "China Telecom"), ("199", "China Telecom"),
    ("162", "China Telecom"),
    ("1340", "China Mobile"), ("1348", "China Mobile"), ("135", "China Mobile"), ("138", "China Mobile"),
    ("139", "China Mobile"), ("147", "China Mobile"), ("148", "China Mobile"), ("150", "China Mobile"),
    ("152", "China Mobile"), ("157", "China Mobile"), ("159", "China Mobile"), ("165", "China Mobile"),
    ("172", "China Mobile"), ("178", "China Mobile"), ("182", "China Mobile"), ("184", "China Mobile"),
    ("187", "China Mobile"), ("188", "China Mobile"), ("195", "China Mobile"), ("197", "China Mobile"),
    ("198", "China Mobile"),
    ("130", "China Unicom"), ("131", "China Unicom"), ("132", "China Unicom"), ("145", "China Unicom"),
    ("146", "China Unicom"), ("155", "China Unicom"), ("156", "China Unicom"), ("166", "China Unicom"),
    ("167", "China Unicom"), ("171", "China Unicom"), ("175", "China Unicom"), ("176", "China Unicom"),
    ("185", "China Unicom"), ("186", "China Unicom"), ("196", "China Unicom"),
    ("192", "China Broadnet"),
    # 4-digit split of 170
    ("1700", "China Telecom"), ("1701", "China Telecom"), ("1702", "China Telecom"),
    ("1703", "China Mobile"), ("1705", "China Mobile"), ("1706", "China Mobile"),
    ("1704", "China Unicom"), ("1707", "China Unicom"), ("1708", "China Unicom"), ("1709", "China Unicom"),
])
def test_mobile_operator(prefix: str, operator: str) -> None:
    e164 = "+86" + (prefix + "12345678")[:11]
    info = classify(e164)
    assert info.kind == "mobile", info
    assert info.operator == operator
    assert info.region == "CN"
    assert info.valid and info.routable


@pytest.mark.parametrize(("prefix", "operator"), [
    ("13492", "China Telecom"), ("13493", "China Telecom"), ("13499", "China Telecom"),
    ("17400", "China Telecom"), ("17405", "China Telecom"),
    ("1619", "China SatNet"),
    ("17406", "Other MIIT units"), ("17409", "Other MIIT units"), ("17410", "Other MIIT units"),
    ("17412", "Other MIIT units"), ("1749", "Other MIIT units"),
])
def test_satellite_ranges(prefix: str, operator: str) -> None:
    info = classify("+86" + (prefix + "1234567")[:11])
    assert (info.kind, info.operator) == ("satellite", operator)


@pytest.mark.parametrize("national", [
    "10000000001",    # +86 1000000000x: mobile-shaped, never allocated
    "13490123456",    # 1349 only 2, 3, 9
    "13494123456",
    "17413123456",    # 1741 only 0-2
    "17451234567",    # 174 outside 1740x/1741x/1749
    "14012345678",    # 140-144 are 13-digit IoT ranges, not 11-digit mobiles
    "16012345678",
    "16112345678",
    "16312345678",
    "19412345678",
    "12012345678",
    "11012345678",
])
def test_unallocated_mobile_prefixes(national: str) -> None:
    info = classify("+86" + national)
    assert info.kind == "unallocated", info
    assert info.operator is None
    assert not info.valid and not info.routable
    assert info.reason


def test_mvno_flag_and_formatting() -> None:
    info = classify("+8617001234567")
    assert info.mvno and info.prefix == "1700"
    assert not classify("+8613800138000").mvno
    mob = classify("+8613800138000")
    assert (mob.national, mob.international) == ("138 0013 8000", "+86 138 0013 8000")
    assert mob.operator_zh == "中国移动"
    assert mob.national_number == "13800138000"


@pytest.mark.parametrize(("e164", "kind"), [
    ("+861380013800", "incomplete"),          # 10-digit mobile
    ("+86138001380001", "invalid"),           # 12-digit mobile
    ("+861380", "incomplete"),
    ("+86", "incomplete"),
    ("+8613800138000123", "invalid"),         # > 15 digits
    ("+86013800138000", "invalid"),           # trunk 0 inside E.164: a trunk would 484 it
    ("+8601065529988", "invalid"),
    ("8613800138000", "invalid"),             # no +
    ("+86 138 0013 8000", "invalid"),         # classify wants E.164, not a dial string
    ("", "invalid"),
    ("+99912345", "invalid"),
])
def test_malformed(e164: str, kind: str) -> None:
    info = classify(e164)
    assert info.kind == kind, info
    assert not info.valid and info.reason


# --------------------------------------------------------------------------------------------
# classify: fixed lines and the area-code length table


@pytest.mark.parametrize(("e164", "area", "city"), [
    ("+861065529988", "10", "Beijing"),
    ("+862065529988", "20", "Guangzhou"),
    ("+862165529988", "21", "Shanghai"),
    ("+862965529988", "29", "XiAn"),
    ("+8631165529988", "311", "Shijiazhuang"),
    ("+8637165529988", "371", "Zhengzhou"),
    ("+8643165529988", "431", "Changchun"),
    ("+8657165529988", "571", "Hangzhou"),
    ("+8675565529988", "755", "Shenzhen"),
    ("+8689865529988", "898", "Haikou"),
    ("+868916552998", "891", "Lhasa"),
    ("+869996552998", "999", "Yining"),
    ("+869356552998", "935", ""),
    ("+869026552998", "902", "Hami"),
])
def test_fixed_line(e164: str, area: str, city: str) -> None:
    info = classify(e164)
    assert info.kind == "fixed", info
    assert info.area_code == area
    assert city in (info.city or "")
    assert info.city_zh
    assert info.operator is None


def test_beijing_formatting() -> None:
    info = classify("+861065529988")
    assert info.national == "010 6552 9988"
    assert info.international == "+86 10 6552 9988"
    assert info.city_zh == "北京市"


@pytest.mark.parametrize(("area", "good", "bad", "bad_kind"), [
    ("571", 8, 7, "incomplete"),
    ("311", 8, 7, "incomplete"),
    ("755", 8, 7, "incomplete"),
    ("891", 7, 8, "invalid"),
    ("999", 7, 8, "invalid"),
    ("935", 7, 8, "invalid"),
    ("902", 7, 8, "invalid"),
    ("10", 8, 7, "incomplete"),
    ("21", 8, 9, "invalid"),
])
def test_area_code_local_lengths(area: str, good: int, bad: int, bad_kind: str) -> None:
    assert classify("+86" + area + "65529988123"[:good]).kind == "fixed"
    info = classify("+86" + area + "65529988123"[:bad])
    assert info.kind == bad_kind, info
    assert info.area_code == area
    assert not info.valid


def test_area_code_table_shape() -> None:
    assert "26" not in AREA_CODES
    two = {k for k in AREA_CODES if len(k) == 2}
    assert two == {"10", "20", "21", "22", "23", "24", "25", "27", "28", "29"}
    assert all(v[0] == (8,) for k, v in AREA_CODES.items() if len(k) == 2)
    for code in ("311", "371", "431", "571", "755", "898"):
        assert AREA_CODES[code][0] == (8,), code
    for code in ("891", "999", "935", "902"):
        assert AREA_CODES[code][0] == (7,), code
    assert all(len(k) in (2, 3) and set(v[0]) <= {7, 8} and v[1] for k, v in AREA_CODES.items())


def test_area_26_reserved() -> None:
    info = classify("+862665529988")
    assert info.kind == "invalid"
    assert "26" in info.reason


def test_unknown_area_code_is_unallocated() -> None:
    assert "301" not in AREA_CODES
    assert classify("+8630165529988").kind == "unallocated"


# --------------------------------------------------------------------------------------------
# special numbers


@pytest.mark.parametrize("e164", ["+86110", "+86119", "+86120", "+86122", "+86999", "+8612395"])
def test_emergency_kind(e164: str) -> None:
    info = classify(e164)
    assert info.kind == "emergency"
    assert not info.internationally_diallable and not info.routable


@pytest.mark.parametrize("e164", ["+8610086", "+8610000", "+8610010", "+86114", "+8612315"])
def test_short_kind(e164: str) -> None:
    info = classify(e164)
    assert info.kind == "short"
    assert not info.internationally_diallable


@pytest.mark.parametrize(("e164", "kind"), [
    ("+868008108888", "toll_free"),
    ("+86108001234567", "toll_free"),
    ("+864008108888", "shared_cost"),
    ("+8695588", "shared_cost"),
    ("+8696110", "shared_cost"),
    ("+8695012345678", "shared_cost"),
])
def test_not_internationally_diallable(e164: str, kind: str) -> None:
    info = classify(e164)
    assert info.kind == kind
    assert info.internationally_diallable is False
    assert not info.routable


def test_foreign() -> None:
    info = classify("+12025550123")
    assert info.kind == "foreign"
    assert info.region == "US"
    assert info.international == "+1 202-555-0123"
    assert classify("+4930123456").region == "DE"


def test_every_kind_is_declared() -> None:
    samples = ["+8613800138000", "+861065529988", "+86110", "+8610086", "+868008108888", "+864008108888",
               "+8616191234567", "+8610000000001", "+862612345678", "+861380", "+12025550123"]
    kinds = {classify(s).kind for s in samples}
    assert kinds == numbering.KINDS


# --------------------------------------------------------------------------------------------
# emergency detection relative to CN and the user's region


@pytest.mark.parametrize(("dial", "region", "expected"), [
    ("110", "CN", True),
    ("110", "DE", True),
    ("110", "US", False),
    ("122", "CN", True),                      # traffic police: missing in phonenumbers, ours
    ("119", "CN", True),
    ("120", "CN", True),
    ("112", "DE", True),
    ("112", "CN", False),
    ("911", "US", True),
    ("911", "DE", False),
    ("999", "GB", True),
    ("10086", "CN", False),
    ("+86110", "CN", False),                  # is_emergency_in takes a bare dial string
])
def test_is_emergency_in(dial: str, region: str, expected: bool) -> None:
    assert is_emergency_in(dial, region) is expected


@pytest.mark.parametrize(("dial", "region", "regions"), [
    ("110", "CN", ("CN",)),
    ("110", "DE", ("CN", "DE")),
    ("110", "US", ("CN",)),                   # still Chinese police for a user in the US
    ("911", "US", ("US",)),
    ("911", "DE", ()),
    ("1 1 0", "DE", ("CN", "DE")),
    ("+86 110", "US", ("CN",)),
    ("0086 122", "GB", ("CN",)),
    ("+49 110", "US", ("DE",)),
    ("+1 911", "CN", ("US",)),
    ("+86 13800138000", "CN", ()),
    ("13800138000", "US", ()),
    ("abc", "CN", ()),
    ("", "CN", ()),
])
def test_emergency_regions(dial: str, region: str, regions: tuple[str, ...]) -> None:
    assert emergency_regions(dial, region) == regions
    assert is_emergency(dial, region) is bool(regions)
