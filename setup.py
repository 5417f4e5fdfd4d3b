"""Build hook: compile libtkb (native/) with the machine's C compiler when there is one.

Everything else is declared in pyproject.toml.  ``build_native`` runs as part of
``build`` (``pip install .``: into the wheel's ``tokenbits/native/``) and of editable
installs (``pip install -e .``: in place, into ``native/python/``).  Without a compiler,
or when the compile fails, the package still installs; ``tkb backends`` then says that
the native backend is missing and why.
"""
import importlib.util
import sys
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build import build

ROOT = Path(__file__).resolve().parent


class build_native(Command):
    description = "compile libtkb.so and tkbdec (native/) with the C compiler, if any"
    user_options = []

    def initialize_options(self):
        self.editable_mode = False
        self.build_lib = None
        self._outputs = []

    def finalize_options(self):
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def run(self):
        spec = importlib.util.spec_from_file_location("_tkb_native_build", ROOT / "native" / "build.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        out = (ROOT / "native" / "python" if self.editable_mode
               else Path(self.build_lib) / "tokenbits" / "native")
        try:
            self._outputs = [str(p) for p in mod.build(out)]
        except (RuntimeError, FileNotFoundError, OSError) as e:
            print(f"tokenbits: the native backend is not built ({e}); the reference and GPU "
                  "backends are unaffected", file=sys.stderr)
            self._outputs = []

    def get_outputs(self):
        return [] if self.editable_mode else self._outputs

    def get_output_mapping(self):
        return {}


class build_with_native(build):
    sub_commands = build.sub_commands + [("build_native", None)]


setup(cmdclass={"build": build_with_native, "build_native": build_native})
