"""What LLM-written code may touch: an allow-list, not a deny-list.

Three lists, used by the static check in the parent and by the child alike:

* ``NUMPY_API`` / ``LINALG_API`` / ``MATH_API``: the only members of ``np`` / ``np.linalg`` /
  ``math`` the code gets. In the child these are read-only namespaces holding exactly these
  members, not the modules, so ``np.core``, ``np.linalg.linalg`` or any module that numpy re-exports
  (``sys``, ``os``, ``builtins``, ...) does not exist for the code.
* ``VALUE_ATTRS``: attribute names allowed on values (arrays, dicts, lists, strings, numbers).
  Every ``x.name`` in the code must name one of these or an API member; everything else, among it
  ``format`` / ``format_map`` (attribute lookups inside format strings), frame and code attributes
  (``gi_frame``, ``f_back``, ``f_globals``) and every name with an underscore prefix, is refused.
* ``SAFE_BUILTINS``: the builtins the code sees.
"""

from __future__ import annotations

NUMPY_API = frozenset({
    "array", "asarray", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "empty", "arange",
    "linspace", "where", "argwhere", "nonzero", "flatnonzero", "sum", "mean", "median", "std", "var", "min",
    "max", "amin", "amax", "argmin", "argmax", "abs", "absolute", "fabs", "sqrt", "square", "exp", "log", "log2",
    "log10", "power", "clip", "round", "floor", "ceil", "rint", "minimum", "maximum", "hypot", "arctan2", "sin",
    "cos", "tan", "arcsin", "arccos", "arctan", "degrees", "radians", "deg2rad", "rad2deg", "pi", "e", "inf",
    "nan", "newaxis", "isnan", "isfinite", "isinf", "any", "all", "logical_and", "logical_or", "logical_not",
    "logical_xor", "count_nonzero", "unique", "sort", "argsort", "cumsum", "cumprod", "diff", "dot", "matmul",
    "outer", "cross", "stack", "vstack", "hstack", "concatenate", "column_stack", "reshape", "transpose", "flip",
    "fliplr", "flipud", "rot90", "roll", "pad", "percentile", "quantile", "histogram", "bincount", "mgrid",
    "ogrid", "indices", "meshgrid", "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
    "uint16", "uint32", "bool_", "intersect1d", "union1d", "setdiff1d", "isin", "nanmean", "nanmedian",
    "nanmax", "nanmin", "nansum", "nanstd", "nanargmax", "nanargmin", "average", "cov", "corrcoef", "ravel",
    "expand_dims", "squeeze", "swapaxes", "moveaxis", "tile", "repeat", "prod", "sign", "mod", "floor_divide",
    "divide", "true_divide", "multiply", "add", "subtract", "searchsorted", "digitize", "interp", "polyfit",
    "einsum", "tril", "triu", "eye", "identity", "diag", "trace", "array_equal", "allclose", "isclose",
    "atleast_1d", "atleast_2d", "copy", "ndim", "shape", "size", "argpartition", "partition", "ptp",
    "trapezoid", "convolve", "gradient", "bitwise_and", "bitwise_or", "bitwise_xor", "invert",
    "unravel_index", "ravel_multi_index", "split", "array_split", "take", "linalg",
})

LINALG_API = frozenset({"norm", "det", "inv", "pinv", "eig", "eigh", "eigvals", "svd", "lstsq", "solve",
                        "matrix_rank"})

MATH_API = frozenset({
    "floor", "ceil", "sqrt", "isqrt", "hypot", "atan2", "pi", "e", "tau", "inf", "nan", "isnan", "isfinite",
    "isinf", "log", "log2", "log10", "exp", "sin", "cos", "tan", "asin", "acos", "atan", "degrees", "radians",
    "fabs", "fsum", "prod", "dist", "isclose", "copysign", "trunc", "gcd", "lcm", "comb", "perm", "pow",
})

VALUE_ATTRS = frozenset({
    # arrays and numpy scalars
    "shape", "ndim", "size", "dtype", "T", "sum", "mean", "std", "var", "min", "max", "argmin", "argmax",
    "any", "all", "astype", "copy", "reshape", "flatten", "ravel", "nonzero", "tolist", "item", "clip", "round",
    "sort", "argsort", "cumsum", "transpose", "squeeze", "prod", "real", "imag", "nbytes", "itemsize", "fill",
    "kind", "name",
    # dicts, lists, sets, strings, numbers
    "items", "keys", "values", "get", "update", "setdefault", "pop", "append", "extend", "insert", "remove",
    "index", "count", "reverse", "clear", "add", "discard", "union", "intersection", "difference",
    "issubset", "issuperset", "lower", "upper", "strip", "lstrip", "rstrip", "split", "join", "startswith",
    "endswith", "replace", "find", "isdigit", "isalpha", "title", "capitalize", "is_integer", "conjugate",
    "bit_length", "args",
})

SAFE_BUILTINS = (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "int",
    "isinstance", "iter", "len", "list", "map", "max", "min", "next", "pow", "range", "repr", "reversed",
    "round", "set", "slice", "sorted", "str", "sum", "tuple", "zip", "True", "False", "None",
    "ArithmeticError", "Exception", "IndexError", "KeyError", "TypeError", "ValueError",
    "ZeroDivisionError", "StopIteration", "AssertionError", "MemoryError", "RuntimeError",
)

MODULES = {"numpy": NUMPY_API, "math": MATH_API}

#: every attribute name the static check lets through (module members and value attributes)
ALLOWED_ATTRS = NUMPY_API | LINALG_API | MATH_API | VALUE_ATTRS
