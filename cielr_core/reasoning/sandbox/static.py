"""The static check, in the parent, before anything runs (defence in depth: the OS layer is the
boundary). Bounded first, then parsed, then walked without recursion:

1. size bounds on the source (characters, lines), then a token scan for bracket nesting and runs of
   unary operators, so neither the parser nor the checker can be made to recurse deeply;
2. ``ast.parse`` with every parser failure (``SyntaxError``, ``RecursionError``, ``MemoryError``)
   turned into a refusal;
3. AST node count and depth, counted iteratively;
4. the allow-lists of :mod:`.api`: node types, imports (``numpy`` / ``math`` and members of their
   allowed API), attribute names, no underscore names, no ``'__'`` in string constants.

Every failure raises :class:`SandboxRefused` naming what was refused and where; the code then never
runs, not in the parent and not in a child.
"""

from __future__ import annotations

import ast
import io
import tokenize

from cielr_core.reasoning.sandbox.api import ALLOWED_ATTRS, MODULES
from cielr_core.reasoning.sandbox.errors import SandboxRefused

MAX_CODE_CHARS = 20_000
MAX_CODE_LINES = 400
MAX_BRACKET_DEPTH = 32
MAX_UNARY_RUN = 16
MAX_AST_NODES = 6_000
MAX_AST_DEPTH = 64

FORBIDDEN_NAMES = frozenset({
    "open", "exec", "eval", "compile", "__import__", "getattr", "setattr", "delattr", "hasattr", "globals",
    "locals", "vars", "dir", "input", "breakpoint", "help", "memoryview", "type", "object", "super",
    "classmethod", "staticmethod", "property", "id", "exit", "quit", "copyright", "credits", "license",
    "print", "bytearray", "callable", "issubclass", "format", "os", "sys", "subprocess", "socket",
    "builtins", "importlib", "ctypes", "io", "pathlib", "shutil", "signal", "resource", "inspect", "operator",
    "gc", "posix", "pty", "mmap", "fcntl", "threading", "multiprocessing", "asyncio",
})

_ALLOWED_NODES: tuple[type, ...] = (
    ast.Module, ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For, ast.While, ast.If, ast.Break,
    ast.Continue, ast.Pass, ast.FunctionDef, ast.Return, ast.Lambda, ast.ListComp, ast.DictComp, ast.SetComp,
    ast.GeneratorExp, ast.comprehension, ast.Compare, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.IfExp, ast.Call,
    ast.Attribute, ast.Subscript, ast.Slice, ast.Name, ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set,
    ast.Starred, ast.keyword, ast.arguments, ast.arg, ast.Import, ast.ImportFrom, ast.alias, ast.Assert,
    ast.JoinedStr, ast.FormattedValue, ast.Load, ast.Store, ast.Del, ast.Delete, ast.Try, ast.ExceptHandler,
    ast.Raise, ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.expr_context,
)

_OPEN = {"(", "[", "{"}
_CLOSE = {")", "]", "}"}
_UNARY = {"-", "+", "~", "not"}


def _refuse(msg: str) -> SandboxRefused:
    return SandboxRefused(f"refused: {msg}")


def _check_bounds(code: str) -> None:
    if not isinstance(code, str) or not code.strip():
        raise _refuse("the code is empty")
    if len(code) > MAX_CODE_CHARS:
        raise _refuse(f"the code is longer than {MAX_CODE_CHARS} characters")
    if code.count("\n") >= MAX_CODE_LINES:
        raise _refuse(f"the code has more than {MAX_CODE_LINES} lines")
    if "\x00" in code:
        raise _refuse("the code contains a NUL character")
    depth = unary = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            s = tok.string
            if tok.type == tokenize.OP and s in _OPEN:
                depth += 1
                if depth > MAX_BRACKET_DEPTH:
                    raise _refuse(f"brackets nested deeper than {MAX_BRACKET_DEPTH} (line {tok.start[0]})")
            elif tok.type == tokenize.OP and s in _CLOSE:
                depth = max(0, depth - 1)
            if s in _UNARY:  # consecutive unary operators: `- - - - x`, `not not not x`
                unary += 1
                if unary > MAX_UNARY_RUN:
                    raise _refuse(f"more than {MAX_UNARY_RUN} unary operators in a row (line {tok.start[0]})")
            elif tok.type not in (tokenize.NL, tokenize.COMMENT):
                unary = 0
    except SandboxRefused:
        raise
    except (tokenize.TokenError, SyntaxError, ValueError) as e:
        raise _refuse(f"the code cannot be tokenised: {str(e)[:120]}") from None
    except (RecursionError, MemoryError):
        raise _refuse("the code is too complex to tokenise") from None


def _parse(code: str) -> ast.Module:
    try:
        return ast.parse(code, mode="exec")
    except SyntaxError as e:
        raise _refuse(f"syntax error at line {e.lineno}: {str(e.msg)[:120]}") from None
    except (RecursionError, MemoryError, ValueError, OverflowError):
        raise _refuse("the code is too deeply nested or too complex to parse") from None


def _check_shape(tree: ast.Module) -> None:
    """Node count and depth, iteratively (the checker itself must not recurse)."""
    stack = [(tree, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_AST_NODES:
            raise _refuse(f"the code has more than {MAX_AST_NODES} syntax nodes")
        if depth > MAX_AST_DEPTH:
            raise _refuse(f"the code is nested deeper than {MAX_AST_DEPTH} levels "
                          f"(line {getattr(node, 'lineno', '?')})")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def check_code(code: str) -> ast.Module:
    """Bound, parse and check ``code`` against the allow-lists; raises :class:`SandboxRefused`."""
    _check_bounds(code)
    tree = _parse(code)
    _check_shape(tree)
    nodes = list(ast.walk(tree))
    attrs = [n for n in nodes if isinstance(n, ast.Attribute)]
    # names and node types first, then attributes in reading order: `open(p).read()` is refused as a
    # use of `open`, `np.core.multiarray` for its `core`
    attrs.sort(key=lambda n: (n.end_lineno or 0, n.end_col_offset or 0))
    for node in [n for n in nodes if not isinstance(n, ast.Attribute)] + attrs:
        _check_node(node, getattr(node, "lineno", "?"))
    return tree


def _check_node(node: ast.AST, line) -> None:
    if not isinstance(node, _ALLOWED_NODES):
        raise _refuse(f"{type(node).__name__} is not allowed (line {line})")
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name not in MODULES:
                raise _refuse(f"import of {a.name!r} (only numpy and math) (line {line})")
    elif isinstance(node, ast.ImportFrom):
        if node.level or node.module not in MODULES:
            raise _refuse(f"import from {node.module!r} (only numpy and math) (line {line})")
        for a in node.names:
            if a.name == "*" or a.name.startswith("_") or a.name not in MODULES[node.module]:
                raise _refuse(f"import of {a.name!r} from {node.module}: not in the allowed API (line {line})")
    elif isinstance(node, ast.Name):
        if node.id.startswith("_"):
            raise _refuse(f"name {node.id!r} starts with an underscore (line {line})")
        if node.id in FORBIDDEN_NAMES:
            raise _refuse(f"use of {node.id!r} (line {line})")
    elif isinstance(node, ast.Attribute):
        if node.attr.startswith("_"):
            raise _refuse(f"attribute {node.attr!r} starts with an underscore (line {line})")
        if node.attr not in ALLOWED_ATTRS:
            raise _refuse(f"attribute {node.attr!r} is not in the allowed API (line {line})")
    elif isinstance(node, ast.FunctionDef):
        if node.decorator_list:
            raise _refuse(f"decorators (line {line})")
        if node.name.startswith("_") or node.name in FORBIDDEN_NAMES:
            raise _refuse(f"function name {node.name!r} (line {line})")
    elif isinstance(node, ast.arg):
        if node.arg.startswith("_"):
            raise _refuse(f"argument name {node.arg!r} (line {line})")
    elif isinstance(node, ast.alias):
        if node.asname and (node.asname.startswith("_") or node.asname in FORBIDDEN_NAMES):
            raise _refuse(f"import alias {node.asname!r} (line {line})")
    elif isinstance(node, ast.keyword):
        if node.arg and node.arg.startswith("_"):
            raise _refuse(f"keyword {node.arg!r} (line {line})")
    elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        if (b"__" if isinstance(node.value, bytes) else "__") in node.value:
            raise _refuse(f"a string constant containing '__' (line {line})")
    elif isinstance(node, ast.ExceptHandler) and node.name and node.name.startswith("_"):
        raise _refuse(f"exception name {node.name!r} (line {line})")
