"""docs/architecture.md stays true: every module and file it names exists, and every package is described."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()
SRC = ROOT / "src" / "animegen"


def test_every_dotted_name_exists():
    """`animegen.x.y` names a module, or an attribute of the longest module prefix (a function, a class)."""
    import importlib

    missing = []
    for name in sorted(set(re.findall(r"`(animegen(?:\.\w+)+)", DOC))):
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            base = SRC.joinpath(*parts[1:n])
            if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
                break
        obj = importlib.import_module(".".join(parts[:n]))
        for attr in parts[n:]:
            obj = getattr(obj, attr, None)
        if obj is None:
            missing.append(name)
    assert not missing, f"docs/architecture.md names modules or objects that do not exist: {missing}"


def test_every_file_of_the_layout_exists():
    layout = DOC.split("## Layout", 1)[1].split("```", 2)[1]
    missing = []
    base = SRC
    for line in layout.splitlines():
        top = re.match(r"(\w+)/\s", line)  # containers/, tests/, ... at the repository root
        sub = re.match(r"  (\w+)/\s", line)  # a package of src/animegen
        if top:
            base = ROOT / top.group(1)
        elif sub:
            base = SRC / sub.group(1)
        elif re.match(r"  \w+\.py\s", line):
            base = SRC
        for f in re.findall(r"(?<![/<>\w])([a-z_0-9]+\.py)\b", line):
            if not (base / f).is_file() and not (SRC / f).is_file():
                missing.append(str((base / f).relative_to(ROOT)))
    assert not missing, f"docs/architecture.md's layout names files that do not exist: {missing}"


def test_every_package_and_top_level_module_is_described():
    layout = DOC.split("## Layout", 1)[1].split("```", 2)[1]
    packages = [p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()]
    modules = [p.name for p in SRC.glob("*.py") if p.name != "__init__.py"]
    undescribed = [f"{p}/" for p in packages if f"  {p}/" not in layout]
    undescribed += [m for m in modules if f"  {m}" not in layout]
    assert not undescribed, f"add these to docs/architecture.md's layout: {undescribed}"


def test_every_stage_function_named_in_the_table_exists():
    import importlib

    for func, module in re.findall(r"`(run_\w+)\(.*?`.*?`(animegen[\w.]*)`", DOC):
        assert hasattr(importlib.import_module(module), func), f"{module}.{func}"
