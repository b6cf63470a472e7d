"""The package's layout is its architecture: each layer imports only from itself and the layers below.

An AST walk over every module (imports inside functions count too), in the manner of import-linter's
"layers" contract, so that no import runs back up a layer and the tree keeps showing the data flow.
"""

import ast
import pathlib

import catsdogs

PACKAGE = pathlib.Path(catsdogs.__file__).parent
# Bottom to top. errors.py sits under every layer; __init__.py (the lazy public API) and cli.py over all of them.
LAYERS = ("errors", "config", "utils", "data", "store", "models", "inference", "evaluation", "engine", "apps", "cli")
TOP_LEVEL_MODULES = {"__init__.py", "errors.py", "cli.py"}


def layer_of(module):
    """The layer of a dotted module name below catsdogs: its first component ("catsdogs.data.scan" -> "data")."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imported_modules(path):
    """(line, module) of every catsdogs module a file imports, at any depth of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("catsdogs"):
            if node.module == "catsdogs":  # from catsdogs import errors / __version__
                found += [(node.lineno, f"catsdogs.{alias.name}") for alias in node.names if alias.name != "__version__"]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("catsdogs.")]
    return found


def module_name(path):
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def test_the_package_holds_subpackages_by_layer_and_a_handful_of_top_level_modules():
    top_level = {path.name for path in PACKAGE.glob("*.py")}
    assert top_level == TOP_LEVEL_MODULES
    subpackages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert subpackages == set(LAYERS) - {"errors", "cli"}


def test_no_module_imports_from_a_layer_above_its_own():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        own = layer_of(module)
        if own is None:  # catsdogs/__init__.py: the public API names every layer, lazily
            continue
        for line, imported in imported_modules(path):
            target = layer_of(imported)
            if target is not None and LAYERS.index(target) > LAYERS.index(own):
                violations.append(f"{path.relative_to(PACKAGE)}:{line}: {own} imports {imported} ({target})")
    assert not violations, "imports that run up a layer:\n" + "\n".join(violations)


def test_the_layer_test_sees_an_upward_import(tmp_path):
    """The walk finds imports nested in functions, as the layering rule counts them."""
    module = tmp_path / "example.py"
    module.write_text("def f():\n    from catsdogs.engine.train import train\n    import catsdogs.apps.serve\n")
    assert imported_modules(module) == [(2, "catsdogs.engine.train"), (3, "catsdogs.apps.serve")]
