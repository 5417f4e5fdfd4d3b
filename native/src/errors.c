/* Error reporting (spec clause 9.0): the class of clauses 9.1 - 9.9, the clause whose
 * rule was violated, the syntax element and the byte offset in the stream. */
#include <stdarg.h>
#include <stdio.h>
#include "internal.h"

static const char *const NAMES[] = {
    "TKBOk", "TKBFormatError", "TKBTruncatedError", "TKBCRCError", "TKBUnsupportedError",
    "TKBLevelError", "TKBReferenceError", "TKBTableError", "TKBEntropyError", "TKBValueError",
};

const char *tkb_class_name(tkb_class cls)
{
    if ((unsigned)cls < sizeof NAMES / sizeof NAMES[0])
        return NAMES[cls];
    if (cls == TKB_NOMEM)
        return "TKBOutOfMemory";
    return "TKBUsage";
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    if (src)
        for (; src[i] && i + 1 < cap; i++)
            dst[i] = src[i];
    dst[i] = 0;
}

int tkb_fail(tkb_error *err, tkb_class cls, const char *clause, const char *element,
             int64_t offset, const char *fmt, ...)
{
    if (err) {
        err->cls = cls;
        copy_str(err->clause, sizeof err->clause, clause);
        copy_str(err->element, sizeof err->element, element);
        err->offset = offset;
        err->fatal = 0;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return (int)cls;
}
