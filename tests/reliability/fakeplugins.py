"""Fake installed distributions for end-to-end plugin tests, one site folder per distribution.

A distribution is what ``pip install`` leaves: a ``<name>-<version>.dist-info`` folder with
``METADATA`` and ``entry_points.txt`` (group ``zoo.plugins``) beside its module, found by
``importlib.metadata`` exactly as a real one (the same layout as ``tests/test_plugins.py``'s
``Site``). Each distribution gets its own folder, so the order of ``PYTHONPATH`` decides the
order in which they are discovered, and a test can permute it.

:data:`BROKEN` is the set the suite installs: one good plugin, one that prints, and one of each
way to be broken, with the problem each must be reported with. :func:`many_backbones` makes a
plugin registering any number of backbones (the scale tests and ``benchmarks/listing_scale.py``).
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FakeDist:
    """One distribution: its name and version, entry points, modules and expected problem."""

    name: str
    version: str
    plugins: dict[str, str]  # entry-point name -> module[:attr]
    modules: dict[str, str]  # module name -> source
    problem: str | None = None  # text the plugin's reported error must contain
    plugin: str = ""  # the plugin name the problem is reported under

    def install(self, site: Path) -> Path:
        """Write the distribution into its own folder under ``site``; return that folder."""
        folder = site / self.name
        info = folder / f"{self.name.replace('-', '_')}-{self.version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {self.name}\nVersion: {self.version}\n",
            encoding="utf-8",
        )
        lines = "".join(f"{name} = {value}\n" for name, value in self.plugins.items())
        (info / "entry_points.txt").write_text(f"[zoo.plugins]\n{lines}", encoding="utf-8")
        for module, source in self.modules.items():
            (folder / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        return folder

    @property
    def origin(self) -> str:
        """How zoo names the plugin in messages: ``plugin (distribution version)``."""
        return f"{self.plugin} ({self.name} {self.version})"


TINY_BACKBONE = """
    import zoo
    from torch import nn

    def build(num_classes=None, pretrained=False):
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes or 3))
"""

GOOD = FakeDist(
    "rel-good",
    "1.0",
    {"goodplug": "relfake_good"},
    {
        "relfake_good": TINY_BACKBONE
        + """
    @zoo.hookimpl
    def zoo_register_backbones(register):
        register(zoo.BackboneSpec(name="goodnet", create=build, head="5",
                                  summary="a good plugin's backbone"))

    @zoo.hookimpl
    def zoo_register_policies(register):
        register(zoo.PolicySpec(name="head-only", plan=lambda table: table.names[-2:],
                                summary="train the last two tensors"))
"""
    },
)

BAD_POLICIES = FakeDist(
    "rel-badpolicy",
    "3.1",
    {"badpol": "relfake_badpolicy"},
    {
        "relfake_badpolicy": """
    import zoo

    @zoo.hookimpl
    def zoo_register_policies(register):
        register(zoo.PolicySpec(name="unknown-names", plan=lambda table: ["no.such.param"]))
        register(zoo.PolicySpec(name="garbage", plan=lambda table: 42))
        register(zoo.PolicySpec(name="exploding", plan=lambda table: 1 / 0))
"""
    },
    plugin="badpol",
)

BROKEN = [
    GOOD,
    BAD_POLICIES,
    FakeDist(
        "rel-importfail",
        "2.0",
        {"needslib": "relfake_importerror"},
        {"relfake_importerror": "import zoo\nraise ImportError('needs libfoo')\n"},
        "failed to import 'relfake_importerror': ImportError: needs libfoo",
        "needslib",
    ),
    FakeDist(
        "rel-syntax",
        "1.0",
        {"typo": "relfake_syntax"},
        {"relfake_syntax": "import zoo\n\ndef zoo_register_backbones(register)\n    pass\n"},
        "SyntaxError",
        "typo",
    ),
    FakeDist(
        "rel-misspelled",
        "1.0",
        {"speller": "relfake_speller"},
        {
            "relfake_speller": """
        import zoo

        @zoo.hookimpl
        def zoo_register_backbone(register):
            raise AssertionError("never called")
    """
        },
        "unknown hook 'zoo_register_backbone' (did you mean 'zoo_register_backbones'?)",
        "speller",
    ),
    FakeDist(
        "rel-badsig",
        "1.0",
        {"signature": "relfake_signature"},
        {
            "relfake_signature": """
        import zoo

        @zoo.hookimpl
        def zoo_register_policies(registry):
            raise AssertionError("never called")
    """
        },
        "invalid plugin",
        "signature",
    ),
    FakeDist(
        "rel-raising",
        "1.0",
        {"raiser": "relfake_raiser"},
        {
            "relfake_raiser": """
        import zoo

        @zoo.hookimpl
        def zoo_register_backbones(register):
            raise RuntimeError("backbone registry exploded")
    """
        },
        "zoo_register_backbones raised RuntimeError: backbone registry exploded",
        "raiser",
    ),
    FakeDist(
        "rel-exit-import",
        "1.0",
        {"quitter": "relfake_exit_import"},
        {"relfake_exit_import": "import sys\nsys.exit(0)\n"},
        "failed to import 'relfake_exit_import': SystemExit: 0",
        "quitter",
    ),
    FakeDist(
        "rel-exit-hook",
        "1.0",
        {"exiter": "relfake_exit_hook"},
        {
            "relfake_exit_hook": TINY_BACKBONE
            + """
    import sys

    @zoo.hookimpl
    def zoo_register_backbones(register):
        register(zoo.BackboneSpec(name="halfnet", create=build, summary="registered, then exit"))
        sys.exit(0)

    @zoo.hookimpl
    def zoo_register_policies(register):
        raise SystemExit("policies: goodbye")
"""
        },
        "zoo_register_backbones raised SystemExit: 0",
        "exiter",
    ),
    FakeDist(
        "rel-printer",
        "1.0",
        {"chatty": "relfake_printer"},
        {
            "relfake_printer": TINY_BACKBONE
            + """
    print("chatty plugin: imported")

    @zoo.hookimpl
    def zoo_register_backbones(register):
        print("chatty plugin: registering", {"not": "json"})
        register(zoo.BackboneSpec(name="chattynet", create=build, summary="prints a lot"))
"""
        },
    ),
    FakeDist(
        "rel-twin-alpha",
        "1.0",
        {"twin": "relfake_twin_a"},
        {
            "relfake_twin_a": TINY_BACKBONE
            + """
    @zoo.hookimpl
    def zoo_register_backbones(register):
        register(zoo.BackboneSpec(name="twinnet", create=build, summary="from alpha"))
"""
        },
    ),
    FakeDist(
        "rel-twin-beta",
        "1.0",
        {"twin": "relfake_twin_b"},
        {
            "relfake_twin_b": TINY_BACKBONE
            + """
    @zoo.hookimpl
    def zoo_register_backbones(register):
        register(zoo.BackboneSpec(name="twinnet", create=build, summary="from beta"))
"""
        },
        "plugin name 'twin' is already taken by rel-twin-alpha",
        "twin",
    ),
]

#: The broken ones: what ``zoo plugins`` must report, and under which name and distribution.
PROBLEMS = [dist for dist in BROKEN if dist.problem]


def install_all(site: Path) -> list[Path]:
    """Install :data:`BROKEN` under ``site``; the folders to put on ``PYTHONPATH``."""
    return [dist.install(site) for dist in BROKEN]


def environment(folders: list[Path], cache: Path) -> dict[str, str]:
    """The environment of a ``zoo`` subprocess that sees ``folders`` in this order."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ZOO_DISABLE_PLUGIN_AUTOLOAD", "ZOO_STRICT_PLUGINS", "ZOO_DEBUG")
    }
    paths = [str(f) for f in folders]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        ZOO_CACHE_DIR=str(cache),
        COLUMNS="400",
        HF_HUB_OFFLINE="1",
    )
    return env


def many_backbones(count: int, *, version: str = "1.0") -> FakeDist:
    """A distribution whose plugin ``many`` registers ``count`` trivial backbones
    (``many:net000000`` …), every tenth with two pretrained tags."""
    source = f"""
    import zoo

    def build(num_classes=None, pretrained=False):
        from torch import nn
        return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, num_classes or 2))

    @zoo.hookimpl
    def zoo_register_backbones(register):
        for i in range({count}):
            tags = ("a1_in1k", "b2_in22k") if i % 10 == 0 else ()
            register(zoo.BackboneSpec(name=f"net{{i:06d}}", create=build, head="1",
                                      pretrained_tags=tags, summary=f"fake backbone {{i}}"))
    """
    return FakeDist(
        "rel-many", version, {"many": "relfake_many"}, {"relfake_many": source}, plugin="many"
    )
