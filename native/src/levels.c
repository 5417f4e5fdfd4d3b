/* Profiles and levels (spec clause 8): Table 8.1-1 and Table 8.2-1. */
#include "internal.h"

static const tkb_level LEVELS[] = {
    /* idc, tracks, tokens, channels, values, vocab, tables, alphabet, lanes, chunk,
     * lane_steps, unit_size */
    {10, 4, 4096, 4096, 1u << 20, 1u << 20, 16, 4096, 256, 1u << 17, 4096, 1u << 23},
    {20, 16, 65536, 16384, 1u << 24, 1u << 24, 64, 4096, 1024, 1u << 20, 8192, 1u << 27},
    {30, 255, 1u << 20, 65536, 1u << 28, 1u << 31, 255, 4096, 4096, 1u << 22, 65536, 1u << 31},
};

const tkb_level *tkb_get_level(int level_idc)
{
    for (size_t i = 0; i < sizeof LEVELS / sizeof LEVELS[0]; i++)
        if (LEVELS[i].level_idc == level_idc)
            return &LEVELS[i];
    return NULL;
}

int tkb_profile_known(int profile_idc)
{
    return profile_idc == TKB_PROFILE_LOSSLESS || profile_idc == TKB_PROFILE_MAIN ||
           profile_idc == TKB_PROFILE_HIGH;
}

int tkb_check_limit(uint64_t value, uint64_t limit, const char *el, int64_t offset,
                    const tkb_level *lv, tkb_error *err)
{
    if (value > limit)
        return tkb_fail(err, TKB_LEVEL_ERROR, "8.2", el, offset,
                        "%s %llu exceeds %llu of level %d", el, (unsigned long long)value,
                        (unsigned long long)limit, lv->level_idc);
    return 0;
}
