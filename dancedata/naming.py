"""AIST Dance Video Database file names -> metadata fields.

    gBR_sBM_c01_d04_mBR0_ch01            solo (sBM basic, sFM advanced, sMM moving camera)
    gLO_sGR_c01_d13_d14_d15_mLO0_ch01    group
    sSH_c01_v0 / sCY_c01_v3 / sBT_..._v5 showcase, cypher, battle: no genre, so not labelled

The sequence id replaces the camera with `cAll` (the AIST++ convention): every camera view of one
performance shares it.
"""
from __future__ import annotations

import re

GENRES = {
    "BR": "Break",
    "PO": "Pop",
    "LO": "Lock",
    "MH": "Middle Hip-hop",
    "LH": "LA Hip-hop",
    "HO": "House",
    "WA": "Waack",
    "KR": "Krump",
    "JS": "Street Jazz",
    "JB": "Ballet Jazz",
}
SITUATIONS = {"BM": "basic", "FM": "advanced", "MM": "moving camera", "GR": "group"}

_LABELLED = re.compile(
    r"^g(?P<genre>[A-Z]{2})_s(?P<situation>[A-Z]{2})_c(?P<camera>\d{2})"
    r"_(?P<dancer>d\d{2}(?:_d\d{2})*)_m(?P<music_genre>[A-Z]{2})(?P<music_id>\d)_ch(?P<choreography>\d{2})$"
)
_UNLABELLED = re.compile(r"^s(?P<situation>SH|CY|BT)_c\d{2}(?:_.*)?_v\d+$")
_UNLABELLED_KINDS = {"SH": "showcase", "CY": "cypher", "BT": "battle"}


def parse_aist_name(stem: str) -> dict[str, str]:
    """Returns the metadata fields of an AIST video name (without extension).

    Raises ValueError with the reason the name cannot be labelled; callers record it and skip.
    """
    match = _LABELLED.match(stem)
    if match is None:
        unlabelled = _UNLABELLED.match(stem)
        if unlabelled:
            kind = _UNLABELLED_KINDS[unlabelled["situation"]]
            raise ValueError(f"{kind} video: AIST names carry no genre for s{unlabelled['situation']}")
        raise ValueError("name does not follow the AIST Dance DB naming rules")
    fields = match.groupdict()
    if fields["genre"] not in GENRES:
        raise ValueError(f"unknown genre code g{fields['genre']}")
    if fields["situation"] not in SITUATIONS:
        raise ValueError(f"unknown situation code s{fields['situation']}")
    if not 1 <= int(fields["camera"]) <= 10:
        raise ValueError(f"camera c{fields['camera']} is outside c01-c10")
    if fields["music_genre"] not in GENRES or int(fields["music_id"]) > 5:
        raise ValueError(f"unknown music m{fields['music_genre']}{fields['music_id']}")
    return {
        "video_id": stem,
        "genre": fields["genre"],
        "situation": "s" + fields["situation"],
        "camera": "c" + fields["camera"],
        "dancer": fields["dancer"],
        "music": f"m{fields['music_genre']}{fields['music_id']}",
        "choreography": "ch" + fields["choreography"],
        "sequence_id": sequence_id(stem),
    }


def sequence_id(stem: str) -> str:
    """The name with its camera replaced by cAll: shared by every view of one performance."""
    return re.sub(r"_c\d{2}_", "_cAll_", stem, count=1)


def genre_name(code: str) -> str:
    """Full genre name for an AIST code; other datasets' labels are returned unchanged."""
    return GENRES.get(code, code)


def shown(name: str) -> str:
    """A class name as printed: as it is when every character shows, else quoted like repr ('Hip Hop '
    with its trailing space, 'Hip  Hop' with two), so two names that print alike never look like one."""
    return name if name and name == " ".join(name.split()) and name.isprintable() else repr(name)


def label(code: str) -> str:
    """How output names a class: "Break (BR)" for an AIST genre code; any other name once (`shown`),
    since it has no long name to add."""
    return f"{GENRES[code]} ({code})" if code in GENRES else shown(code)


def spelling_key(name: str) -> str:
    """What stays of a class name when case, spaces, hyphens and underscores are ignored: names that
    share it (Hip Hop, hip hop, HipHop, Hip-Hop, 'Hip Hop ') are almost always one class."""
    return "".join(re.split(r"[\s_-]+", name)).casefold()
