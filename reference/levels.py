"""Profiles and levels (spec clause 8).

A profile names the coding tools a decoder must support; a level bounds the
sizes it must handle, so that every allocation is known and checked before it
is made (clause 7.1).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import TKBEncodeError, TKBLevelError, TKBUnsupportedError

PROFILE_LOSSLESS = 1
PROFILE_MAIN = 2
PROFILE_HIGH = 3     # version 1.1: Main plus channel transforms (coding_mode 2)
PROFILES = {PROFILE_LOSSLESS: "Lossless", PROFILE_MAIN: "Main", PROFILE_HIGH: "High"}


@dataclass(frozen=True)
class Level:
    level_idc: int
    max_tracks: int
    max_tokens: int          # num_tokens of a frame (and max_tokens of a parameter set)
    max_channels: int        # num_channels
    max_values: int          # num_tokens * num_channels of a frame
    max_vocab: int           # vocab_size of an ids track
    max_tables: int          # num_tables
    max_alphabet: int        # alphabet_size
    max_lanes: int           # num_lanes
    max_chunk: int           # chunk_size = num_lanes * lane_steps
    max_lane_steps: int      # lane_steps: the sequential depth of a chunk's decoding
    max_unit_size: int       # unit_size in bytes


LEVELS = {
    10: Level(10, 4, 4096, 4096, 1 << 20, 1 << 20, 16, 4096, 256, 1 << 17, 4096, 1 << 23),
    20: Level(20, 16, 65536, 16384, 1 << 24, 1 << 24, 64, 4096, 1024, 1 << 20, 8192, 1 << 27),
    30: Level(30, 255, 1 << 20, 65536, 1 << 28, 1 << 31, 255, 4096, 4096, 1 << 22, 65536,
              1 << 31),
}


def get_level(level_idc: int) -> Level:
    try:
        return LEVELS[level_idc]
    except KeyError:
        raise TKBUnsupportedError(f"level_idc {level_idc} is not a level of version 1",
                                  clause="8.2", element="level_idc") from None


def check_profile(profile_idc: int) -> None:
    if profile_idc not in PROFILES:
        raise TKBUnsupportedError(f"profile_idc {profile_idc} is not a profile of version 1.1",
                                  clause="8.1", element="profile_idc")


def check_limit(value: int, limit: int, element: str, level: Level) -> None:
    """Raise TKBLevelError when ``value`` exceeds ``limit`` of ``level`` (clause 8.2)."""
    if value > limit:
        raise TKBLevelError(f"{element} = {value} exceeds {limit} allowed at level "
                            f"{level.level_idc}", clause="8.2", element=element)


def smallest_level(*, tokens: int, channels: int, values: int, vocab: int, tables: int,
                   lanes: int, chunk: int, lane_steps: int, unit_size: int,
                   tracks: int) -> int:
    """Encoder helper: the lowest level_idc whose limits admit the given sizes."""
    for idc, lv in sorted(LEVELS.items()):
        if (tokens <= lv.max_tokens and channels <= lv.max_channels and values <= lv.max_values
                and vocab <= lv.max_vocab and tables <= lv.max_tables and lanes <= lv.max_lanes
                and chunk <= lv.max_chunk and lane_steps <= lv.max_lane_steps
                and unit_size <= lv.max_unit_size
                and tracks <= lv.max_tracks):
            return idc
    raise TKBEncodeError("the input exceeds the limits of every level (clause 8.2)")
