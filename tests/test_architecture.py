"""The layout ARCHITECTURE.md promises: layers that only import downwards, no import circle, no module
that grows past ~450 lines, a light ``import craftlab``, and a core that never imports the app."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "craftlab"
MAX_LINES = 450

# module (dotted, without the "craftlab." prefix) or package prefix -> layer; a module imports its own
# layer or lower ones only. Keep in sync with ARCHITECTURE.md.
LAYERS = [
    (0, ("_errors", "_lazy", "cache", "registry", "settings")),
    (1, ("models", "threads", "checkpoint", "data", "evaluation")),
    (2, ("train.sam", "train.sam_modes", "compression", "probes", "analysis.stats", "analysis.rank", "analysis.power",
         "transforms", "measure",
         # the paper packages, per module: their algorithms here, their recipes in layer 3
         "adapt.taps", "adapt.side", "adapt.miet", "adapt.parallel",
         "supernet", "supernet.attention", "supernet.layers", "supernet.lora", "supernet.model", "supernet.space",
         "supernet.build")),
    (3, ("train", "compression.pipeline", "analysis", "adapt", "distributed", "studies",
         "supernet.train", "supernet.search", "supernet.selection", "supernet.store")),
    (4, ("viz",)),
    (5, ("cli", "__init__")),
]


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer): the most specific prefix wins
    for layer, prefixes in LAYERS:
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[0]:
                    best = (len(p), layer)
    assert best is not None, f"craftlab.{module} is in no layer: add it to LAYERS and ARCHITECTURE.md"
    return best[1]


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """craftlab modules that `module` imports anywhere (module level or inside functions)."""
    is_pkg = path.name == "__init__.py"
    package = module.split(".") if is_pkg else module.split(".")[:-1]
    if module == "__init__":
        package = []
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else list(package)
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "craftlab" or node.module.startswith("craftlab.")):
                target = node.module[len("craftlab."):] if node.module != "craftlab" else ""
            else:
                continue
            names = [f"{target}.{a.name}".strip(".") for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            names = [a.name[len("craftlab."):] for a in node.names if a.name.startswith("craftlab.")]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n != module:
                found.add(n)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports(m, p, known) for m, p in mods.items()}


def test_layers_import_downwards_only():
    bad = []
    for mod, deps in graph().items():
        if mod == "__init__":
            continue
        for dep in deps:
            if layer_of(dep) > layer_of(mod):
                bad.append(f"craftlab.{mod} (layer {layer_of(mod)}) imports craftlab.{dep} (layer {layer_of(dep)})")
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    g = {m: d - {"__init__"} for m, d in graph().items() if m != "__init__"}
    # packages import nothing of their own children here, so edges from a package to its modules are circles too
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import circle: " + " -> ".join(f"craftlab.{c}" for c in cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def _package(module: str) -> str:
    return module.split(".")[0]


def test_no_circle_between_packages():
    """Packages too import without circles (modules can be acyclic while train -> distributed -> train)."""
    edges: dict[str, set[str]] = {}
    for mod, deps in graph().items():
        for dep in deps - {"__init__"}:
            if mod != "__init__" and _package(dep) != _package(mod):
                edges.setdefault(_package(mod), set()).add(_package(dep))
    state: dict[str, int] = {}

    def visit(p: str, path: list[str]) -> None:
        state[p] = 1
        for q in sorted(edges.get(p, ())):
            if state.get(q) == 1:
                cycle = path[path.index(q):] + [q] if q in path else [p, q]
                why = {f"{a} -> {b}": sorted(m for m, d in graph().items() if _package(m) == a
                                              for x in d if _package(x) == b)
                       for a, b in zip(cycle, cycle[1:])}
                pytest.fail(f"package circle {' -> '.join(cycle)}: {why}")
            if q not in state:
                visit(q, [*path, q])
        state[p] = 2

    for p in sorted(edges):
        if p not in state:
            visit(p, [p])


def test_core_never_imports_the_app():
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for n in names:
                assert n.split(".")[0] not in ("app", "craftlab_app", "gradio"), f"{path} imports {n}"


def test_modules_stay_short():
    long = {str(p.relative_to(ROOT)): n for p in [*PKG.rglob("*.py"), *(ROOT / "app").rglob("*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_import_craftlab_is_light():
    code = ("import sys, craftlab; heavy = [m for m in ('gradio', 'pandas', 'plotly', 'torch', 'timm', 'ipywidgets') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"import craftlab pulled in: {out.stdout.strip()}"


def test_public_names_resolve():
    import craftlab

    for name in craftlab.__all__:
        assert getattr(craftlab, name) is not None, name
    # names the README and the notebooks use, kept across the move
    assert callable(craftlab.sharpness.top_hessian_eigenvalues) and callable(craftlab.landscape.plane)
    assert callable(craftlab.compress) and callable(craftlab.evaluate) and callable(craftlab.sweep)


def test_every_package_is_installed():
    """pyproject lists the packages explicitly (the app folder is mapped to craftlab_app): a new sub-package
    must be listed there, or a wheel install silently lacks it."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob("__init__.py")}
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_the_public_api_has_docstring_examples():
    """Every public name of ``craftlab`` (not the module aliases) says in its docstring how it is called."""
    import inspect

    import craftlab

    missing = [name for name in craftlab.__all__ if name != "__version__"
               and not inspect.ismodule(obj := getattr(craftlab, name))
               and not any(mark in (inspect.getdoc(obj) or "") for mark in ("Example", ">>>"))]
    assert missing == [], f"add an example to the docstring of: {missing}"


# ----------------------------------------------------------------------------------------------------- the app
APP = ROOT / "app"
TABS = ("explore", "train", "supernet", "adapt", "compose", "learn")
"""The app's tab packages (each ``service`` + ``view`` + ``texts``); ``common`` is what they share."""
TAB_DIRECTIONS: set[tuple[str, str]] = set()
"""(tab, tab) imports allowed between tabs: none — the shell (``ui.py``) wires what crosses tabs."""


def app_graph() -> dict[str, set[str]]:
    """{app module: app modules it imports} (dotted under ``craftlab_app``, anywhere in the module)."""
    mods = {}
    for path in APP.rglob("*.py"):
        parts = list(path.relative_to(APP).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    out: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        if mod == "":
            package = []
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else list(package)
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{target}.{a.name}".strip(".") for a in node.names] + [target]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("craftlab_app"):
                target = node.module[len("craftlab_app"):].lstrip(".")
                targets = [f"{target}.{a.name}".strip(".") for a in node.names] + [target]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "LazyModule", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
                name = str(node.args[0].value)  # a lazily imported module of the same package
                if name.startswith("."):
                    targets = [".".join(package + [name.lstrip(".")])]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    found.add(t)
        out[mod] = found
    return out


def _app_package(module: str) -> str:
    head = module.split(".")[0]
    return head if head in (*TABS, "common") else "shell"


def test_the_app_is_one_package_per_tab():
    for tab in TABS:
        assert (APP / tab / "__init__.py").is_file() and (APP / tab / "view.py").is_file(), tab
        assert (APP / tab / "texts.py").is_file(), f"the {tab} tab's words belong in app/{tab}/texts.py"
    flat = sorted(p.name for p in APP.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "texts.py", "ui.py"], f"app/ holds packages and the shell: {flat}"


def test_services_do_not_import_gradio():
    for path in APP.rglob("service.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "gradio" for n in names), f"{path.relative_to(ROOT)} imports gradio"


def test_a_tab_never_imports_another_tab_and_common_imports_no_tab():
    bad = []
    for mod, deps in app_graph().items():
        src = _app_package(mod)
        for dep in deps:
            dst = _app_package(dep)
            if src == dst or dst == "common":
                continue
            if dst == "shell" or src == "common" or (src in TABS and (src, dst) not in TAB_DIRECTIONS):
                bad.append(f"craftlab_app.{mod} ({src}) imports craftlab_app.{dep} ({dst})")
    assert not bad, "\n".join(bad)


def test_the_app_has_no_import_circle():
    g = app_graph()
    for edges in (g, {p: {_app_package(d) for m, ds in g.items() if _app_package(m) == p for d in ds} - {p}
                      for p in {_app_package(m) for m in g}}):
        state: dict[str, int] = {}

        def visit(m: str, stack: list[str], edges: dict[str, set[str]] = edges, state: dict[str, int] = state) -> None:
            state[m] = 1
            for d in sorted(edges.get(m, ())):
                if state.get(d) == 1:
                    pytest.fail("app import circle: " + " -> ".join([*stack[stack.index(d):], d]))
                if d not in state:
                    visit(d, [*stack, d])
            state[m] = 2

        for m in sorted(edges):
            if m not in state:
                visit(m, [m])


def test_the_app_reaches_no_attribute_by_type_ignore():
    """Composition, not mixins: no part of the app reaches another's state behind the type checker's back."""
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in APP.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if "type: ignore[attr-defined]" in line]
    assert not hits, f"type: ignore[attr-defined] in the app: {hits}"
