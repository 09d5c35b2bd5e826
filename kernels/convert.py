"""Element conversion to float32 for the stored dtypes: float32, float16 (as uint16 bits) and int8."""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic


@intrinsic
def as_f32(typingctx, x):  # type: ignore[no-untyped-def]
    """float32(x) for f4, i1 and u2 (IEEE half bits: LLVM `fpext half`, vcvtph2ps with F16C)."""
    if x == types.float32:

        def same(context, builder, sig, args):  # type: ignore[no-untyped-def]
            return args[0]

        return types.float32(x), same
    if x == types.uint16:

        def half(context, builder, sig, args):  # type: ignore[no-untyped-def]
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

        return types.float32(x), half
    if x == types.int8:

        def int8(context, builder, sig, args):  # type: ignore[no-untyped-def]
            return builder.sitofp(args[0], ir.FloatType())

        return types.float32(x), int8
    return None
