"""The spec and the code agree: the syntax tables of spec/5-syntax.md are the
declarations of tokenbits.syntax, and every clause the code cites exists."""
import re
from pathlib import Path

import pytest

from tokenbits import errors, syntax

SPEC = Path(__file__).resolve().parent.parent / "spec"
REFERENCE = Path(__file__).resolve().parent.parent / "reference"
KERNELS = REFERENCE.parent / "kernels"
CONFORMANCE = REFERENCE.parent / "conformance"


def spec_text() -> str:
    return "\n".join(p.read_text() for p in sorted(SPEC.glob("*.md")))


def test_syntax_tables_match_declarations():
    text = (SPEC / "5-syntax.md").read_text()
    blocks = dict(re.findall(r"<!-- syntax:(\w+) -->\n(.*?)\n<!-- /syntax -->", text, re.S))
    assert sorted(blocks) == sorted(syntax.SYNTAX), "a structure is missing or extra in the spec"
    for name, table in blocks.items():
        assert table.strip() == syntax.markdown_table(name), \
            f"spec table {name} differs from syntax.py: run `make syntax` and paste"


def headings() -> set:
    found = set()
    for line in spec_text().splitlines():
        m = re.match(r"#+\s+(?:Annex\s+)?([0-9A-B]+(?:\.[0-9]+)*)\b", line)
        if m:
            found.add(m.group(1))
    return found


def test_every_cited_clause_exists():
    cited = set()
    for path in [*REFERENCE.glob("*.py"), *KERNELS.glob("*.py"), *CONFORMANCE.glob("*.py")]:
        text = path.read_text()
        cited |= set(re.findall(r'clause="([0-9A-B.]+)"', text))
        for group in re.findall(r"\(spec clauses? ([0-9., and]+)", text):
            cited |= set(re.findall(r"[0-9]+(?:\.[0-9]+)*", group))
        if path.parent in (KERNELS, CONFORMANCE):   # they cite "(clause 7.3.2)", "clauses 7.4 - 7.6"
            for group in re.findall(r"[Cc]lauses? ([0-9][0-9., and-]*[0-9])", text):
                cited |= set(re.findall(r"[0-9]+(?:\.[0-9]+)+", group))
    for cls in errors.ERROR_CLASSES:
        cited.add(cls.error_clause)
    missing = sorted(c for c in cited if c not in headings())
    assert not missing, f"clauses cited in code but absent from spec/: {missing}"


@pytest.mark.parametrize("cls", errors.ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_is_specified(cls):
    assert cls.__name__ in spec_text()


def test_step_constants_in_spec():
    from tokenbits.reconstruction import STEP_MANTISSA_BITS
    text = spec_text().lower()
    for bits in STEP_MANTISSA_BITS:
        assert f"0x{bits:08x}" in text
